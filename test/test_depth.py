"""Depth conversion (REP 118 encodings, validity, range limits) and nearest resizing."""

from __future__ import annotations

import numpy as np
import pytest

from rmseg_ros.frontend.depth import depth_to_metres, resize_depth, resize_nearest


@pytest.mark.parametrize('encoding', ['16UC1', 'mono16'])
def test_millimetres_to_metres(encoding):
    mm = np.array([[0, 1000, 1500, 300], [65535, 250, 8000, 8001]], np.uint16)
    metres, valid = depth_to_metres(mm, encoding, 0.3, 8.0)
    assert metres.dtype == np.float32 and valid.dtype == bool and metres.shape == mm.shape
    expected_valid = np.array([[0, 1, 1, 1], [0, 0, 1, 0]], bool)  # 0 = no reading; limits kept
    np.testing.assert_array_equal(valid, expected_valid)
    np.testing.assert_allclose(metres, np.where(expected_valid, mm / 1000.0, 0.0), rtol=1e-7)
    # zero means invalid even when the range starts at zero
    m0, v0 = depth_to_metres(mm, encoding, 0.0, float('inf'))
    np.testing.assert_array_equal(v0, mm > 0)
    np.testing.assert_allclose(m0, mm / 1000.0, rtol=1e-7)


def test_metres_32fc1_invalid_values():
    d = np.array([[np.nan, np.inf, -np.inf, -1.0], [0.0, 0.5, 3.25, 9.0]], np.float32)
    metres, valid = depth_to_metres(d, '32FC1', 0.5, 8.0)
    expected_valid = np.array([[0, 0, 0, 0], [0, 1, 1, 0]], bool)
    np.testing.assert_array_equal(valid, expected_valid)
    np.testing.assert_array_equal(metres, np.where(expected_valid, d, 0.0).astype(np.float32))
    assert np.isfinite(metres).all() and metres.dtype == np.float32
    # with no limits, only the unusable readings are invalid
    _, v_all = depth_to_metres(d, '32FC1', 0.0, float('inf'))
    np.testing.assert_array_equal(v_all, np.isfinite(d) & (d > 0))


def test_range_limits_mark_invalid_not_clamp():
    d = np.linspace(0.1, 12.0, 120, dtype=np.float32).reshape(10, 12)
    metres, valid = depth_to_metres(d, '32FC1', 1.0, 10.0)
    np.testing.assert_array_equal(valid, (d >= 1.0) & (d <= 10.0))
    assert metres[~valid].max() == 0.0  # not clamped to 1 / 10
    np.testing.assert_array_equal(metres[valid], d[valid])


def test_float64_and_channel_axis_inputs():
    d = np.array([[[1.5], [np.nan]]], np.float64)  # (1, 2, 1)
    metres, valid = depth_to_metres(d, '32FC1', 0.1, 5.0)
    assert metres.shape == (1, 2) and metres.dtype == np.float32
    np.testing.assert_array_equal(valid, [[True, False]])
    with pytest.raises(ValueError, match='integers'):
        depth_to_metres(np.ones((2, 2), np.float32), '16UC1', 0.1, 5.0)


@pytest.mark.parametrize('encoding', ['rgb8', '8UC1', '16SC1', '32FC3', ''])
def test_unsupported_encoding_names_the_supported_ones(encoding):
    with pytest.raises(ValueError) as err:
        depth_to_metres(np.zeros((2, 2), np.uint16), encoding, 0.1, 5.0)
    for name in ('16UC1', 'mono16', '32FC1'):
        assert name in str(err.value)


@pytest.mark.parametrize('out_hw', [(240, 320), (100, 130), (960, 1280), (7, 5)])
def test_nearest_resize_keeps_real_values(out_hw):
    """Two surfaces at 1 m and 5 m with holes: the resized image holds only those readings (no
    2.x m blend at the edge) and samples the source at pixel centres."""
    h, w = 480, 640
    d = np.full((h, w), 5.0, np.float32)
    d[:, : w // 3] = 1.0
    valid = np.ones((h, w), bool)
    valid[::5, ::7] = False
    d[~valid] = 0.0
    rd, rv = resize_depth(d, valid, out_hw)
    assert rd.shape == rv.shape == out_hw and rd.dtype == np.float32 and rv.dtype == bool
    assert set(np.unique(rd).tolist()) <= {0.0, 1.0, 5.0}
    # sample at pixel centres; where a centre falls exactly on a source pixel edge either
    # neighbour is right (cv2 rounds in fixed point there)
    ok = np.zeros(out_hw, bool)
    for eps in (-1e-6, 1e-6):
        rows = np.floor((np.arange(out_hw[0]) + 0.5) * h / out_hw[0] + eps).astype(int)
        cols = np.floor((np.arange(out_hw[1]) + 0.5) * w / out_hw[1] + eps).astype(int)
        rows, cols = np.minimum(rows, h - 1), np.minimum(cols, w - 1)
        ok |= (rd == d[np.ix_(rows, cols)]) & (rv == valid[np.ix_(rows, cols)])
    assert ok.all()
    assert (rd[~rv] == 0).all() and (rd[rv] > 0).all()


def test_resize_other_dtypes_and_same_size():
    d = np.arange(12, dtype=np.int32).reshape(3, 4)  # no cv2 path: index fallback
    v = d % 2 == 0
    rd, rv = resize_depth(d, v, (2, 2))
    np.testing.assert_array_equal(rd, [[1, 3], [9, 11]])
    np.testing.assert_array_equal(rv, [[False, False], [False, False]])
    same, same_v = resize_depth(d, v, (3, 4))
    np.testing.assert_array_equal(same, d)
    assert same is not d and same_v is not v
    with pytest.raises(ValueError):
        resize_depth(d, v[:2], (2, 2))


@pytest.mark.parametrize('encoding', ['16UC1', '32FC1'])
@pytest.mark.parametrize('out_hw', [(240, 320), (100, 130)])
def test_resize_then_convert_equals_convert_then_resize(encoding, out_hw):
    """The front-end resizes the raw image first (4x fewer pixels to convert): that is only
    right because nearest resizing commutes with the per-pixel conversion, NaN / 0 included."""
    rng = np.random.default_rng(3)
    mm = rng.integers(0, 12_000, (480, 640)).astype(np.uint16)
    mm[rng.random(mm.shape) < 0.1] = 0
    raw = mm if encoding == '16UC1' else np.where(mm == 0, np.nan, mm / 1000.0).astype(np.float32)
    if encoding == '32FC1':
        raw[0, :50] = np.inf
    small_first = depth_to_metres(resize_nearest(raw, out_hw), encoding, 0.3, 10.0)
    full_first = resize_depth(*depth_to_metres(raw, encoding, 0.3, 10.0), out_hw)
    np.testing.assert_array_equal(small_first[0], full_first[0])
    np.testing.assert_array_equal(small_first[1], full_first[1])
    assert 0 < small_first[1].mean() < 1  # both valid and invalid readings were exercised
