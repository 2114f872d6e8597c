"""Crash-safe file writes: one temporary-file name pattern, one cleanup.

Every file that must never be seen half-written (checkpoints, ONNX exports, run configs, metrics
rewrites, caches) is written to ``.<name>.<pid>.<hex>.rmseg-tmp`` beside its final path, flushed,
fsynced and renamed into place. A process killed mid-write (SIGKILL, power loss) can leave only
such a file behind, never a partial file under the real name; `remove_stale_temp_files` deletes
them when a run starts. The writer creates the temporary file itself (safetensors' `save_file`
would add its own `.tmpXXXXXX` that no pattern of ours names).
"""

from __future__ import annotations

import contextlib
import os
import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

__all__ = [
    'TEMP_SUFFIX',
    'atomic_path',
    'atomic_write',
    'is_temp_file',
    'remove_stale_temp_files',
    'temp_path',
]

TEMP_SUFFIX = '.rmseg-tmp'
# Leftovers of older versions: `.<name>.<pid>[.<hex>].tmp` and safetensors' `.tmpXXXXXX`.
_LEGACY = re.compile(r'^\..+\.\d+(\.[0-9a-f]+)?\.tmp$|^\.tmp[A-Za-z0-9]{6}$')

#: Test seam: called with the temporary path after the data is written and before the rename
#: (a test kills the process there to prove that a write interrupted mid-way is cleaned up).
before_replace: Callable[[Path], None] | None = None


def temp_path(path: str | os.PathLike) -> Path:
    """A fresh temporary name beside `path` (same directory: the rename stays atomic)."""
    path = Path(path)
    return path.with_name(f'.{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}{TEMP_SUFFIX}')


def is_temp_file(name: str) -> bool:
    """Whether a file name is one of our temporary files (or a legacy leftover)."""
    return (name.startswith('.') and name.endswith(TEMP_SUFFIX)) or bool(_LEGACY.match(name))


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a directory be opened
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _commit(tmp: Path, path: Path) -> None:
    if before_replace is not None:
        before_replace(tmp)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path for a writer that only takes a file name (torch.onnx.export);
    on success it is fsynced and renamed to `path`, on any failure removed."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        yield tmp
        with open(tmp, 'rb') as f:
            os.fsync(f.fileno())
        _commit(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write(path: str | os.PathLike, data: bytes | str | Callable[[BinaryIO], None]) -> Path:
    """Write `data` (bytes, text as UTF-8, or a function writing to a binary file) to `path`
    atomically; returns `path`."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # umask applies
        with os.fdopen(fd, 'wb') as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode('utf-8') if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        _commit(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def remove_stale_temp_files(*folders: str | os.PathLike) -> list[Path]:
    """Delete temporary files a killed writer left in `folders` (not recursive); returns them.
    Call it only where no other process is writing (a run directory at its start)."""
    removed = []
    for folder in map(Path, folders):
        if not folder.is_dir():
            continue
        for p in folder.iterdir():
            if is_temp_file(p.name) and p.is_file():
                p.unlink(missing_ok=True)
                removed.append(p)
    return removed
