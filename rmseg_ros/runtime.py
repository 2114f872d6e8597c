"""Process-level tuning shared by nodes, benchmarks and training entry points.

glibc returns freed blocks above 128 KiB to the kernel (mmap threshold / trim threshold), so a
pipeline that allocates the same few-megabyte arrays every frame page-faults them in again each
time. On the VMs measured here that made the event voxel grid 2-3x slower (6.4 ms vs 2.4 ms for
50k events). Raising both thresholds keeps those blocks in the heap for reuse.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1  # glibc mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3


def tune_malloc(mmap_threshold: int = 32 << 20, trim_threshold: int = 256 << 20) -> bool:
    """Keep large freed buffers for reuse (glibc only); returns whether it took effect."""
    name = ctypes.util.find_library('c')
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        ok = libc.mallopt(M_MMAP_THRESHOLD, mmap_threshold) == 1
        ok &= libc.mallopt(M_TRIM_THRESHOLD, trim_threshold) == 1
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to tune
        return False
    if not ok:
        log.debug('mallopt refused the thresholds')
    return ok


def inference_threads(requested: int) -> int:
    """Threads for a node's model: `requested` if > 0, else all available cores but one.

    The node's executor (deserialising 30 Hz images) and its pre-processing need a core of their
    own: measured with bench/node.py on 2 cores, 1 inference thread gave 8.4 Hz output and
    170 ms p50 latency, 2 threads 5.4 Hz and 217 ms (a parallel model stalls on whichever of its
    threads shares a core with the callbacks)."""
    if requested > 0:
        return int(requested)
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, cores - 1)
