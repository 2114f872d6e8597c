"""PyTorch Dataset over cached shards, with geometric, sensor-failure and modality-dropout
augmentations applied consistently to every modality and the labels."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from rmseg_ros.frontend.preprocess import FrontendConfig, normalize_rgb
from rmseg_ros.modalities import MODALITIES

from .shards import TENSOR_MODALITIES, Shard
from .tensor_failures import TENSOR_FAILURES


@dataclass
class AugmentConfig:
    flip: bool = True  # horizontal flip with probability 0.5
    scale_range: tuple[float, float] = (1.0, 1.0)  # zoom-in factor range of the random crop
    modality_dropout: float = 0.0  # probability of keeping a random non-empty subset
    # failure name (a key of training.data.tensor_failures.TENSOR_FAILURES) -> probability
    failures: dict[str, float] = field(default_factory=dict)


def _resize(image: np.ndarray, hw: tuple[int, int], nearest: bool) -> np.ndarray:
    """Resize an (h, w) or (h, w, 3) image to hw."""
    interp = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
    return cv2.resize(image, (hw[1], hw[0]), interpolation=interp)


def _resize_chw(tensor: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Nearest resize of a (C, h, w) tensor (no blending of depth/validity across edges)."""
    hwc = np.ascontiguousarray(tensor.transpose(1, 2, 0))
    out = cv2.resize(hwc, (hw[1], hw[0]), interpolation=cv2.INTER_NEAREST)
    return np.ascontiguousarray(out.reshape(hw[0], hw[1], -1).transpose(2, 0, 1))


def random_modality_subset(presence: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Keep a uniformly drawn number (1..n) of the present modalities, chosen at random."""
    present = np.flatnonzero(presence)
    if len(present) <= 1:
        return presence.copy()
    k = int(rng.integers(1, len(present) + 1))
    keep = rng.choice(present, size=k, replace=False)
    out = np.zeros_like(presence)
    out[keep] = True
    return out


class ShardDataset(Dataset):
    """Samples of one or more shards as dicts of tensors.

    Keys: rgb (3,H,W) normalised, depth (2,H,W), lidar (3,H,W), event (B,H,W) float32; presence
    bool[4]; labels int64 (H,W) with 255 = ignore; robot int64 (H,W); labelled bool; index.
    """

    def __init__(self, shard_dirs: Sequence[str | Path], frontend: FrontendConfig,
                 augment: AugmentConfig | None = None, seed: int = 0,
                 labelled_only: bool = False, in_memory: bool = False) -> None:
        self.shards = [Shard.open(p, in_memory) for p in shard_dirs]
        self.frontend = frontend
        self.augment = augment
        self.seed = seed
        self.index = [(si, i) for si, s in enumerate(self.shards) for i in range(len(s))
                      if not labelled_only or bool(s.arrays['labelled'][i])]
        unknown = set(augment.failures if augment else ()) - set(TENSOR_FAILURES)
        if unknown:
            raise ValueError(f'unknown failures {sorted(unknown)}; '
                             f'known: {sorted(TENSOR_FAILURES)}')
        for s in self.shards:
            if (s.meta['height'], s.meta['width']) != frontend.hw:
                raise ValueError(f'{s.path}: shard is {s.meta["width"]}x{s.meta["height"]}, '
                                 f'the model input is {frontend.width}x{frontend.height}')
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.index)

    def label_rows(self) -> Iterator[np.ndarray]:
        """The label image of every sample, as stored (no augmentation), one shard at a time."""
        rows: dict[int, list[int]] = {}
        for si, i in self.index:
            rows.setdefault(si, []).append(i)
        for si, idx in rows.items():
            yield np.asarray(self.shards[si].arrays['labels'])[idx]

    def set_epoch(self, epoch: int) -> None:
        """Different, still reproducible, augmentations each epoch."""
        self.epoch = epoch

    def _augment(self, row: dict[str, np.ndarray], rng: np.random.Generator) -> None:
        a = self.augment
        h, w = self.frontend.hw
        if a.flip and rng.random() < 0.5:
            row['rgb'] = row['rgb'][:, ::-1]
            for m in TENSOR_MODALITIES:
                row[m] = row[m][:, :, ::-1]
            row['labels'] = row['labels'][:, ::-1]
            row['robot'] = row['robot'][:, ::-1]
        lo, hi = a.scale_range
        if hi > 1.0:
            s = float(rng.uniform(max(lo, 1.0), hi))
            ch, cw = max(1, round(h / s)), max(1, round(w / s))
            y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
            crop = (slice(y0, y0 + ch), slice(x0, x0 + cw))
            row['rgb'] = _resize(np.ascontiguousarray(row['rgb'][crop]), (h, w), nearest=False)
            for m in TENSOR_MODALITIES:
                row[m] = _resize_chw(np.ascontiguousarray(row[m][(slice(None), *crop)]), (h, w))
            for k in ('labels', 'robot'):
                row[k] = _resize(np.ascontiguousarray(row[k][crop]), (h, w), nearest=True)
        for name, prob in a.failures.items():
            if rng.random() < prob:
                TENSOR_FAILURES[name](row, rng, self.frontend)
        if a.modality_dropout > 0 and rng.random() < a.modality_dropout:
            row['presence'] = random_modality_subset(row['presence'], rng)

    def __getitem__(self, idx: int) -> dict[str, torch.Tensor]:
        si, i = self.index[idx]
        row = self.shards[si].tensors(i)
        for m in TENSOR_MODALITIES:  # float16 on disk -> float32 copies (torch converts ~5x faster)
            row[m] = torch.from_numpy(np.array(row[m])).float().numpy()
        if self.augment is not None:
            rng = np.random.default_rng((self.seed, self.epoch, idx))
            self._augment(row, rng)
        presence = row['presence'].astype(bool)
        out = {'rgb': torch.from_numpy(normalize_rgb(np.ascontiguousarray(row['rgb']),
                                                     self.frontend))}
        for m in TENSOR_MODALITIES:
            out[m] = torch.from_numpy(np.ascontiguousarray(row[m]))
        for m, on in zip(MODALITIES, presence, strict=True):
            if not on:
                out[m].zero_()
        out['presence'] = torch.from_numpy(presence)
        out['labels'] = torch.from_numpy(np.ascontiguousarray(row['labels'], dtype=np.int64))
        out['robot'] = torch.from_numpy(np.ascontiguousarray(row['robot'], dtype=np.int64))
        out['labelled'] = torch.tensor(bool(row['labelled']))
        out['index'] = torch.tensor(idx)
        return out
