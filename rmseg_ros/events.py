"""Events -> voxel grids, one code path for training (bags) and the online node.

Polarity convention: an event with p > 0 (p = 1 or +1, True) is ON, a brightness increase, and
counts +1; an event with p <= 0 (p = 0 or -1, False) is OFF, a brightness decrease, and counts -1.
Both common encodings (0/1 as in DVS drivers and evt formats, -1/+1 as in many datasets) are
therefore read the same way.

Voxel grid (E2VID): the time window [t0, t1] is spanned by `num_bins` bin centres at
t0 + i * (t1 - t0) / (num_bins - 1); each event is split linearly between the two neighbouring
centres, so each event adds a total weight of exactly 1 (mass is conserved) and the grid keeps
sub-bin timing.

Pre-rendered event images (when only an Image is published, e.g. by a DVS renderer) carry no
timing, so their polarity is spread evenly over the bins; see `event_image_to_voxel`.
"""

from __future__ import annotations

import cv2
import numpy as np

#: An rgb event image pixel is ON when blue exceeds red by at least this much (OFF: vice versa).
COLOUR_MARGIN = 64


def _spatial_index(
    x: np.ndarray, y: np.ndarray, sensor_hw: tuple[int, int], out_hw: tuple[int, int]
) -> np.ndarray:
    """Flat output pixel of each (already in-sensor) event: floor(x * out_w / sensor_w), so every
    sensor pixel maps to exactly one output pixel (mass is conserved when resizing)."""
    sh, sw = sensor_hw
    oh, ow = out_hw
    if np.issubdtype(x.dtype, np.integer):
        xo = x.astype(np.int64)
        yo = y.astype(np.int64)
        if (oh, ow) != (sh, sw):  # in place: fewer large temporaries
            xo *= ow
            xo //= sw
            yo *= oh
            yo //= sh
    else:
        xo = np.floor(x * (ow / sw)).astype(np.int64)
        yo = np.floor(y * (oh / sh)).astype(np.int64)
        # x * ow / sw can round up to ow for x just below sw
        np.minimum(xo, ow - 1, out=xo)
        np.minimum(yo, oh - 1, out=yo)
    yo *= ow
    yo += xo
    return yo


def events_to_voxel(
    x: np.ndarray,
    y: np.ndarray,
    t: np.ndarray,
    p: np.ndarray,
    num_bins: int,
    sensor_hw: tuple[int, int],
    out_hw: tuple[int, int] | None = None,
    t_range: tuple[int | float, int | float] | None = None,
    split_polarity: bool = False,
) -> np.ndarray:
    """Voxel grid of raw events, float32.

    Returns (num_bins, H, W) signed (ON +, OFF -), or with `split_polarity` (2 * num_bins, H, W):
    the ON bins then the OFF bins, both non-negative. The window is `t_range` (inclusive) or the
    events' min..max time; events outside it, or outside the sensor, are ignored. Timestamps may
    be int (ns / us, kept exact by subtracting t0 in integers) or float."""
    if num_bins < 1:
        raise ValueError(f'num_bins must be >= 1, got {num_bins}')
    sh, sw = int(sensor_hw[0]), int(sensor_hw[1])
    oh, ow = (sh, sw) if out_hw is None else (int(out_hw[0]), int(out_hw[1]))
    if min(sh, sw, oh, ow) <= 0:
        raise ValueError(f'sensor_hw {sensor_hw} and out_hw {out_hw} must be positive')
    x, y, t, p = (np.asarray(a).reshape(-1) for a in (x, y, t, p))
    n = x.shape[0]
    if not (y.shape[0] == t.shape[0] == p.shape[0] == n):
        raise ValueError(
            f'x, y, t, p lengths differ: {n}, {y.shape[0]}, {t.shape[0]}, {p.shape[0]}'
        )
    channels = 2 * num_bins if split_polarity else num_bins
    hw = oh * ow
    if n == 0:
        return np.zeros((channels, oh, ow), dtype=np.float32)

    if t_range is None:
        t0, t1 = t.min(), t.max()
    else:
        t0, t1 = t_range
    if np.issubdtype(t.dtype, np.integer) and float(t0).is_integer() and float(t1).is_integer():
        # Relative times in integers: float64 of absolute ns stamps would lose precision.
        rel = t.astype(np.int64) - int(t0)
        span = float(int(t1) - int(t0))
    else:
        rel = t.astype(np.float64) - float(t0)
        span = float(t1) - float(t0)
    keep = (rel >= 0) & (rel <= span)
    keep &= (x >= 0) & (x < sw) & (y >= 0) & (y < sh)
    if not keep.all():
        sel = np.flatnonzero(keep)
        x, y, p, rel = x[sel], y[sel], p[sel], rel[sel]
    if x.shape[0] == 0:
        return np.zeros((channels, oh, ow), dtype=np.float32)

    # Bilinear in time. np.add.at (fast in numpy 2) writes straight into the float32 result:
    # no float64 bincount grid and no concatenated temporaries (allocation churn costs more than
    # the arithmetic at these sizes).
    grid = np.zeros(channels * hw, dtype=np.float32)
    target = _spatial_index(x, y, (sh, sw), (oh, ow))
    on = p > 0
    if split_polarity:
        target += np.where(on, 0, num_bins * hw)
        weight = np.ones(x.shape[0], dtype=np.float32)
    else:
        weight = np.where(on, np.float32(1.0), np.float32(-1.0))
    if num_bins == 1 or span <= 0:
        np.add.at(grid, target, weight)
        return grid.reshape(channels, oh, ow)
    tn = rel * ((num_bins - 1) / span)  # float64 in [0, num_bins - 1]
    left = tn.astype(np.int64)  # tn >= 0, so truncation is floor
    frac = np.subtract(tn, left, out=tn)  # reuse the buffer
    at_end = left >= num_bins - 1  # events at t1: all weight to the last bin
    if at_end.any():
        left[at_end] = num_bins - 2
        frac[at_end] = 1.0
    left *= hw
    left += target
    w_right = np.multiply(weight, frac, dtype=np.float32)
    weight -= w_right  # left weight = polarity * (1 - frac)
    np.add.at(grid, left, weight)
    left += hw
    np.add.at(grid, left, w_right)
    return grid.reshape(channels, oh, ow)


def event_image_to_voxel(
    image: np.ndarray,
    num_bins: int,
    out_hw: tuple[int, int] | None = None,
    encoding: str | None = None,
) -> np.ndarray:
    """Voxel grid (num_bins, H, W) float32 from a pre-rendered event image.

    Accepted images (`encoding` None guesses from the shape: 2-D or 1 channel = mono8,
    3 = rgb8, 4 = rgba8):
    - mono8: 128 = no event, > 128 ON, < 128 OFF (the grey-level renderers' convention).
    - rgb8 / bgr8 / rgba8 / bgra8: ON where blue >= red + COLOUR_MARGIN, OFF where
      red >= blue + COLOUR_MARGIN, otherwise no event; this is the DVS renderers' blue = ON,
      red = OFF, and reads white, black or grey backgrounds (and a grey frame under the
      events) as no event.
    Only the sign is used: each pixel with an event gets +-1 / num_bins in every bin, so a bin
    sum equals one event of that polarity, and the layout matches `events_to_voxel`. Resizing
    to `out_hw` is nearest-neighbour, as done for event images in DELIVER-style datasets."""
    if num_bins < 1:
        raise ValueError(f'num_bins must be >= 1, got {num_bins}')
    img = np.asarray(image)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.dtype != np.uint8 or img.ndim not in (2, 3):
        raise ValueError(f'event image must be uint8 (H, W[, C]), got {img.dtype} {img.shape}')
    if encoding is None:
        encoding = {2: 'mono8', 3: 'rgb8', 4: 'rgba8'}.get(img.shape[2] if img.ndim == 3 else 2, '')
    enc = encoding.lower()
    h, w = img.shape[:2]
    oh, ow = (h, w) if out_hw is None else (int(out_hw[0]), int(out_hw[1]))
    if (oh, ow) != (h, w):
        # Nearest sampling commutes with the per-pixel decoding below, so resize the (smaller)
        # uint8 source; INTER_NEAREST_EXACT samples at pixel centres.
        img = cv2.resize(np.ascontiguousarray(img), (ow, oh), interpolation=cv2.INTER_NEAREST_EXACT)
    if enc == 'mono8' and img.ndim == 2:
        sign = np.sign(img.astype(np.int16) - 128)
    elif enc in ('rgb8', 'bgr8', 'rgba8', 'bgra8') and img.ndim == 3 and img.shape[2] >= 3:
        r_ch, b_ch = (0, 2) if enc.startswith('rgb') else (2, 0)
        diff = img[:, :, b_ch].astype(np.int16) - img[:, :, r_ch].astype(np.int16)
        sign = (diff >= COLOUR_MARGIN).astype(np.int16) - (diff <= -COLOUR_MARGIN)
    else:
        raise ValueError(
            f'unsupported event image: encoding {encoding!r} with shape {img.shape}; expected '
            'mono8 (H, W) or rgb8 / bgr8 / rgba8 / bgra8 (H, W, 3 or 4)'
        )
    plane = sign.astype(np.float32) * np.float32(1.0 / num_bins)
    return np.ascontiguousarray(np.broadcast_to(plane, (num_bins, oh, ow)))
