"""Labelled and unlabelled frames through the network as two batches, outputs joined again.

In one mixed batch, BatchNorm normalises the supervised frames with statistics that include
the unlabelled ones; in recordings-labelled runs, unlabelled frames in the batch with no loss on
them cost the supervised model 3 points (docs/results.md, Robult). Two forward passes give each
group its own batch statistics while the losses still see every frame's outputs.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from rmseg_ros.models.fusion import SegOutput

log = logging.getLogger(__name__)


@functools.cache
def _warn_ddp() -> None:
    log.warning('separate_unlabelled_forward is off under DistributedDataParallel: labelled and '
                'unlabelled frames share one forward pass')


def labelled_first(batch: dict[str, Any]) -> dict[str, Any]:
    """The batch reordered so its labelled frames come first (stable within each group)."""
    labelled = batch['labelled'].to(torch.bool)
    order = torch.cat([labelled.nonzero().flatten(), (~labelled).nonzero().flatten()])
    return {k: (v[order.to(v.device)] if torch.is_tensor(v) and v.dim() > 0
                and v.shape[0] == labelled.shape[0] else v)
            for k, v in batch.items()}


def _zeros_for(t: torch.Tensor, n: int) -> torch.Tensor:
    return t.new_zeros((n, *t.shape[1:]))


def _join(a: Any, b: Any, na: int, nb: int) -> Any:
    """Outputs of an na-frame and an nb-frame pass as one. Per-modality dicts hold only the
    modalities a pass computed: one missing in a group is zeros there, as in a joint pass."""
    if torch.is_tensor(a):
        return torch.cat([a, b])
    if isinstance(a, dict):
        keys = list(a) + [k for k in b if k not in a]
        return {k: _join(a[k] if k in a else _zeros_for(b[k], na),
                         b[k] if k in b else _zeros_for(a[k], nb), na, nb) for k in keys}
    if isinstance(a, list):
        return [_join(x, y, na, nb) for x, y in zip(a, b, strict=True)]
    if dataclasses.is_dataclass(a):
        return dataclasses.replace(a, **{
            f.name: _join(getattr(a, f.name), getattr(b, f.name), na, nb)
            for f in dataclasses.fields(a)})
    if a != b:
        raise ValueError(f'cannot join differing non-tensor outputs {a!r} and {b!r}')
    return a


def forward_in_groups(net: Any, inputs: dict[str, torch.Tensor], presence: torch.Tensor,
                      full_presence: torch.Tensor, n_first: int) -> SegOutput:
    """net(...) on frames [:n_first] and [n_first:] separately, joined along the batch axis
    (one pass when either group is empty, and under DistributedDataParallel)."""
    n = presence.shape[0]
    if n_first in (0, n):
        return net(inputs, presence, full_presence=full_presence)
    if isinstance(net, DistributedDataParallel):
        # DDP expects one forward per backward (each parameter's gradient is reduced once)
        _warn_ddp()
        return net(inputs, presence, full_presence=full_presence)
    parts = [net({m: t[s] for m, t in inputs.items()}, presence[s], full_presence=full_presence[s])
             for s in (slice(0, n_first), slice(n_first, n))]
    return _join(*parts, n_first, n - n_first)
