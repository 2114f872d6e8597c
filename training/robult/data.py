"""Semi-supervised data: a seeded labelled fraction of the frames, unlabelled partners for each
labelled frame, and an optional integer downscale applied on load.

Label fraction: every frame the recording labelled gets a key u = hash(seed, shard, frame) in
[0, 1); the round(fraction * n) frames with the smallest keys keep their labels, every other
frame is unlabelled: its labels are replaced by 255 (ignore) and `labelled` is False before the
sample leaves the dataset, so no loss can read them. The selection depends only on the seed and
the frames' identities (not on the order shards are listed), and a smaller fraction selects a
subset of a larger one's frames.

Label unit: 'frame' (above) spreads the labels over every recording, so each unlabelled frame has
labelled neighbours a few frames away. 'recording' labels whole recordings instead (keys
hash(seed, shard)): the round(fraction * recordings) recordings with the smallest keys keep all
their labels, the others none. That is how a robot team labels: a few bags fully, the hours of
others not at all, so the unlabelled frames show places the labelled ones never do.

Batches: item i is labelled frame i followed by `unlabelled_per_labelled` unlabelled frames drawn
by (seed, epoch, i); `collate_groups` flattens the groups into one batch. With 0 unlabelled
partners (supervised-only) the labelled frames and their order per step are exactly those of a
run with partners and the same seed: the two runs see the same labelled batches.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch.utils.data import Dataset, default_collate

from rmseg_ros.modalities import MODALITIES

IGNORE = 255
LABEL_UNITS = ('frame', 'recording')  # what a label fraction counts


def frame_keys(shard_names: Sequence[str], frames: Sequence[int], seed: int) -> np.ndarray:
    """Uniform [0, 1) key of each (shard, frame) for `seed` (stable across runs and machines)."""
    keys = np.empty(len(frames), dtype=np.float64)
    for n, (shard, i) in enumerate(zip(shard_names, frames, strict=True)):
        digest = hashlib.sha256(f'{seed}:{shard}:{int(i)}'.encode()).digest()
        keys[n] = int.from_bytes(digest[:8], 'little') / 2.0 ** 64
    return keys


def select_labelled(keys: np.ndarray, eligible: np.ndarray, fraction: float) -> np.ndarray:
    """bool mask: the round(fraction * eligible) eligible frames with the smallest keys (at least
    one when fraction > 0 and a frame is eligible)."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f'label fraction must be in [0, 1], got {fraction}')
    eligible = np.asarray(eligible, dtype=bool)
    idx = np.flatnonzero(eligible)
    k = round(fraction * len(idx))
    if fraction > 0 and len(idx):
        k = max(1, k)
    chosen = idx[np.argsort(keys[idx], kind='stable')[:k]]
    out = np.zeros(len(eligible), dtype=bool)
    out[chosen] = True
    return out


def select_labelled_recordings(shard_names: Sequence[str], eligible: np.ndarray,
                               fraction: float, seed: int) -> np.ndarray:
    """bool mask: the eligible frames of the round(fraction * recordings) recordings (those
    with an eligible frame) with the smallest keys hash(seed, shard); at least one recording
    when fraction > 0."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f'label fraction must be in [0, 1], got {fraction}')
    names = np.asarray(shard_names)
    eligible = np.asarray(eligible, dtype=bool)
    recordings = sorted(set(names[eligible].tolist()))
    keys = frame_keys(recordings, [-1] * len(recordings), seed)  # -1: the recording itself
    k = round(fraction * len(recordings))
    if fraction > 0 and recordings:
        k = max(1, k)
    chosen = {recordings[i] for i in np.argsort(keys, kind='stable')[:k]}
    return eligible & np.isin(names, list(chosen))


def downscale_sample(sample: dict[str, torch.Tensor], k: int) -> dict[str, torch.Tensor]:
    """Every image-like tensor of a sample reduced by k: RGB by area averaging, the sensor
    tensors and labels by taking every k-th pixel (nearest: validity masks, depth edges and
    class ids must not blend)."""
    if k == 1:
        return sample
    out = dict(sample)
    out['rgb'] = F.avg_pool2d(sample['rgb'][None], k)[0]
    for m in MODALITIES[1:]:
        out[m] = sample[m][:, ::k, ::k].contiguous()
    for key in ('labels', 'robot'):
        out[key] = sample[key][::k, ::k].contiguous()
    return out


class Downscaled(Dataset):
    """A dataset's samples reduced by an integer factor (validation and test sets)."""

    def __init__(self, base: Dataset, k: int) -> None:
        self.base, self.k = base, int(k)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return downscale_sample(self.base[i], self.k)


class SemiSupervisedSet(Dataset):
    """Groups of one labelled frame and `unlabelled_per_labelled` unlabelled frames of a
    ShardDataset (built with labelled_only=False), at 1/`downscale` of the cached size."""

    def __init__(self, base, fraction: float, seed: int, unlabelled_per_labelled: int = 1,
                 downscale: int = 1, unit: str = 'frame') -> None:
        if unit not in LABEL_UNITS:
            raise ValueError(f'label unit must be one of {LABEL_UNITS}, got {unit!r}')
        self.base = base
        self.seed = int(seed)
        self.partners = int(unlabelled_per_labelled)
        self.k = int(downscale)
        self.epoch = 0
        shards = [base.shards[si].path.name for si, _ in base.index]
        frames = [i for _, i in base.index]
        recorded = np.array([bool(base.shards[si].arrays['labelled'][i]) for si, i in base.index],
                            dtype=bool)
        if unit == 'recording':
            self.selected = select_labelled_recordings(shards, recorded, fraction, self.seed)
        else:
            self.selected = select_labelled(frame_keys(shards, frames, self.seed), recorded,
                                            fraction)
        self.labelled_recordings = len({shards[i] for i in np.flatnonzero(self.selected)})
        self.labelled_idx = np.flatnonzero(self.selected)
        self.unlabelled_idx = np.flatnonzero(~self.selected)
        if len(self.labelled_idx) == 0:
            raise ValueError(f'no labelled frame at label fraction {fraction} '
                             f'({int(recorded.sum())} frames carry labels)')
        if self.partners and len(self.unlabelled_idx) < self.partners:
            raise ValueError(f'{self.partners} unlabelled frames per labelled one, but only '
                             f'{len(self.unlabelled_idx)} frames are unlabelled')

    def __len__(self) -> int:
        return len(self.labelled_idx)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.base.set_epoch(epoch)

    def labelled_label_rows(self) -> Iterator[np.ndarray]:
        """The stored label image of every selected frame (the class weights of a
        semi-supervised run may only count what its labellers labelled)."""
        base = self.base
        for j in self.labelled_idx:
            si, i = base.index[int(j)]
            yield np.asarray(base.shards[si].arrays['labels'][i])

    def partner_indices(self, i: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, self.epoch, int(i), 0xB0])
        return rng.choice(self.unlabelled_idx, size=self.partners, replace=False) \
            if self.partners else np.zeros(0, dtype=np.int64)

    def item(self, j: int) -> dict[str, torch.Tensor]:
        """Frame j of the base dataset; its labels masked unless it is a selected frame."""
        sample = self.base[int(j)]
        if not self.selected[j]:
            sample['labels'] = torch.full_like(sample['labels'], IGNORE)
            sample['labelled'] = torch.tensor(False)
        return downscale_sample(sample, self.k)

    def __getitem__(self, i: int) -> list[dict[str, torch.Tensor]]:
        return [self.item(self.labelled_idx[i])] + [self.item(j)
                                                    for j in self.partner_indices(i)]


def collate_groups(groups: list[list[dict[str, torch.Tensor]]]) -> dict[str, torch.Tensor]:
    """Labelled frames first, then their unlabelled partners, as one batch."""
    labelled = [g[0] for g in groups]
    partners = [s for g in groups for s in g[1:]]
    return default_collate(labelled + partners)
