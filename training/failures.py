"""Sensor failures as pure numpy functions, shared by the simulator (recording option), the
training augmentations and the evaluation's failure cases.

Each function takes the data of one modality and a seeded `numpy.random.Generator`, and returns
new data of that modality only (inputs are never modified in place). Parameters given as a
(low, high) pair are drawn uniformly per call. Conventions:
- rgb: (H, W, 3) uint8;   depth: (H, W) float metres, NaN invalid;
- LiDAR points: (..., 3) float (organised or not), NaN rows are "no return" and stay NaN;
- events: arrays x, y (pixel), t (any dtype, passed through), p (+1 ON / -1 OFF, or 1/0);
- dropped topics: a keep-mask over message stamps (gaps of seconds).
`FAILURES` names each failure's modality, so callers can check a failure touches only that one.
"""

from __future__ import annotations

import numpy as np

Range = float | tuple[float, float]


def _draw(rng: np.random.Generator, value: Range) -> float:
    if isinstance(value, tuple | list):
        return float(rng.uniform(value[0], value[1]))
    return float(value)


def motion_blur(rgb: np.ndarray, rng: np.random.Generator, length_px: Range = (5, 15),
                angle_deg: Range = (0.0, 180.0)) -> np.ndarray:
    """Linear motion blur: the mean of the image shifted along a line of `length_px` pixels."""
    n = max(1, round(_draw(rng, length_px)))
    ang = np.deg2rad(_draw(rng, angle_deg))
    img = np.asarray(rgb, dtype=np.float32)
    if n == 1:
        return np.asarray(rgb).copy()
    h, w = img.shape[:2]
    pad = n
    padded = np.pad(img, ((pad, pad), (pad, pad), (0, 0)), mode='edge')
    acc = np.zeros_like(img)
    for s in np.linspace(-(n - 1) / 2, (n - 1) / 2, n):
        dx, dy = round(s * np.cos(ang)), round(s * np.sin(ang))
        acc += padded[pad + dy:pad + dy + h, pad + dx:pad + dx + w]
    return np.clip(acc / n + 0.5, 0, 255).astype(np.uint8)


def over_exposure(rgb: np.ndarray, rng: np.random.Generator,
                  gain: Range = (2.0, 4.0)) -> np.ndarray:
    """Too much light: linear gain then clipping (highlights saturate to 255)."""
    g = _draw(rng, gain)
    return np.clip(np.asarray(rgb, dtype=np.float32) * g + 0.5, 0, 255).astype(np.uint8)


def under_exposure(rgb: np.ndarray, rng: np.random.Generator, gain: Range = (0.05, 0.25),
                   read_noise: float = 1.0) -> np.ndarray:
    """Too little light: linear gain plus sensor read noise (std in 8-bit levels), quantised."""
    g = _draw(rng, gain)
    img = np.asarray(rgb, dtype=np.float32) * g
    if read_noise > 0:
        img = img + rng.normal(0.0, read_noise, img.shape).astype(np.float32)
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


def rgb_noise(rgb: np.ndarray, rng: np.random.Generator, sigma: Range = (5.0, 20.0),
              salt_pepper: float = 0.01) -> np.ndarray:
    """Gaussian noise (std in 8-bit levels) plus salt-and-pepper on a fraction of pixels."""
    img = np.asarray(rgb, dtype=np.float32)
    img = img + rng.normal(0.0, _draw(rng, sigma), img.shape).astype(np.float32)
    out = np.clip(img + 0.5, 0, 255).astype(np.uint8)
    if salt_pepper > 0:
        hit = rng.random(out.shape[:2]) < salt_pepper
        out[hit] = np.where(rng.random(int(hit.sum())) < 0.5, 0, 255).astype(np.uint8)[:, None]
    return out


def depth_noise(depth: np.ndarray, rng: np.random.Generator, sigma_rel: Range = 0.02,
                dropout: float = 0.05) -> np.ndarray:
    """Range-proportional Gaussian noise (std = sigma_rel * depth) and random invalid pixels."""
    d = np.asarray(depth, dtype=np.float32)
    out = d * (1.0 + rng.normal(0.0, _draw(rng, sigma_rel), d.shape).astype(np.float32))
    if dropout > 0:
        out[rng.random(d.shape) < dropout] = np.nan
    return out


def pixel_loss(image: np.ndarray, rng: np.random.Generator, fraction: float = 0.5,
               fill: float = 0) -> np.ndarray:
    """A random `fraction` of pixels set to `fill` (the 'random 50% pixel loss' case)."""
    out = np.array(image, copy=True)
    out[rng.random(out.shape[:2]) < fraction] = fill
    return out


def lidar_jitter(points: np.ndarray, rng: np.random.Generator,
                 sigma_m: Range = 0.05) -> np.ndarray:
    """Every point moved by isotropic Gaussian noise (std sigma_m metres); NaN stays NaN."""
    pts = np.asarray(points)
    noise = rng.normal(0.0, _draw(rng, sigma_m), pts.shape)
    return (pts + noise).astype(pts.dtype)


def low_res_events(x: np.ndarray, y: np.ndarray, t: np.ndarray, p: np.ndarray,
                   rng: np.random.Generator, factor: int = 4, width: int | None = None,
                   height: int | None = None) -> tuple[np.ndarray, ...]:
    """A sensor with `factor` times fewer pixels per axis: coordinates snap to the centre of
    their factor x factor block and only one event in `factor` survives (a big pixel fires
    about as often as one small one), chosen at random."""
    f = max(1, int(factor))
    keep = rng.random(np.asarray(x).size) < 1.0 / f
    xs = (np.asarray(x)[keep].astype(np.int64) // f) * f + f // 2
    ys = (np.asarray(y)[keep].astype(np.int64) // f) * f + f // 2
    if width is not None:
        xs = np.minimum(xs, width - 1)
    if height is not None:
        ys = np.minimum(ys, height - 1)
    return (xs.astype(np.asarray(x).dtype), ys.astype(np.asarray(y).dtype), np.asarray(t)[keep],
            np.asarray(p)[keep])


def event_noise(x: np.ndarray, y: np.ndarray, t: np.ndarray, p: np.ndarray,
                rng: np.random.Generator, rate_hz: Range = 2.0, t_start: float = 0.0,
                t_end: float = 0.05, width: int = 320, height: int = 240,
                ) -> tuple[np.ndarray, ...]:
    """Background-activity noise: Poisson events (rate_hz per pixel) at random pixels, times in
    [t_start, t_end) (in the units of t) and polarities, merged in time order. `t_end - t_start`
    must be in seconds for the rate to mean per second; when t is in nanoseconds pass the window
    in nanoseconds and rate_hz * 1e-9."""
    n = int(rng.poisson(_draw(rng, rate_hz) * width * height * (t_end - t_start)))
    t = np.asarray(t)
    nt = rng.uniform(t_start, t_end, n)
    if np.issubdtype(t.dtype, np.integer):
        nt = np.floor(nt)
    pol_values = np.array([-1, 1]) if np.asarray(p).size == 0 or np.asarray(p).min() < 0 \
        else np.array([0, 1])
    xs = np.concatenate([np.asarray(x), rng.integers(0, width, n).astype(np.asarray(x).dtype)])
    ys = np.concatenate([np.asarray(y), rng.integers(0, height, n).astype(np.asarray(y).dtype)])
    ts = np.concatenate([t, nt.astype(t.dtype)])
    ps = np.concatenate([np.asarray(p), rng.choice(pol_values, n).astype(np.asarray(p).dtype)])
    order = np.argsort(ts, kind='stable')
    return xs[order], ys[order], ts[order], ps[order]


def drop_windows(stamps_ns: np.ndarray, rng: np.random.Generator, gaps: int = 1,
                 gap_s: Range = (1.0, 3.0)) -> np.ndarray:
    """Keep-mask over message stamps with `gaps` random gaps of gap_s seconds each (a topic
    that stops for seconds and comes back). Gaps start inside the recording."""
    stamps = np.asarray(stamps_ns, dtype=np.int64)
    keep = np.ones(stamps.size, dtype=bool)
    if stamps.size == 0:
        return keep
    t0, t1 = int(stamps.min()), int(stamps.max())
    for _ in range(int(gaps)):
        length = int(_draw(rng, gap_s) * 1e9)
        start = int(rng.integers(t0, max(t0 + 1, t1 - min(length, t1 - t0) + 1)))
        keep &= ~((stamps >= start) & (stamps < start + length))
    return keep


#: failure name -> the modality it changes ('drop' removes messages of chosen topics)
FAILURES: dict[str, str] = {
    'motion_blur': 'rgb',
    'over_exposure': 'rgb',
    'under_exposure': 'rgb',
    'rgb_noise': 'rgb',
    'depth_noise': 'depth',
    'pixel_loss': 'any',
    'lidar_jitter': 'lidar',
    'low_res_events': 'event',
    'event_noise': 'event',
    'drop': 'topics',
}
