"""Cached shards: one directory per bag of memory-mappable .npy arrays + meta.json.

Why this format: training reads random samples many times per epoch, so arrays are stored
uncompressed for `np.load(mmap_mode='r')` (no decode cost, the OS page cache does the rest), but
compactly: RGB as uint8 at model size (normalised at load time by the node's own function),
depth / LiDAR / event tensors as float16 (half of float32; their values are in [-1, 1] or [0, 1]),
labels as uint8. A missing modality is stored as zeros with `presence` False.
Writes are atomic: the shard is built in a temporary directory and renamed into place.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rmseg_ros.frontend.preprocess import FrontendConfig
from rmseg_ros.modalities import MODALITIES, input_channels

from .bag_samples import Sample

FORMAT_VERSION = 1
TENSOR_MODALITIES = ('depth', 'lidar', 'event')


def write_shard(samples: Iterable[Sample], out_dir: str | Path, frontend: FrontendConfig,
                meta: dict | None = None) -> int:
    """Write samples to `out_dir` atomically; returns the number written (0 writes nothing)."""
    out_dir = Path(out_dir)
    h, w = frontend.hw
    channels = input_channels(frontend.event_bins)
    columns: dict[str, list] = {k: [] for k in (
        'rgb', *TENSOR_MODALITIES, 'labels', 'robot', 'presence', 'labelled', 'stamps')}
    for s in samples:
        mi = s.model_input
        rgb = mi.overlay_rgb if 'rgb' in mi.tensors else None
        columns['rgb'].append(rgb if rgb is not None else np.zeros((h, w, 3), np.uint8))
        for m in TENSOR_MODALITIES:
            t = mi.tensors.get(m)
            columns[m].append(t.astype(np.float16) if t is not None
                              else np.zeros((channels[m], h, w), np.float16))
        columns['labels'].append(s.labels)
        columns['robot'].append(s.robot)
        columns['presence'].append(mi.presence)
        columns['labelled'].append(s.labelled)
        columns['stamps'].append(mi.stamp_ns)
    n = len(columns['stamps'])
    if n == 0:
        return 0
    tmp = out_dir.with_name(out_dir.name + '.tmp')
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name, values in columns.items():
        np.save(tmp / f'{name}.npy', np.stack(values) if name != 'stamps'
                else np.asarray(values, dtype=np.int64))
    info = {'format': FORMAT_VERSION, 'count': n, 'height': h, 'width': w,
            'event_bins': frontend.event_bins, **(meta or {})}
    (tmp / 'meta.json').write_text(json.dumps(info, indent=1))
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return n


@dataclass
class Shard:
    """Read-only, memory-mapped view of one shard."""

    path: Path
    meta: dict
    arrays: dict[str, np.ndarray]

    @classmethod
    def open(cls, path: str | Path, in_memory: bool = False) -> Shard:
        """Memory-mapped, or read into memory once (`in_memory`: no page faults or disk reads
        in the training loop, at the cost of the shard's size in RAM per process)."""
        path = Path(path)
        meta_file = path / 'meta.json'
        if not meta_file.exists():
            raise FileNotFoundError(f'{path}: not a shard (no meta.json)')
        meta = json.loads(meta_file.read_text())
        if meta.get('format') != FORMAT_VERSION:
            raise ValueError(f'{path}: shard format {meta.get("format")}, expected '
                             f'{FORMAT_VERSION}; rebuild it with `rmseg-train dataset`')
        arrays = {p.stem: np.load(p, mmap_mode=None if in_memory else 'r')
                  for p in path.glob('*.npy')}
        if in_memory:
            for a in arrays.values():
                a.setflags(write=False)
        for name, arr in arrays.items():
            if len(arr) != meta['count']:
                raise ValueError(f'{path}: {name}.npy has {len(arr)} rows, meta says '
                                 f'{meta["count"]} (truncated shard?)')
        return cls(path, meta, arrays)

    def __len__(self) -> int:
        return int(self.meta['count'])

    @staticmethod
    def disk_bytes(path: str | Path) -> int:
        return sum(p.stat().st_size for p in Path(path).glob('*.npy'))

    def tensors(self, i: int) -> dict[str, np.ndarray]:
        """Row i as read-only views of the memory maps (copy before modifying)."""
        return {k: v[i] for k, v in self.arrays.items()}


def presence_counts(shards: Iterable[Shard]) -> dict[str, int]:
    """How many samples have each modality (for logs and dataset summaries)."""
    counts = dict.fromkeys(MODALITIES, 0)
    for shard in shards:
        present = np.asarray(shard.arrays['presence']).sum(axis=0)
        for m, c in zip(MODALITIES, present, strict=True):
            counts[m] += int(c)
    return counts
