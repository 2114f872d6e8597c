"""One bad message must never stop perception (issue 21): the ROS-free per-message path rejects
malformed input with a counted reason, never raises out of an on-arrival step, validates sizes
before allocating, and a broken modality costs only itself."""

from __future__ import annotations

import numpy as np
import pytest
from rig_messages import set_messages
from sensor_msgs.msg import CameraInfo, Image

from rmseg_ros import conversions
from rmseg_ros.camera import CameraIntrinsics, SizeLimits, validate_intrinsics
from rmseg_ros.conversions import CameraInfoGate
from rmseg_ros.frontend.events import events_to_voxel
from rmseg_ros.frontend.prepared import PreparedInputCache
from rmseg_ros.frontend.preprocess import (
    FrontendConfig,
    build_model_input,
    event_times_ns,
    frame_from_messages,
)
from rmseg_ros.frontend.sensor_geometry import SensorGeometry
from rmseg_ros.synthetic import T_CAM_LIDAR_DEFAULT, SyntheticRig

RIG = SyntheticRig(width=160, height=120, lidar_columns=120)
GEOM = SensorGeometry(RIG.camera, T_CAM_LIDAR_DEFAULT)
STAMP = 1_700_000_000_000_000_000
CFG = FrontendConfig(height=60, width=80)


def _event_cloud(t: float | int, dtype: str = '<f8'):
    arr = np.zeros(1, dtype=[('x', '<u2'), ('y', '<u2'), ('t', dtype), ('p', 'i1')])
    arr['x'], arr['y'], arr['t'], arr['p'] = 3, 4, t, 1
    return conversions.array_to_pointcloud2(arr)


def _camera_info(width: int = 160, height: int = 120, **fields) -> CameraInfo:
    cam = RIG.camera
    msg = CameraInfo(width=width, height=height, distortion_model='plumb_bob')
    msg.k = cam.K.reshape(-1).tolist()
    msg.d = [0.0] * 5
    msg.r = np.eye(3).reshape(-1).tolist()
    msg.p = np.hstack([cam.K, np.zeros((3, 1))]).reshape(-1).tolist()
    for name, value in fields.items():
        setattr(msg, name, value)
    return msg


# ---------------------------------------------------------------- item 1: event t

@pytest.mark.parametrize('t', [float('nan'), float('inf'), -float('inf'), 9.3e9, -9.3e9])
def test_event_time_out_of_range_is_rejected_not_raised(t):
    msg = _event_cloud(t)
    cache = PreparedInputCache(CFG)
    assert cache.put('event', msg, SensorGeometry(RIG.camera)) is False
    assert cache.failures[('event', 'malformed')] == 1
    errors: dict[str, str] = {}
    frame = frame_from_messages(STAMP, {'event': msg}, SensorGeometry(RIG.camera), errors=errors)
    assert frame.events is None and 'time' in errors['event']


@pytest.mark.parametrize('t', [np.iinfo(np.int64).min, np.iinfo(np.int64).max])
def test_event_integer_time_at_int64_limits_is_rejected(t):
    # PointField has no 64-bit integers, but decoded EventPackets and bags hand int64 times
    with pytest.raises(ValueError, match='time'):
        event_times_ns(np.array([0, t], dtype=np.int64))
    assert event_times_ns(np.array([0, 5], dtype=np.uint32)).tolist() == [0, 5]


def test_events_to_voxel_refuses_non_finite_times_with_value_error():
    with pytest.raises(ValueError, match='finite'):
        events_to_voxel([1], [1], [float('nan')], [1], 3, (4, 4))
    with pytest.raises(ValueError, match='int64'):
        events_to_voxel(np.array([1]), np.array([1]), np.array([5], np.int64), np.array([1]),
                        3, (4, 4), t_range=(-2**63 - 10, 5))


def test_prepared_put_counts_any_exception_per_modality_and_kind():
    class Exploding:  # a message whose fields raise something other than ValueError
        def __getattr__(self, name):
            raise RuntimeError(f'boom: {name}')

    cache = PreparedInputCache(CFG)
    assert cache.put('event', Exploding(), SensorGeometry(RIG.camera)) is False
    assert cache.put('lidar', Exploding(), GEOM) is False
    assert cache.failures == {('event', 'RuntimeError'): 1, ('lidar', 'RuntimeError'): 1}


# ---------------------------------------------------------------- items 2-4: CameraInfo

def test_scaled_camera_of_zero_size_raises_value_error():
    cam = CameraIntrinsics(width=0, height=0, K=np.eye(3))
    with pytest.raises(ValueError, match='size'):
        cam.scaled(80, 60)


@pytest.mark.parametrize(('fields', 'why'), [
    ({'width': 0}, 'width'),
    ({'height': 0}, 'height'),
    ({'width': 4294967295, 'height': 4294967295}, 'width'),
    ({'width': 100000, 'height': 100000}, 'width'),
    ({'width': 8000, 'height': 6000}, 'pixels'),
    ({'k': [0.0] * 9}, 'fx'),
    ({'k': [float('nan')] + [0.0] * 8}, 'K'),
    ({'d': [float('nan')] * 5}, 'D'),
    ({'d': [0.1] * 10000}, 'D'),
    ({'d': [0.1] * 3}, 'D'),
    ({'r': [float('nan')] * 9}, 'R'),
    ({'p': [float('inf')] * 12}, 'P'),
    ({'distortion_model': 'mystery', 'd': [0.1] * 5}, 'distortion'),
])
def test_invalid_camera_info_is_rejected_and_the_last_valid_one_kept(fields, why):
    gate = CameraInfoGate(SizeLimits())
    assert gate.update(_camera_info()) is None
    good = gate.camera
    reason = gate.update(_camera_info(**fields))
    assert reason is not None and why in reason
    assert gate.camera is good and gate.rejected == 1 and gate.accepted == 1


@pytest.mark.parametrize('fields', [
    {},
    {'d': [], 'distortion_model': ''},
    {'d': [0.0] * 8, 'distortion_model': 'rational_polynomial'},
    {'d': [0.01, 0.0, 0.0, 0.0], 'distortion_model': 'equidistant'},
    {'p': [0.0] * 12, 'r': [0.0] * 9},  # not provided: the conversion's defaults
    {'width': 3840, 'height': 2160},
])
def test_valid_camera_infos_are_accepted(fields):
    gate = CameraInfoGate(SizeLimits())
    assert gate.update(_camera_info(**fields)) is None
    assert gate.camera is not None and gate.rejected == 0


def test_size_limits_bound_the_event_sensor_and_images():
    limits = SizeLimits(max_side=1000, max_pixels=10_000)
    with pytest.raises(ValueError, match='event sensor'):
        limits.check('event sensor', 4294967295, 4294967295)
    limits.check('image', 100, 100)
    with pytest.raises(ValueError, match='pixels'):
        limits.check('image', 101, 100)
    with pytest.raises(ValueError, match='positive'):
        limits.check('image', 0, 10)


def test_validate_intrinsics_directly():
    validate_intrinsics(RIG.camera, SizeLimits())
    bad = CameraIntrinsics(width=160, height=120, K=np.diag([-1.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match='fx'):
        validate_intrinsics(bad, SizeLimits())


# ---------------------------------------------------------------- item 5: empty images

@pytest.mark.parametrize('modality', ['rgb', 'depth'])
def test_empty_image_costs_only_its_modality(modality):
    msgs = set_messages(RIG, 0.3, STAMP)
    enc = {'rgb': 'rgb8', 'depth': '32FC1'}[modality]
    msgs[modality] = Image(height=0, width=0, encoding=enc, step=0)
    errors: dict[str, str] = {}
    frame = frame_from_messages(STAMP, msgs, GEOM, errors=errors)
    out = build_model_input(frame, CFG, errors=errors)
    assert 'empty' in errors[modality]
    others = {'rgb', 'depth', 'lidar', 'event'} - {modality}
    assert others <= set(out.tensors)


def test_a_step_raising_anything_costs_only_its_modality(monkeypatch):
    import cv2

    from rmseg_ros.frontend import preprocess

    msgs = set_messages(RIG, 0.3, STAMP)
    frame = frame_from_messages(STAMP, msgs, GEOM)

    def broken(frame, cfg):
        raise cv2.error('resize assertion')

    monkeypatch.setattr(preprocess, '_STEPS', tuple(
        (m, present, broken if m == 'depth' else step)
        for m, present, step in preprocess._STEPS))
    errors: dict[str, str] = {}
    out = build_model_input(frame, CFG, errors=errors)
    assert 'resize assertion' in errors['depth'] and 'rgb' in out.tensors


# ---------------------------------------------------------------- item 13: Bayer images

_RGB = (200, 100, 50)


def _bayer(pattern: str, bits: int = 8) -> Image:
    """An 8 x 6 mosaic of one colour, tiled 2 x 2 as `pattern` says (e.g. 'rggb': R at (0, 0),
    G at (0, 1) and (1, 0), B at (1, 1)): debayered, every pixel must be that colour."""
    value = dict(zip('rgb', _RGB, strict=True))
    tile = np.array([[value[pattern[0]], value[pattern[1]]],
                     [value[pattern[2]], value[pattern[3]]]])
    scale = 1 if bits == 8 else 257
    mosaic = (np.tile(tile, (3, 4)) * scale).astype(np.uint8 if bits == 8 else np.uint16)
    return conversions.numpy_to_image(mosaic, f'bayer_{pattern}{bits}')


@pytest.mark.parametrize('bits', [8, 16])
@pytest.mark.parametrize('pattern', ['rggb', 'bggr', 'gbrg', 'grbg'])
def test_bayer_images_are_debayered_to_rgb(pattern, bits):
    rgb = conversions.image_to_rgb(_bayer(pattern, bits))
    assert rgb.shape == (6, 8, 3) and rgb.dtype == np.uint8 and rgb.flags.c_contiguous
    # the interior (borders are extrapolated by OpenCV) is exactly the tiled colour
    np.testing.assert_array_equal(rgb[2:-2, 2:-2], np.broadcast_to(_RGB, (2, 4, 3)))


# ---------------------------------------------------------------- item 7: optional modalities

def test_a_stopped_optional_modality_is_never_reported_as_blocking_output():
    from rmseg_ros.sync.core import ModalitySynchronizer, SyncConfig

    sync = ModalitySynchronizer(SyncConfig(
        modalities=('rgb', 'lidar'), pivot='rgb', required=('rgb',), timeouts={'lidar': 0.5}))
    ms = 1_000_000
    t0 = STAMP
    for k in range(20):  # LiDAR at 10 Hz, camera at 30 Hz, then LiDAR stops at 0.5 s
        for i in range(3):
            stamp = t0 + (k * 100 + i * 33) * ms
            if k < 5 and i == 0:
                sync.add('lidar', stamp, 'scan')
            sync.add('rgb', stamp, 'frame')
            why = sync.blocked_reason
            assert why is None or 'lidar' not in why, (k, i, why)
    assert sync.states()['lidar'].state == 'stale'
    assert sync.sets_emitted >= 50  # output went on without the LiDAR
    # a required modality that stops is still named
    strict = ModalitySynchronizer(SyncConfig(modalities=('rgb', 'lidar'), pivot='rgb',
                                             required=('rgb', 'lidar')))
    for k in range(12):
        strict.add('rgb', t0 + k * 33 * ms, 'frame')
    assert "'lidar'" in strict.blocked_reason
