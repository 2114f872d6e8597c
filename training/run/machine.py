"""How a training process uses the CPU: threads, memory format and reduced precision.

Why a policy and not torch's defaults: on a small machine every process (and every data-loader
worker) defaults to one thread per core, so two trainings side by side, or a training beside a
node, oversubscribe the cores and each op waits for a descheduled thread. docs/results.md
(section "Training engine") has the measured step times behind each default:
- intra-op threads: a fixed count when asked for; otherwise (`threads: 0`) chosen while the run
  goes by `ThreadTuner`, which times a few steps at one thread and at all of this rank's cores
  and keeps the faster, again every few hundred steps: on an idle 2-core host two threads are
  faster, and one thread is faster as soon as another process keeps a core busy, so no single
  count is right for both;
- inter-op threads: 1 (the models are sequential; a second pool only adds wake-ups);
- loader workers: 0 by default, their threads pinned to 1 when used; OpenCV's pool pinned too;
- channels_last: the 1x1 and depthwise convolutions of the models are faster in NHWC on CPU;
- bf16 autocast ('auto'): on where the CPU has native bf16 (AVX512-BF16 / AMX) and off on CUDA,
  where the caller asks for it explicitly; the losses run in float32 on the autocast outputs.
"""

from __future__ import annotations

import logging
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
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
    """`requested` if > 0, else all usable cores split over the ranks (at least 1): the most
    the thread tuner tries."""
    if requested > 0:
        return int(requested)
    cores = usable_cores() if cores is None else cores
    return max(1, cores // max(1, world_size))


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
    intra_op: int  # threads at the start (the tuner's largest candidate when `tuned`)
    inter_op: int
    loader_workers: int
    tuned: bool = False  # intra-op threads chosen by `ThreadTuner` while the run goes


_applied: ThreadPolicy | None = None


def apply_thread_policy(threads: int, interop_threads: int, num_workers: int,
                        world_size: int = 1) -> ThreadPolicy:
    """Set this process's torch and OpenCV thread counts; returns what was applied.

    torch allows the inter-op pool to be sized only before its first use; a later call keeps
    the existing pool (logged at debug level)."""
    global _applied
    intra = intra_op_threads(threads, world_size)
    policy = ThreadPolicy(intra, max(1, int(interop_threads)),
                          loader_workers(num_workers, intra, world_size),
                          tuned=threads <= 0 and intra > 1)
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


@dataclass
class ThreadTuner:
    """Picks the intra-op thread count of a training loop by timing its own steps.

    Every `every` steps (and first at step `start`) it runs `probe_steps` steps at each
    candidate count, keeps the one with the lowest median step time and logs the choice. A
    probe costs a few steps at the slower count; a wrong fixed count costs up to 3x for the
    whole run (docs/results.md, "Training engine"). Thread counts change float summation order,
    so a tuned run is not bit-reproducible against another run; resume of one run still is to
    the extent the same counts are chosen (fix `run.threads` for bit-exact reruns).
    `clock` and `set_threads` are injectable for tests."""

    candidates: Sequence[int]
    every: int = 250
    start: int = 5
    probe_steps: int = 3
    clock: Callable[[], float] = time.perf_counter
    set_threads: Callable[[int], None] = torch.set_num_threads
    chosen: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)  # one entry per probe round
    _queue: list[int] = field(default_factory=list)
    _times: dict[int, list[float]] = field(default_factory=dict)
    _current: int = 0
    _t0: float | None = None

    def __post_init__(self) -> None:
        self.candidates = sorted({max(1, int(c)) for c in self.candidates})
        if not self.candidates or self.every < 1 or self.probe_steps < 1:
            raise ValueError('ThreadTuner needs candidates, every >= 1 and probe_steps >= 1')
        self.chosen = self.candidates[-1]

    def before_step(self, step: int) -> None:
        """Call before optimiser step `step` (1-based)."""
        if not self._queue and len(self.candidates) > 1 and step >= self.start \
                and (step - self.start) % self.every == 0:
            self._queue = [c for c in self.candidates for _ in range(self.probe_steps)]
            self._times = {c: [] for c in self.candidates}
        self._current = self._queue[0] if self._queue else self.chosen
        self.set_threads(self._current)
        self._t0 = self.clock()

    def after_step(self, step: int) -> None:
        """Call after step `step` finished (the loss is computed and applied)."""
        if self._t0 is None or not self._queue:
            return
        self._times[self._current].append(self.clock() - self._t0)
        self._queue.pop(0)
        if not self._queue:
            medians = {c: statistics.median(t) for c, t in self._times.items()}
            self.chosen = min(medians, key=lambda c: (medians[c], c))
            self.history.append({'step': step, 'threads': self.chosen,
                                 'median_step_s': {str(c): round(m, 4)
                                                   for c, m in medians.items()}})
            self.set_threads(self.chosen)
            log.info('thread tuner at step %d: %d intra-op thread(s) (median step %s)', step,
                     self.chosen, ', '.join(f'{c}: {m * 1e3:.0f} ms'
                                             for c, m in sorted(medians.items())))


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
