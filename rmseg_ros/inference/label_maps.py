"""Stride-4 logits -> labels and confidence at the input size, without upsampling the logits.

The models predict logits at 1/4 of their input size; the label map is the argmax of the
bilinearly upsampled logits (torch's align_corners=False). Upsampling K logit planes and
reducing over the class axis took a quarter of the deployed student's CPU time (onnxruntime:
~10 of ~40 ms for 12 classes at 240x320), yet almost every output pixel is decided by its four
source cells alone: a bilinear sample is a convex combination of the logit vectors of its (at
most) four neighbouring cells, and if one class has the largest logit at all four corners it has
it in every convex combination. So pixels whose four cells agree copy that class, and only
pixels next to a change of class need the interpolated logits.

Confidence (max softmax probability) is computed per cell and upsampled bilinearly. It serves
thresholding (`output.min_confidence`) and the node's `~/confidence` image, neither of which
needs the max-softmax of each interpolated vector; `confidence=False` skips it (nobody asked).
"""

from __future__ import annotations

import functools

import cv2
import numpy as np


def _lower_index(src: int, dst: int) -> np.ndarray:
    """Lower source index of each destination pixel's bilinear taps, as torch computes them
    for align_corners=False (the upper one is this + 1, clamped to the last index)."""
    pos = np.maximum((np.arange(dst, dtype=np.float64) + 0.5) * (src / dst) - 0.5, 0.0)
    return np.minimum(pos.astype(np.int64), src - 1)


@functools.lru_cache(maxsize=8)
def _cell_of(h: int, w: int, out_h: int, out_w: int) -> np.ndarray:
    """Flat index of each output pixel's upper-left source cell, (out_h * out_w,) int64."""
    cells = (_lower_index(h, out_h)[:, None] * w + _lower_index(w, out_w)[None, :]).reshape(-1)
    cells.flags.writeable = False
    return cells


def _argmax_top(planes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Argmax (first on ties, as torch) and max over axis 0 of (K, N) float32 planes.

    One elementwise pass per class: numpy's reductions over a short class axis run several
    times slower than K passes over contiguous planes."""
    top = planes[0].copy()
    best = np.zeros(planes.shape[1], dtype=np.uint8)
    better = np.empty(planes.shape[1], dtype=bool)
    for c in range(1, planes.shape[0]):
        np.greater(planes[c], top, out=better)
        best[better] = c
        np.maximum(top, planes[c], out=top)
    return best, top


def labels_from_logits(logits: np.ndarray, out_hw: tuple[int, int], confidence: bool = True
                       ) -> tuple[np.ndarray, np.ndarray | None]:
    """(K, h, w) logits -> labels (H, W) uint8 = argmax of the bilinearly upsampled logits, and
    confidence (H, W) float32 = per-cell max softmax probability, upsampled (None when
    `confidence` is false). K <= 256."""
    logits = np.asarray(logits)
    if logits.ndim != 3 or not 1 <= logits.shape[0] <= 256:
        raise ValueError(f'logits must be (K, h, w) with 1 <= K <= 256, got {logits.shape}')
    k, h, w = logits.shape
    out_h, out_w = int(out_hw[0]), int(out_hw[1])
    planes = np.ascontiguousarray(logits.reshape(k, h * w), dtype=np.float32)
    best, top = _argmax_top(planes)

    # cells whose 2x2 block (clamped at the last row / column) has one class
    grid = best.reshape(h, w)
    right = np.minimum(np.arange(w) + 1, w - 1)
    down = np.minimum(np.arange(h) + 1, h - 1)
    uniform = (grid == grid[:, right]) & (grid == grid[down, :]) & (grid == grid[down][:, right])

    cell_of = _cell_of(h, w, out_h, out_w)
    labels = np.take(best, cell_of)
    mixed = np.flatnonzero(~np.take(uniform.reshape(-1), cell_of))
    if mixed.size:
        # cv2's bilinear resize of the pixel-major (h, w, K) logits (the taps torch uses, SIMD,
        # ~1 ms), then the class argmax only where the corners disagree
        cells = np.ascontiguousarray(planes.T).reshape(h, w, k)
        up = cv2.resize(cells, (out_w, out_h), interpolation=cv2.INTER_LINEAR).reshape(-1, k)
        labels[mixed] = _argmax_top(np.ascontiguousarray(np.take(up, mixed, axis=0).T))[0]
    if not confidence:
        return labels.reshape(out_h, out_w), None
    cells = (1.0 / np.exp(planes - top).sum(axis=0)).reshape(h, w).astype(np.float32)
    return labels.reshape(out_h, out_w), cv2.resize(cells, (out_w, out_h),
                                                    interpolation=cv2.INTER_LINEAR)
