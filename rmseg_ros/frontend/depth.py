"""Depth images -> metres + validity, and edge-preserving resizing (ROS-free numpy).

Encodings follow REP 118: '16UC1' (and 'mono16', which some drivers publish for the same data)
is millimetres with 0 = no reading; '32FC1' is metres with NaN (or +-inf, or <= 0) = no reading.

Readings outside [min_m, max_m] are marked invalid rather than clamped, as depth drivers do for
their specified working range: a value beyond it is not a measurement of that distance (it is
noise, multipath or a saturated disparity), and clamping would invent a surface at the limit.
Invalid pixels are 0 in the metres image so that they contribute nothing to a convolution, and
the validity mask travels alongside as its own input.
"""

from __future__ import annotations

import cv2
import numpy as np

SUPPORTED_ENCODINGS = ('16UC1', 'mono16', '32FC1')
_CV2_RESIZE_DTYPES = (np.dtype(np.float32), np.dtype(np.float64), np.dtype(np.uint16))


def check_encoding(encoding: str) -> None:
    if encoding not in SUPPORTED_ENCODINGS:
        raise ValueError(
            f'unsupported depth encoding {encoding!r}; supported: {", ".join(SUPPORTED_ENCODINGS)}'
        )


def depth_to_metres(
    depth: np.ndarray, encoding: str, min_m: float, max_m: float
) -> tuple[np.ndarray, np.ndarray]:
    """(metres float32 with 0 where invalid, valid bool) for a (H, W) or (H, W, 1) depth image."""
    arr = np.asarray(depth)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim != 2:
        raise ValueError(f'depth must be (H, W) or (H, W, 1), got {np.shape(depth)}')
    if not min_m <= max_m:
        raise ValueError(f'min_m ({min_m}) must not exceed max_m ({max_m})')
    check_encoding(encoding)
    # cv2's SIMD kernels: about 5x faster than the numpy expressions at 640x480 on this machine.
    if encoding in ('16UC1', 'mono16'):
        if not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f'{encoding} depth must hold integers (millimetres), got {arr.dtype}')
        if arr.dtype != np.uint16:
            arr = np.clip(arr, 0, 65535).astype(np.uint16)
        # Compare in millimetres on the integers (exact; 0 is always invalid).
        lo_mm = min(max(int(np.ceil(min_m * 1000.0 - 1e-6)), 1), 65536)
        hi_mm = min(int(np.floor(max_m * 1000.0 + 1e-6)) if np.isfinite(max_m) else 65535, 65535)
        mask = cv2.inRange(np.ascontiguousarray(arr), lo_mm, hi_mm)  # 255 valid, 0 invalid
        # mm * (mask / 255) * 1e-3 in one pass (computed in double, rounded once to float32)
        metres = cv2.multiply(arr, mask, scale=1e-3 / 255.0, dtype=cv2.CV_32F)
    else:  # '32FC1'
        src = np.ascontiguousarray(arr, dtype=np.float32)
        lo = max(float(min_m), float(np.finfo(np.float32).tiny))  # 0 (and denormals) invalid
        hi = min(float(max_m), float(np.finfo(np.float32).max))  # +inf is invalid
        mask = cv2.inRange(src, lo, hi)  # NaN compares false: invalid
        metres = cv2.bitwise_and(src, src, mask=mask)  # zero the invalid pixels' bits
    return metres, mask > 0


def _nearest_indices(src: int, dst: int) -> np.ndarray:
    """Source index sampled by each destination pixel (pixel-centre convention, as
    CameraIntrinsics.scaled), so resized depth stays aligned with projected LiDAR."""
    return np.minimum(((np.arange(dst) + 0.5) * (src / dst)).astype(np.intp), src - 1)


def resize_nearest(image: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a (H, W) image at pixel centres (as _nearest_indices).

    Every output value is a source value, so a per-pixel conversion (depth_to_metres) gives the
    same result before or after it: resizing the raw image first converts 4x fewer pixels."""
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim != 2:
        raise ValueError(f'expected a (H, W) image, got {np.shape(image)}')
    oh, ow = int(out_hw[0]), int(out_hw[1])
    if oh <= 0 or ow <= 0:
        raise ValueError(f'out_hw must be positive, got {out_hw}')
    h, w = arr.shape
    if (oh, ow) == (h, w):
        return arr.copy()
    if arr.dtype == np.bool_:
        return resize_nearest(arr.view(np.uint8), out_hw).view(bool)
    if arr.dtype in _CV2_RESIZE_DTYPES or arr.dtype == np.uint8:
        # INTER_NEAREST_EXACT samples at pixel centres, like _nearest_indices
        return cv2.resize(np.ascontiguousarray(arr), (ow, oh),
                          interpolation=cv2.INTER_NEAREST_EXACT)
    return arr[_nearest_indices(h, oh)[:, None], _nearest_indices(w, ow)[None, :]]


def resize_depth(
    depth: np.ndarray, valid: np.ndarray, out_hw: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Nearest-neighbour resize of depth and validity together: every output value is a real
    reading (no averaging across an edge into a surface that is not there)."""
    d = np.asarray(depth)
    m = np.asarray(valid, dtype=bool)
    if d.shape != m.shape or d.ndim != 2:
        raise ValueError(f'depth {d.shape} and valid {m.shape} must be the same (H, W)')
    return resize_nearest(d, out_hw), resize_nearest(m, out_hw)
