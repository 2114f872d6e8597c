"""Segmentation scores from a confusion matrix (numpy only): shared by the training
evaluation, the results reports and `make demo`, which scores published labels against a
recording's ground truth."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def iou_per_class(cm: Any) -> np.ndarray:
    """IoU per class of a (K, K) confusion matrix (rows = truth); NaN for a class absent from
    both ground truth and prediction."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    denom = cm.sum(0) + cm.sum(1) - tp
    with np.errstate(invalid='ignore', divide='ignore'):
        return np.where(denom > 0, tp / denom, np.nan)


def confusion_shares(classes: Sequence[str], cm: Sequence[Sequence[int]]
                     ) -> dict[str, dict[str, float]]:
    """true class -> predicted class -> % of the true class's pixels (1 decimal), for the rows
    of a confusion matrix that have pixels."""
    return {c: {p: round(100.0 * v / sum(row), 1) for p, v in zip(classes, row, strict=True)}
            for c, row in zip(classes, cm, strict=True) if sum(row)}
