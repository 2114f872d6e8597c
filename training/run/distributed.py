"""Where a run executes: one process or several under torchrun (gloo on CPU, nccl on CUDA),
its device (rmseg_ros.inference.device policy, without the CPU fallback), and the sampler whose
order a resumed run continues.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch.utils.data import Dataset, DistributedSampler

from rmseg_ros.inference.device import resolve_device as device_name


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device('cpu'))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """rmseg_ros.inference.device policy for training: 'auto' -> CUDA when available (one GPU
    per process under torchrun), else CPU; CUDA asked for but missing is an error, not a slow
    CPU run."""
    return torch.device(device_name(name, fallback=False, local_rank=local_rank))


@contextlib.contextmanager
def distributed(device: str = 'auto') -> Iterator[DistContext]:
    """Process-group context from torchrun's environment (single process when absent)."""
    world = int(os.environ.get('WORLD_SIZE', '1'))
    rank = int(os.environ.get('RANK', '0'))
    local_rank = int(os.environ.get('LOCAL_RANK', '0'))
    dev = resolve_device(device, local_rank)
    started = False
    if world > 1 and not dist.is_initialized():
        if dev.type == 'cuda':
            torch.cuda.set_device(dev)
        dist.init_process_group('nccl' if dev.type == 'cuda' else 'gloo')
        started = True
    try:
        yield DistContext(rank, world, local_rank, dev)
    finally:
        if started and dist.is_initialized():
            dist.destroy_process_group()


# ----------------------------------------------------------------------------- data order

class ResumableSampler(DistributedSampler):
    """DistributedSampler that can start inside an epoch (to resume after an interruption)."""

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, seed: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed,
                         drop_last=len(dataset) >= num_replicas)
        self.start = 0

    def __iter__(self) -> Iterator[int]:
        return iter(list(super().__iter__())[self.start:])

    def __len__(self) -> int:
        return max(0, self.num_samples - self.start)
