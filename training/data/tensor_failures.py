"""Sensor failures applied to a cached sample (model-size tensors), for training augmentation and
for the evaluation's failure cases.

Shards hold model-size tensors, not raw sensor data, so each failure of `training.failures` is
applied where it can be: RGB failures act on the stored uint8 image exactly as on a camera frame;
depth noise on the de-normalised metres; LiDAR jitter as range noise on the projected hits;
low-resolution events as block pooling of the voxel grid. A row is the dict of
`training.data.shards.Shard.tensors` with float32 depth/lidar/event tensors.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from rmseg_ros.frontend.preprocess import FrontendConfig
from training import failures

Row = dict[str, np.ndarray]
TensorFailure = Callable[[Row, np.random.Generator, FrontendConfig], None]


def _rgb(fn: Callable) -> TensorFailure:
    def apply(row: Row, rng: np.random.Generator, cfg: FrontendConfig) -> None:
        row['rgb'] = fn(np.ascontiguousarray(row['rgb']), rng)
    apply.__doc__ = fn.__doc__
    return apply


def depth_noise(row: Row, rng: np.random.Generator, cfg: FrontendConfig) -> None:
    """Range-proportional noise and dropped pixels on the metres channel; validity follows."""
    depth = row['depth']
    metres = np.where(depth[1] > 0, depth[0] * cfg.depth_max_m, np.nan)
    noisy = failures.depth_noise(metres, rng)
    valid = np.isfinite(noisy) & (noisy >= cfg.depth_min_m) & (noisy <= cfg.depth_max_m)
    depth[0] = np.where(valid, noisy / cfg.depth_max_m, 0.0)
    depth[1] = valid


def lidar_jitter(row: Row, rng: np.random.Generator, cfg: FrontendConfig,
                 sigma_m: float = 0.05) -> None:
    """Gaussian range noise (std sigma_m) on every projected LiDAR hit."""
    lidar = row['lidar']
    hit = lidar[2] > 0
    noise = rng.normal(0.0, sigma_m / cfg.lidar_max_range_m, int(hit.sum()))
    lidar[0][hit] = np.clip(lidar[0][hit] + noise, 0.0, 1.0)


def low_res_events(row: Row, rng: np.random.Generator, cfg: FrontendConfig,
                   factor: int = 4) -> None:
    """An event sensor with `factor` times fewer pixels per axis: block-summed, then spread back
    (event mass per block is kept)."""
    event = row['event']
    b, h, w = event.shape
    hc, wc = h // factor * factor, w // factor * factor
    blocks = event[:, :hc, :wc].reshape(b, hc // factor, factor, wc // factor, factor)
    coarse = blocks.sum(axis=(2, 4)) / (factor * factor)
    event[:, :hc, :wc] = np.repeat(np.repeat(coarse, factor, axis=1), factor, axis=2)


def event_noise(row: Row, rng: np.random.Generator, cfg: FrontendConfig,
                fraction: float = 0.01) -> None:
    """Background activity: single ON/OFF events at a random `fraction` of pixels and bins."""
    event = row['event']
    hit = rng.random(event.shape) < fraction
    sign = np.where(rng.random(event.shape) < 0.5, -1.0, 1.0) / cfg.event_scale
    event += np.where(hit, sign, 0.0).astype(event.dtype)
    np.clip(event, -1.0, 1.0, out=event)


def pixel_loss(row: Row, rng: np.random.Generator, cfg: FrontendConfig,
               modality: str = 'rgb', fraction: float = 0.5) -> None:
    """A random `fraction` of the pixels of one modality zeroed (the RMM case)."""
    if modality == 'rgb':
        row['rgb'] = failures.pixel_loss(row['rgb'], rng, fraction)
    else:
        lost = rng.random(row[modality].shape[1:]) < fraction
        row[modality][:, lost] = 0.0


TENSOR_FAILURES: dict[str, TensorFailure] = {
    'motion_blur': _rgb(failures.motion_blur),
    'over_exposure': _rgb(failures.over_exposure),
    'under_exposure': _rgb(failures.under_exposure),
    'rgb_noise': _rgb(failures.rgb_noise),
    'depth_noise': depth_noise,
    'lidar_jitter': lidar_jitter,
    'low_res_events': low_res_events,
    'event_noise': event_noise,
    'pixel_loss': pixel_loss,
}
