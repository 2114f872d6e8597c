"""Class frequencies of a training split and the loss weights derived from them.

Why: the object classes of the sim data are each 0.06-0.23 % of the labelled pixels (floor
~50 %, wall ~30 %); an unweighted (OHEM) cross-entropy learned none of them (docs/results.md,
"Small objects"). Methods, f_c = pixel frequency of class c over the labelled pixels:
- `enet_log`: w_c = 1 / ln(c0 + f_c), c0 = 1.02 (ENet, Paszke et al. 2016): bounded by
  1 / ln(c0) ~ 50, near 1 / ln(1 + c0 - 1) for frequent classes;
- `inverse_sqrt`: w_c = 1 / sqrt(f_c);
- `median_frequency`: w_c = median_c(f) / f_c (Eigen & Fergus 2015);
- `none`: all ones.
Weights are then scaled so that the average pixel weight is 1 (sum_c f_c w_c = 1, the loss
keeps its scale) and clipped to `max_ratio` x the smallest weight. A class without pixels gets
the largest weight (it cannot contribute, and a later split may have it).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

METHODS = ('none', 'enet_log', 'inverse_sqrt', 'median_frequency')
ENET_C = 1.02


def label_histogram(label_arrays: Iterable[np.ndarray], num_classes: int,
                    ignore_index: int = 255) -> np.ndarray:
    """Pixel count per class (int64, K) over label arrays (any shape); ignored / out-of-range
    values are left out."""
    counts = np.zeros(num_classes, np.int64)
    for labels in label_arrays:
        flat = np.asarray(labels).ravel()
        h = np.bincount(flat, minlength=256)[:num_classes] if flat.dtype == np.uint8 else \
            np.bincount(flat[(flat >= 0) & (flat < num_classes) & (flat != ignore_index)],
                        minlength=num_classes)[:num_classes]
        counts += h.astype(np.int64)
    return counts


def class_weights(counts: np.ndarray, method: str = 'enet_log', max_ratio: float = 50.0
                  ) -> np.ndarray:
    """(K,) float32 loss weights from per-class pixel counts (see the module docstring)."""
    if method not in METHODS:
        raise ValueError(f'class weighting must be one of {METHODS}, got {method!r}')
    counts = np.asarray(counts, np.float64)
    if counts.ndim != 1 or counts.size == 0 or (counts < 0).any():
        raise ValueError('counts must be a non-empty 1-D array of non-negative pixel counts')
    if method == 'none' or counts.sum() == 0:
        return np.ones(counts.size, np.float32)
    f = counts / counts.sum()
    seen = f > 0
    w = np.empty_like(f)
    if method == 'enet_log':
        w[seen] = 1.0 / np.log(ENET_C + f[seen])
    elif method == 'inverse_sqrt':
        w[seen] = 1.0 / np.sqrt(f[seen])
    else:
        w[seen] = np.median(f[seen]) / f[seen]
    w[~seen] = w[seen].max()
    w /= float((f * w).sum())
    if max_ratio > 0:
        w = np.minimum(w, w.min() * max_ratio)
        w /= float((f * w).sum())
    return w.astype(np.float32)
