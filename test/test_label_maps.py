"""label_maps: labels equal the argmax of torch's bilinear upsampling, computed without it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rmseg_ros.inference.label_maps import labels_from_logits
from rmseg_ros.models.fusion import upsample


def _regions(k: int, hw: tuple[int, int], seed: int, noise: float) -> torch.Tensor:
    """Logits of a few smooth regions (as a trained model gives) plus per-cell noise."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(1, k, 4, 5, generator=g) * 4
    return upsample(coarse, hw) + noise * torch.randn(1, k, *hw, generator=g)


@pytest.mark.parametrize(('k', 'low', 'out', 'noise'), [
    (12, (60, 80), (240, 320), 0.3),  # the deployed model: stride 4
    (9, (60, 80), (240, 320), 3.0),   # nearly every cell mixed: the exact path everywhere
    (5, (7, 9), (30, 41), 0.5),       # non-integer scale, odd sizes
    (3, (10, 10), (10, 10), 1.0),     # no resizing
    (1, (6, 8), (24, 32), 0.0),       # one class
])
def test_labels_equal_argmax_of_upsampled_logits(k, low, out, noise):
    logits = _regions(k, low, seed=k, noise=noise)
    labels, confidence = labels_from_logits(logits[0].numpy(), out)
    reference = upsample(logits, out).argmax(dim=1)[0].numpy()
    assert labels.dtype == np.uint8 and labels.shape == out
    assert np.array_equal(labels, reference)
    ref_conf = upsample(torch.softmax(logits, dim=1).amax(dim=1, keepdim=True), out)[0, 0]
    assert confidence.dtype == np.float32 and confidence.shape == out
    np.testing.assert_allclose(confidence, ref_conf.numpy(), atol=1e-5)
    if k > 1:
        assert len(np.unique(labels)) > 1  # a real label map, not one class


def test_ties_take_the_first_class_as_torch():
    logits = np.zeros((4, 3, 3), np.float32)
    logits[2] = 1.0
    logits[3] = 1.0  # tie between classes 2 and 3 everywhere
    labels, confidence = labels_from_logits(logits, (6, 6))
    assert (labels == 2).all()
    np.testing.assert_allclose(confidence, np.e / (2 * np.e + 2), rtol=1e-6)


def test_rejects_bad_shapes():
    with pytest.raises(ValueError, match='K, h, w'):
        labels_from_logits(np.zeros((3, 4), np.float32), (8, 8))
    with pytest.raises(ValueError, match='K, h, w'):
        labels_from_logits(np.zeros((300, 4, 4), np.float32), (8, 8))


def test_confidence_is_skipped_when_not_asked_for():
    logits = np.random.default_rng(1).normal(size=(5, 6, 8)).astype(np.float32)
    labels, confidence = labels_from_logits(logits, (24, 32))
    same, none = labels_from_logits(logits, (24, 32), confidence=False)
    assert none is None and np.array_equal(labels, same)
    assert confidence.shape == (24, 32) and 0.2 <= confidence.min() <= confidence.max() <= 1.0
