"""Event voxel grids: mass conservation, bilinear time weights, motion, event images."""

from __future__ import annotations

import numpy as np
import pytest

from rmseg_ros.frontend.events import COLOUR_MARGIN, event_image_to_voxel, events_to_voxel

SENSOR = (480, 640)


def _random_events(n: int, seed: int = 0, hw: tuple[int, int] = SENSOR):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, hw[1], n).astype(np.uint16)
    y = rng.integers(0, hw[0], n).astype(np.uint16)
    t = np.sort(rng.integers(0, 50_000_000, n)).astype(np.int64)  # 50 ms in ns
    p = rng.integers(0, 2, n).astype(np.uint8)
    return x, y, t, p


@pytest.mark.parametrize('out_hw', [None, (240, 320), (200, 300), (37, 51)])
@pytest.mark.parametrize('num_bins', [1, 5])
def test_mass_is_conserved_per_polarity(out_hw, num_bins):
    x, y, t, p = _random_events(20_000)
    n_on, n_off = int((p > 0).sum()), int((p == 0).sum())
    split = events_to_voxel(x, y, t, p, num_bins, SENSOR, out_hw, split_polarity=True)
    signed = events_to_voxel(x, y, t, p, num_bins, SENSOR, out_hw)
    h, w = out_hw or SENSOR
    assert split.shape == (2 * num_bins, h, w) and signed.shape == (num_bins, h, w)
    assert split.dtype == signed.dtype == np.float32
    assert split.min() >= 0
    assert split[:num_bins].sum(dtype=np.float64) == pytest.approx(n_on, abs=1e-2)
    assert split[num_bins:].sum(dtype=np.float64) == pytest.approx(n_off, abs=1e-2)
    assert signed.sum(dtype=np.float64) == pytest.approx(n_on - n_off, abs=1e-2)
    np.testing.assert_allclose(signed, split[:num_bins] - split[num_bins:], atol=1e-5)


def test_downscaling_by_two_sums_2x2_blocks():
    x, y, t, p = _random_events(20_000, seed=1)
    full = events_to_voxel(x, y, t, p, 4, SENSOR)
    half = events_to_voxel(x, y, t, p, 4, SENSOR, (240, 320))
    np.testing.assert_allclose(half, full.reshape(4, 240, 2, 320, 2).sum(axis=(2, 4)), atol=1e-5)


def test_events_at_bin_centres_and_halfway():
    # 5 bins over [0, 400]: centres at 0, 100, 200, 300, 400
    x = np.array([1, 2, 3, 4, 5])
    y = np.zeros(5, int)
    t = np.array([0, 200, 250, 400, 330])
    p = np.array([1, 1, 0, 1, 1])
    v = events_to_voxel(x, y, t, p, 5, (2, 8), t_range=(0, 400))
    expected = np.zeros((5, 2, 8), np.float32)
    expected[0, 0, 1] = 1.0  # at the first centre
    expected[2, 0, 2] = 1.0  # exactly at a centre: all to that bin
    expected[2, 0, 3] = expected[3, 0, 3] = -0.5  # halfway: 0.5 / 0.5, OFF
    expected[4, 0, 4] = 1.0  # at the window end: the last bin
    expected[3, 0, 5], expected[4, 0, 5] = 0.7, 0.3  # 330: 30 % of the way from 300 to 400
    np.testing.assert_allclose(v, expected, atol=1e-6)


def test_default_window_is_min_to_max_and_outside_window_is_ignored():
    x = np.array([0, 1, 2, 3])
    y = np.zeros(4, int)
    t = np.array([1000, 1100, 1200, 5000])
    p = np.ones(4)
    auto = events_to_voxel(x[:3], y[:3], t[:3], p[:3], 3, (1, 4))
    np.testing.assert_allclose(auto[:, 0, :3], np.eye(3), atol=1e-6)  # 1000 / 1100 / 1200
    windowed = events_to_voxel(x, y, t, p, 3, (1, 4), t_range=(1000, 1200))
    np.testing.assert_allclose(windowed, auto, atol=1e-6)  # the event at 5000 is dropped
    assert not events_to_voxel(x, y, t, p, 3, (1, 4), t_range=(0, 999)).any()


def test_polarity_encodings_agree():
    x, y, t, p01 = _random_events(5000, seed=2, hw=(60, 80))
    a = events_to_voxel(x, y, t, p01, 3, (60, 80))
    b = events_to_voxel(x, y, t, p01.astype(np.int8) * 2 - 1, 3, (60, 80))
    c = events_to_voxel(x, y, t, p01.astype(bool), 3, (60, 80))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)
    assert a.sum() == pytest.approx(2 * int(p01.sum()) - len(p01), abs=1e-2)


def test_absolute_nanosecond_stamps_are_binned_exactly():
    """Epoch nanoseconds (~1.7e18) do not fit float64 exactly; binning must match relative
    stamps, and a float-seconds copy (microsecond precision is plenty) agrees closely."""
    x = np.array([0, 1, 2, 3])
    y = np.zeros(4, int)
    rel = np.array([0, 1, 2, 4])  # ns
    p = np.ones(4)
    base = 1_700_000_000_123_456_789
    a = events_to_voxel(x, y, rel + base, p, 5, (1, 4))
    b = events_to_voxel(x, y, rel, p, 5, (1, 4))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(b[1, 0, 1], 1.0)  # 1 ns of 4 = the second of 5 centres


def test_moving_edge_shifts_between_early_and_late_bins():
    """A vertical edge at x0 fires during the first half of the window and at x0 + k during
    the second half: the early bins respond at x0, the late bins at x0 + k."""
    h, w, x0, k = 40, 64, 20, 6
    rng = np.random.default_rng(3)
    n = 4000
    t = np.sort(rng.uniform(0.0, 1.0, n))  # float seconds
    x = np.where(t < 0.5, x0, x0 + k)
    y = rng.integers(0, h, n)
    p = rng.integers(0, 2, n)
    v = events_to_voxel(x, y, t, p, 6, (h, w), t_range=(0.0, 1.0), split_polarity=True)
    columns = (v[:6] + v[6:]).sum(axis=1)  # (bins, W) activity per column
    early, late = columns[:2].sum(0), columns[-2:].sum(0)
    assert int(np.argmax(early)) == x0 and int(np.argmax(late)) == x0 + k
    assert early[x0 + k] == 0 and late[x0] == 0
    # at half resolution the shift is halved (floor(x * 32 / 64))
    vh = events_to_voxel(x, y, t, p, 6, (h, w), (h // 2, w // 2), t_range=(0.0, 1.0))
    ch = np.abs(vh).sum(axis=1)
    assert int(np.argmax(ch[0])) == x0 // 2 and int(np.argmax(ch[-1])) == (x0 + k) // 2


def test_out_of_sensor_events_and_empty_input():
    v = events_to_voxel(
        np.array([-1, 5, 700]),
        np.array([0, 0, 0]),
        np.array([0, 1, 2]),
        np.ones(3),
        2,
        SENSOR,
        (4, 4),
    )
    assert v.sum() == pytest.approx(1.0)
    e = events_to_voxel(
        np.zeros(0), np.zeros(0), np.zeros(0), np.zeros(0), 3, SENSOR, (4, 5), split_polarity=True
    )
    assert e.shape == (6, 4, 5) and not e.any()
    with pytest.raises(ValueError):
        events_to_voxel(np.zeros(2), np.zeros(2), np.zeros(3), np.zeros(2), 3, SENSOR)
    with pytest.raises(ValueError):
        events_to_voxel(np.zeros(2), np.zeros(2), np.zeros(2), np.zeros(2), 0, SENSOR)


# ---------------------------------------------------------------------------------------------
# pre-rendered event images


def test_mono8_event_image():
    img = np.full((6, 8), 128, np.uint8)
    img[1, 2] = 255
    img[2, 3] = 129
    img[4, 5] = 0
    img[5, 7] = 127
    v = event_image_to_voxel(img, 4, None)
    assert v.shape == (4, 6, 8) and v.dtype == np.float32
    total = v.sum(axis=0)
    expected = np.zeros((6, 8))
    expected[1, 2] = expected[2, 3] = 1.0
    expected[4, 5] = expected[5, 7] = -1.0
    np.testing.assert_allclose(total, expected, atol=1e-6)
    np.testing.assert_allclose(v, np.broadcast_to(expected / 4, v.shape), atol=1e-6)  # even spread


def test_colour_event_image_blue_on_red_off():
    img = np.full((4, 4, 3), 255, np.uint8)  # white background
    img[0, 0] = (0, 0, 255)  # blue: ON
    img[1, 1] = (255, 0, 0)  # red: OFF
    img[2, 2] = (0, 0, 0)  # black: none
    img[3, 3] = (90, 90, 90)  # grey frame underneath: none
    img[0, 3] = (100, 40, 100 + COLOUR_MARGIN)  # just blue enough
    img[3, 0] = (100, 40, 100 + COLOUR_MARGIN - 1)  # not quite
    expected = np.zeros((4, 4))
    expected[0, 0] = expected[0, 3] = 1.0
    expected[1, 1] = -1.0
    rgb = event_image_to_voxel(img, 2, None)  # 3 channels: rgb8 assumed
    np.testing.assert_allclose(rgb.sum(axis=0), expected, atol=1e-6)
    bgr = event_image_to_voxel(img[:, :, ::-1], 2, None, encoding='bgr8')
    np.testing.assert_array_equal(bgr, rgb)
    rgba = np.concatenate([img, np.full((4, 4, 1), 255, np.uint8)], axis=2)
    np.testing.assert_array_equal(event_image_to_voxel(rgba, 2, None), rgb)
    with pytest.raises(ValueError, match='mono8'):
        event_image_to_voxel(img, 2, None, encoding='mono16')


def test_event_image_resize_is_nearest_and_matches_raw_layout():
    rng = np.random.default_rng(4)
    img = rng.choice(np.array([0, 128, 255], np.uint8), size=(60, 80))
    v = event_image_to_voxel(img, 5, (30, 40))
    # nearest at pixel centres: output (i, j) samples input (2 i + 1, 2 j + 1)
    sign = np.sign(img[1::2, 1::2].astype(int) - 128)
    np.testing.assert_allclose(v.sum(axis=0), sign, atol=1e-6)
    np.testing.assert_allclose(np.abs(v[v != 0]), 0.2, rtol=1e-6)
    # same layout as raw events: ON (255 sampled) positive in every bin, OFF negative
    assert (v[:, img[1::2, 1::2] == 255] > 0).all() and (v[:, img[1::2, 1::2] == 0] < 0).all()


def test_scale_multiplies_every_event_weight():
    """The front-end folds its normalisation into the events: same grid as scaling afterwards."""
    rng = np.random.default_rng(5)
    n = 2000
    x, y = rng.integers(0, SENSOR[1], n), rng.integers(0, SENSOR[0], n)
    t, p = np.sort(rng.integers(0, 10_000, n)), rng.integers(0, 2, n)
    for split in (False, True):
        plain = events_to_voxel(x, y, t, p, 5, SENSOR, (60, 80), split_polarity=split)
        scaled = events_to_voxel(x, y, t, p, 5, SENSOR, (60, 80), split_polarity=split,
                                 scale=0.25)
        np.testing.assert_allclose(scaled, plain * 0.25, atol=1e-6)
        assert np.abs(plain).sum() > 100


def test_clip_equals_clipping_afterwards():
    rng = np.random.default_rng(6)
    n = 5000  # many events on a small sensor: cells well above 1
    x, y = rng.integers(0, 16, n), rng.integers(0, 12, n)
    t, p = np.sort(rng.integers(0, 1000, n)), rng.integers(0, 2, n)
    for split in (False, True):
        plain = events_to_voxel(x, y, t, p, 3, (12, 16), split_polarity=split)
        clipped = events_to_voxel(x, y, t, p, 3, (12, 16), split_polarity=split, clip=2.0)
        assert np.abs(plain).max() > 2.0
        np.testing.assert_array_equal(clipped, np.clip(plain, -2.0, 2.0))
        assert clipped.flags.c_contiguous and clipped.shape == plain.shape
    with pytest.raises(ValueError, match='clip'):
        events_to_voxel(x, y, t, p, 3, (12, 16), clip=0.0)
