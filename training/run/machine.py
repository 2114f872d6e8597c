"""How a training process uses the CPU: threads, memory format and reduced precision.

Why a policy and not torch's defaults: on a small machine every process (and every data-loader
worker) defaults to one thread per core, so two trainings side by side, or a training beside a
node, oversubscribe the cores and each op waits for a descheduled thread. docs/results.md
(section "Training engine") has the measured step times behind each default:
- intra-op threads: all usable cores but one, split over the ranks, at least one. On 2 cores
  that is one thread, the setting that kept its speed while another process ran;
- inter-op threads: 1 (the models are sequential; a second pool only adds wake-ups);
- loader workers: 0 by default, their threads pinned to 1 when used; OpenCV's pool pinned too;
- channels_last: the 1x1 and depthwise convolutions of the models are faster in NHWC on CPU;
- bf16 autocast ('auto'): on where the CPU has native bf16 (AVX512-BF16 / AMX) and off on CUDA,
  where the caller asks for it explicitly; the losses run in float32 on the autocast outputs.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import torch

log = logging.getLogger('rmseg-train')

AMP_MODES = ('auto', 'bf16', 'off')


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def intra_op_threads(requested: int, world_size: int = 1, cores: int | None = None) -> int:
    """`requested` if > 0, else all usable cores but one split over the ranks (at least 1)."""
    if requested > 0:
        return int(requested)
    cores = usable_cores() if cores is None else cores
    return max(1, (cores - 1) // max(1, world_size))


def loader_workers(requested: int, intra_op: int, world_size: int = 1,
                   cores: int | None = None) -> int:
    """`requested` if >= 0, else one worker per rank when the cores left beside the torch
    threads allow it, otherwise 0 (loading in the training process)."""
    if requested >= 0:
        return int(requested)
    cores = usable_cores() if cores is None else cores
    return 1 if cores - intra_op * world_size >= world_size else 0


@dataclass(frozen=True)
class ThreadPolicy:
    intra_op: int
    inter_op: int
    loader_workers: int


_applied: ThreadPolicy | None = None


def apply_thread_policy(threads: int, interop_threads: int, num_workers: int,
                        world_size: int = 1) -> ThreadPolicy:
    """Set this process's torch and OpenCV thread counts; returns what was applied.

    torch allows the inter-op pool to be sized only before its first use; a later call keeps
    the existing pool (logged at debug level)."""
    global _applied
    intra = intra_op_threads(threads, world_size)
    policy = ThreadPolicy(intra, max(1, int(interop_threads)),
                          loader_workers(num_workers, intra, world_size))
    torch.set_num_threads(policy.intra_op)
    if torch.get_num_interop_threads() != policy.inter_op:
        try:
            torch.set_num_interop_threads(policy.inter_op)
        except RuntimeError as exc:  # the pool already ran: keep it
            log.debug('inter-op threads stay at %d: %s', torch.get_num_interop_threads(), exc)
    try:
        import cv2

        cv2.setNumThreads(1)
    except ImportError:  # OpenCV is optional for some trainers' data
        pass
    _applied = policy
    return policy


def applied_thread_policy() -> ThreadPolicy | None:
    """The policy this process applied last (None before any trainer started)."""
    return _applied


def loader_worker_init(_worker_id: int) -> None:
    """DataLoader worker_init_fn: one thread per worker (torch and OpenCV)."""
    torch.set_num_threads(1)
    try:
        import cv2

        cv2.setNumThreads(1)
    except ImportError:
        pass


def cpu_has_bf16() -> bool:
    """Native bf16 arithmetic on this CPU (AVX512-BF16 or AMX), as oneDNN reports it."""
    try:
        return bool(torch.backends.mkldnn.is_available()
                    and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def autocast_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `mode` on `device`, None for full precision."""
    if mode not in AMP_MODES:
        raise ValueError(f'amp must be one of {AMP_MODES}, got {mode!r}')
    if mode == 'off':
        return None
    if mode == 'bf16':
        return torch.bfloat16
    return torch.bfloat16 if device.type == 'cpu' and cpu_has_bf16() else None


def to_channels_last(batch: Any) -> Any:
    """4-D float tensors of a batch (nested dicts/lists) in channels-last memory format."""
    if isinstance(batch, torch.Tensor):
        if batch.dim() == 4 and batch.is_floating_point():
            return batch.contiguous(memory_format=torch.channels_last)
        return batch
    if isinstance(batch, dict):
        return {k: to_channels_last(v) for k, v in batch.items()}
    if isinstance(batch, list | tuple):
        return type(batch)(to_channels_last(v) for v in batch)
    return batch
