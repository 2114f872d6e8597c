"""The RSS policy, its advantages and its loss (ROS-free, torch only).

Policy: the per-pixel softmax of the segmentation head is a categorical policy; an action map is
one class per pixel sampled with torch.distributions.Categorical. Loss (GRPO style, no value
model): -advantage * log-prob, averaged over the elements that carry an advantage.

Advantages:
- group normalisation: (r - mean) / (std + eps) over a group of rewards. Pixel level, the group is
  every (sample, action, valid pixel) reward of the batch, which is why the statistics must be
  reduced over all processes (SyncAN); image level, the group is the G maps of one image (GRPO's
  group of answers to one prompt) or, optionally, the whole batch.
- SyncAN: the sums behind the mean, the standard deviation and the loss normaliser are
  all-reduced over the process group, so N processes compute exactly what one process computes
  on the concatenated batch (DDP then averages gradients over processes, hence the loss is scaled
  by the world size). Without SyncAN every process normalises over its own part of the batch;
  `chunks` > 1 reproduces that on one process (contiguous parts of the batch, each normalised
  and averaged on its own), which is how the ablation measures "SyncAN off" on one process.
- PSD: for a pair (i, j) of maps of one image, the advantage of map i over map j is r_i - r_j on
  the pixels where the two maps differ and 0 where they agree; map i's advantage is the mean over
  its G - 1 partners, so pixels on which all maps agree (and which cannot explain a reward
  difference) get no credit.
- PSR: action maps sampled from logits downsampled to several scales; a small map has a small
  action space, so its reward varies enough between samples to carry a signal.

Stdev convention: population standard deviation (divide by the count), computed in float64 from
all-reduced sums (two passes: mean first, then squared deviations), so reduction order does not
change the result beyond float64 rounding.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F  # noqa: N812
from torch.distributions import Categorical

# ----------------------------------------------------------------------------- the policy

def sample_seed(seed: int, step: int, index: int, scale: float = 1.0) -> int:
    """Seed of one sample's actions: a function of the sample, not of the batch or the process,
    so a 2-process run draws exactly the actions a 1-process run draws for the same sample."""
    key = f'{seed}:{step}:{index}:{scale:.6f}'.encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], 'little') & ((1 << 63) - 1)


def sample_actions(logits: torch.Tensor, n: int, seeds: Sequence[int]) -> torch.Tensor:
    """(B, K, h, w) logits -> (B, n, h, w) int64 actions; sample b uses its own seed."""
    out = []
    devices = [logits.device.index or 0] if logits.is_cuda else []
    for b, seed in enumerate(seeds):
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(int(seed))
            policy = Categorical(logits=logits[b].detach().permute(1, 2, 0), validate_args=False)
            out.append(policy.sample((n,)))
    return torch.stack(out)


def log_probs(logits: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """log pi(action) for (B, K, h, w) logits and (B, n, h, w) actions -> (B, n, h, w).

    Categorical(logits).log_prob(a) is log_softmax(logits)[a]; gathering from one log-softmax
    avoids expanding the logits n times (Categorical.log_prob broadcasts them to every sample)."""
    return F.log_softmax(logits, dim=1).gather(1, actions)


# ----------------------------------------------------------------------------- normalisation

def _sync_active(sync: bool) -> bool:
    return sync and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _all_reduce(t: torch.Tensor, sync: bool) -> torch.Tensor:
    if _sync_active(sync):
        dist.all_reduce(t)
    return t


def batch_chunks(batch: int, chunks: int) -> list[slice]:
    """Contiguous parts of a batch, as `chunks` processes without SyncAN would hold it."""
    chunks = max(1, min(int(chunks), batch))
    bounds = torch.linspace(0, batch, chunks + 1).round().long().tolist()
    return [slice(a, b) for a, b in itertools.pairwise(bounds)]


def _normalize(x: torch.Tensor, mask: torch.Tensor, sync: bool, eps: float
               ) -> tuple[torch.Tensor, dict[str, float]]:
    m = mask.to(torch.float64)
    xd = x.detach().to(torch.float64)
    sums = _all_reduce(torch.stack([(xd * m).sum(), m.sum()]), sync)
    n = sums[1].clamp_min(1.0)
    mean = sums[0] / n
    sq = _all_reduce(((xd - mean) ** 2 * m).sum().reshape(1), sync)[0]
    std = (sq / n).sqrt()
    adv = ((xd - mean) / (std + eps) * m).to(x.dtype)
    return adv, {'mean': float(mean), 'std': float(std), 'count': float(sums[1])}


def normalize_advantages(rewards: torch.Tensor, mask: torch.Tensor | None = None, *,
                         sync: bool = True, chunks: int = 1, eps: float = 1e-6
                         ) -> tuple[torch.Tensor, dict[str, float]]:
    """Advantages of a batch-wide group of rewards (batch first); masked entries get 0.

    sync: SyncAN (statistics over every process). chunks > 1: SyncAN off as `chunks` processes
    would do it, each part of the batch normalised by its own statistics (no all-reduce).
    """
    mask = torch.ones_like(rewards, dtype=torch.bool) if mask is None else mask.expand_as(rewards)
    if chunks <= 1:
        return _normalize(rewards, mask, sync, eps)
    parts, stats = [], []
    for sl in batch_chunks(rewards.shape[0], chunks):
        adv, st = _normalize(rewards[sl], mask[sl], False, eps)
        parts.append(adv)
        stats.append(st)
    return torch.cat(parts), {k: sum(s[k] for s in stats) / len(stats) for k in stats[0]}


def normalize_groups(rewards: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """(B, G) rewards -> advantages normalised within each row (the G maps of one image)."""
    r = rewards.detach().to(torch.float64)
    mean = r.mean(1, keepdim=True)
    std = r.std(1, unbiased=False, keepdim=True)
    return ((r - mean) / (std + eps)).to(rewards.dtype)


# ----------------------------------------------------------------------------- PSD

def psd_advantages(actions: torch.Tensor, rewards: torch.Tensor) -> torch.Tensor:
    """(B, G, h, w) action maps and (B, G) rewards -> (B, G, h, w) pair-wise spatial advantages:
    mean over partners j != i of (r_i - r_j) * [a_i != a_j] (0 with one map per image)."""
    g = actions.shape[1]
    adv = torch.zeros(actions.shape, dtype=rewards.dtype, device=actions.device)
    if g < 2:
        return adv
    r = rewards.detach()
    for j in range(g):
        diff = (r - r[:, j:j + 1])[:, :, None, None]  # (B, G, 1, 1): r_i - r_j
        adv += diff * (actions != actions[:, j:j + 1]).to(r.dtype)
    return adv / (g - 1)


# ----------------------------------------------------------------------------- PSR

def scaled_size(hw: tuple[int, int], scale: float) -> tuple[int, int]:
    return max(1, round(hw[0] * scale)), max(1, round(hw[1] * scale))


def downsample_logits(logits: torch.Tensor, scale: float) -> torch.Tensor:
    """Logits averaged over 1/scale x 1/scale cells (area interpolation); scale 1 returns them;
    scale > 1 upsamples them bilinearly (as the model upsamples its own stride-4 logits), for
    maps sampled at the camera's resolution when training runs smaller."""
    if scale == 1.0:
        return logits
    size = scaled_size(tuple(logits.shape[-2:]), scale)
    if scale > 1.0:
        return F.interpolate(logits, size=size, mode='bilinear', align_corners=False)
    return F.interpolate(logits, size=size, mode='area')


def resize_labels(labels: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """(B, H, W) class ids -> (B, h, w), nearest neighbour (ignore ids stay ignore ids)."""
    if tuple(labels.shape[-2:]) == tuple(hw):
        return labels
    return F.interpolate(labels[:, None].float(), size=hw, mode='nearest')[:, 0].long()


def active_scales(scales: Sequence[float], schedule: Sequence[dict], progress: float
                  ) -> list[float]:
    """Scales in use at `progress` (fraction of training done): the last schedule entry whose
    `start` is <= progress, else `scales`."""
    current = list(scales)
    for entry in sorted(schedule, key=lambda e: float(e['start'])):
        if float(entry['start']) <= progress:
            current = [float(s) for s in entry['scales']]
    return current


# ----------------------------------------------------------------------------- the loss

def policy_loss(logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor | None = None,
                *, sync: bool = True, chunks: int = 1) -> torch.Tensor:
    """-mean(advantage * log-prob) over the masked elements.

    sync: the mean is over the elements of every process (the count is all-reduced and the loss
    multiplied by the world size, since DDP averages gradients), i.e. the one-process loss on
    the concatenated batch. chunks > 1: the mean of per-part means (what unsynchronised
    processes would average)."""
    mask = torch.ones_like(logp, dtype=torch.bool) if mask is None else mask.expand_as(logp)
    weighted = advantages.detach() * logp * mask

    def part_loss(sl: slice, synced: bool) -> torch.Tensor:
        count = _all_reduce(mask[sl].sum().to(torch.float64).reshape(1), synced)[0]
        world = dist.get_world_size() if _sync_active(synced) else 1
        return -weighted[sl].sum() * (world / count.clamp_min(1.0)).to(logp.dtype)

    if chunks <= 1:
        return part_loss(slice(None), sync)
    parts = batch_chunks(logp.shape[0], chunks)
    return torch.stack([part_loss(sl, False) for sl in parts]).mean()
