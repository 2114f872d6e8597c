"""Where a model runs, decided one way for the nodes, RobotSeg and the trainers.

A node asked for CUDA on a machine without it warns and runs on the CPU (a robot keeps
segmenting); a training run raises instead (a run sized for a GPU must not silently take ten
times longer). A CUDA failure at run time (out of memory, a lost device) is recognised by
`is_cuda_failure`, and the nodes then move to the CPU for good. torch is imported when a
device is resolved, not with the names (the launch process reads DEVICES without torch).
"""

from __future__ import annotations

import logging

DEVICES = ('auto', 'cuda', 'cpu')
BACKENDS = ('auto', 'torch', 'onnx')

log = logging.getLogger('rmseg_ros.inference.device')


def resolve_device(name: str, *, fallback: bool = True, local_rank: int = 0) -> str:
    """'auto' -> 'cuda' when available, else 'cpu'; 'cuda' (or 'cuda:N') without CUDA -> 'cpu'
    with a warning (`fallback`) or RuntimeError. Plain 'cuda' picks the GPU of `local_rank`
    (one per process under torchrun) when there are several."""
    import torch

    name = str(name)
    available = torch.cuda.is_available()
    if name == 'auto':
        name = 'cuda' if available else 'cpu'
    if name.startswith('cuda'):
        if not available:
            if not fallback:
                raise RuntimeError(f'device {name} requested but CUDA is not available')
            log.warning("device '%s' requested but CUDA is not available; using the CPU", name)
            return 'cpu'
        if name == 'cuda' and torch.cuda.device_count() > 1:
            return f'cuda:{local_rank % torch.cuda.device_count()}'
        return name
    if name != 'cpu':
        raise ValueError(f'device must be one of {DEVICES} (or cuda:N), got {name!r}')
    return name


def resolve_backend(backend: str, device: str) -> str:
    """'auto' -> 'torch' on CUDA, 'onnx' (onnxruntime, faster on a CPU) otherwise."""
    if backend not in BACKENDS:
        raise ValueError(f'backend must be one of {BACKENDS}, got {backend!r}')
    if backend != 'auto' or device == 'cpu':
        return 'onnx' if backend == 'auto' else backend
    import torch

    # no resolve_device() here: its warning about a missing GPU is the Segmenter's to give, once
    return 'torch' if torch.cuda.is_available() else 'onnx'


def is_cuda_failure(exc: BaseException) -> bool:
    """An error of the GPU itself (out of memory, device lost, driver), after which the CPU is
    the way to keep going; other errors are the model's or the input's."""
    import torch

    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    accel = getattr(torch, 'AcceleratorError', None)
    if accel is not None and isinstance(exc, accel):
        return True
    return isinstance(exc, (RuntimeError, AssertionError)) and 'cuda' in str(exc).lower()
