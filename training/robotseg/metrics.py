"""J&F of video object segmentation (DAVIS conventions).

J: region similarity, the IoU of predicted and true masks (1 when both are empty).
F: boundary accuracy, the F-measure of the mask boundaries matched within a tolerance of
   `bound_th` x image diagonal pixels (DAVIS: 0.008; 1 when both boundaries are empty).
Per clip, J and F are the means over the scored frames and J&F their mean.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np


def region_j(pred: np.ndarray, gt: np.ndarray) -> float:
    p, g = pred.astype(bool), gt.astype(bool)
    union = np.logical_or(p, g).sum()
    if union == 0:
        return 1.0
    return float(np.logical_and(p, g).sum() / union)


def boundary(mask: np.ndarray) -> np.ndarray:
    """One-pixel inner boundary of a binary mask (pixels of the mask with a 4-neighbour
    outside it; the image border counts as outside)."""
    m = mask.astype(np.uint8)
    eroded = cv2.erode(m, np.ones((3, 3), np.uint8), borderType=cv2.BORDER_CONSTANT,
                       borderValue=0)
    return (m > 0) & (eroded == 0)


def _dilate(b: np.ndarray, radius: int) -> np.ndarray:
    if radius <= 0:
        return b
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    return cv2.dilate(b.astype(np.uint8), k) > 0


def boundary_f(pred: np.ndarray, gt: np.ndarray, bound_th: float = 0.008) -> float:
    h, w = gt.shape[:2]
    radius = bound_th if bound_th >= 1 else math.ceil(bound_th * math.hypot(h, w))
    bp, bg = boundary(pred), boundary(gt)
    n_p, n_g = int(bp.sum()), int(bg.sum())
    if n_p == 0 and n_g == 0:
        return 1.0
    if n_p == 0 or n_g == 0:
        return 0.0
    precision = float((bp & _dilate(bg, int(radius))).sum() / n_p)
    recall = float((bg & _dilate(bp, int(radius))).sum() / n_g)
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def clip_jf(preds: Sequence[np.ndarray], gts: Sequence[np.ndarray], skip_first: bool = True,
            bound_th: float = 0.008) -> dict[str, float]:
    """Mean J, F and J&F over a clip's frames (frame 0 left out with skip_first)."""
    if len(preds) != len(gts):
        raise ValueError(f'{len(preds)} predictions for {len(gts)} frames')
    start = 1 if skip_first and len(gts) > 1 else 0
    js = [region_j(p, g) for p, g in zip(preds[start:], gts[start:], strict=True)]
    fs = [boundary_f(p, g, bound_th) for p, g in zip(preds[start:], gts[start:], strict=True)]
    j, f = float(np.mean(js)), float(np.mean(fs))
    return {'J': j, 'F': f, 'JF': (j + f) / 2, 'frames': len(js)}
