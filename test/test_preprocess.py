"""Synchronised messages -> model inputs: shapes, normalisation, presence, degraded detection, and
the same tensors from rclpy messages (nodes) and rosbags messages (training)."""

import numpy as np
import pytest
from rosbags.typesys import Stores, get_typestore

from rmseg_ros import conversions
from rmseg_ros.camera import CameraIntrinsics
from rmseg_ros.frontend.preprocess import (
    EventBatch,
    FrontendConfig,
    RawFrame,
    build_model_input,
    frame_from_messages,
)
from rmseg_ros.frontend.sensor_geometry import SensorGeometry
from rmseg_ros.modalities import (
    MODALITIES,
    all_subsets,
    input_channels,
    names_from_presence,
    presence_from_names,
    subset_name,
)
from rmseg_ros.pipeline.config import FEED

CAM = CameraIntrinsics.from_fov(640, 480, 90.0)
# LiDAR frame x forward, y left, z up -> camera optical frame z forward, x right, y down.
T_CAM_LIDAR = np.array([[0, -1, 0, 0], [0, 0, -1, 0], [1, 0, 0, 0], [0, 0, 0, 1]], float)
GEOM = SensorGeometry(CAM, T_CAM_LIDAR)


def _wall_cloud(distance: float = 4.0, n: int = 4000) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    yz = rng.uniform(-2.0, 2.0, size=(n, 2))
    xyz = np.column_stack([np.full(n, distance), yz]).astype(np.float32)
    return xyz, np.full(n, 100.0, np.float32)


def _events(n: int = 5000) -> EventBatch:
    rng = np.random.default_rng(1)
    return EventBatch(rng.integers(0, 640, n), rng.integers(0, 480, n),
                      np.sort(rng.integers(0, 40_000_000, n)), rng.choice([-1, 1], n))


def _full_frame(rgb_value: int = 120) -> RawFrame:
    xyz, intensity = _wall_cloud()
    depth = np.full((480, 640), 2500, np.uint16)
    depth[:, :100] = 0  # invalid stripe
    return RawFrame(stamp_ns=7, camera=CAM,
                    rgb=np.random.default_rng(2).integers(rgb_value - 20, rgb_value + 20,
                                                          (480, 640, 3)).astype(np.uint8),
                    depth=depth, depth_encoding='16UC1', lidar_xyz=xyz,
                    lidar_intensity=intensity, T_cam_lidar=T_CAM_LIDAR, events=_events())


def test_modality_order_and_subsets():
    assert MODALITIES == ('rgb', 'depth', 'lidar', 'event')
    subsets = all_subsets()
    assert len(subsets) == 15 and len(set(subsets)) == 15
    assert subsets[0] == ('rgb',) and subsets[-1] == MODALITIES
    assert subset_name(['lidar', 'rgb']) == 'RL'
    presence = presence_from_names(['event', 'depth'])
    assert presence.tolist() == [False, True, False, True]
    assert names_from_presence(presence) == ('depth', 'event')
    with pytest.raises(ValueError, match='unknown modalities'):
        presence_from_names(['thermal'])


def test_full_frame_tensors_shapes_and_values():
    cfg = FrontendConfig()
    mi = build_model_input(_full_frame(), cfg)
    assert mi.presence.all() and mi.degraded == {}
    channels = input_channels(cfg.event_bins)
    for m in MODALITIES:
        assert mi.tensors[m].shape == (channels[m], 240, 320)
        assert mi.tensors[m].dtype == np.float32
    # depth: 2.5 m / depth_max, validity 0 on the invalid stripe (100 px of 640 -> 50 of 320)
    np.testing.assert_allclose(mi.tensors['depth'][0, :, 60:], 2.5 / cfg.depth_max_m, rtol=1e-6)
    assert not mi.tensors['depth'][1, :, :45].any() and mi.tensors['depth'][1, :, 55:].all()
    # lidar: the wall at 4 m along the optical axis; range normalised by max range
    lidar = mi.tensors['lidar']
    hit = lidar[2] > 0
    assert hit.sum() > 500
    assert np.all(lidar[0][hit] * cfg.lidar_max_range_m >= 4.0 - 1e-4)
    np.testing.assert_allclose(lidar[1][hit], 100.0 / cfg.lidar_intensity_scale)
    # rgb: normalised with the configured mean/std
    rgb_small = mi.overlay_rgb.astype(np.float32) / 255.0
    expected = (rgb_small[..., 0] - cfg.rgb_mean[0]) / cfg.rgb_std[0]
    np.testing.assert_allclose(mi.tensors['rgb'][0], expected, atol=1e-5)
    assert np.abs(mi.tensors['event']).max() <= 1.0


def test_degraded_rgb_and_empty_cloud_are_dropped_by_default_and_fed_on_request():
    frame = _full_frame(rgb_value=20)
    frame.rgb[:] = 3  # under-exposed
    frame.lidar_xyz = np.zeros((0, 3), np.float32)
    frame.lidar_intensity = np.zeros(0, np.float32)
    cfg = FrontendConfig()
    mi = build_model_input(frame, cfg)
    assert set(mi.degraded) == {'rgb', 'lidar'}
    assert 'under-exposed' in mi.degraded['rgb'] and mi.degraded['lidar'] == 'empty cloud'
    assert mi.present == ('depth', 'event')
    cfg.degraded.policy['rgb'] = FEED
    assert build_model_input(frame, cfg).present == ('rgb', 'depth', 'event')


def test_nan_only_depth_is_degraded():
    frame = RawFrame(stamp_ns=1, camera=CAM, depth=np.full((480, 640), np.nan, np.float32),
                     depth_encoding='32FC1')
    mi = build_model_input(frame, FrontendConfig())
    assert 'depth' in mi.degraded and not mi.presence.any()


def test_size_mismatch_is_a_clear_error():
    frame = RawFrame(stamp_ns=1, camera=CAM, depth=np.ones((100, 640), np.float32))
    with pytest.raises(ValueError, match='does not match the camera'):
        build_model_input(frame, FrontendConfig())


def _messages(msg_cls_image=None, msg_cls_cloud=None):
    rng = np.random.default_rng(3)
    bgr = rng.integers(0, 255, (480, 640, 3)).astype(np.uint8)
    depth = np.full((480, 640), 3.0, np.float32)
    xyz, intensity = _wall_cloud()
    cloud = np.zeros(len(xyz), dtype=[('x', 'f4'), ('y', 'f4'), ('z', 'f4'),
                                      ('intensity', 'f4')])
    cloud['x'], cloud['y'], cloud['z'] = xyz.T
    cloud['intensity'] = intensity
    ev = _events()
    # PointField has no 64-bit integer: event times travel as float64 seconds
    events = np.zeros(len(ev.x), dtype=[('x', 'u2'), ('y', 'u2'), ('t', 'f8'), ('p', 'i1')])
    events['x'], events['y'], events['t'], events['p'] = ev.x, ev.y, ev.t_ns * 1e-9, ev.p
    return bgr, {
        'rgb': conversions.numpy_to_image(bgr, 'bgr8', msg_cls=msg_cls_image),
        'depth': conversions.numpy_to_image(depth, '32FC1', msg_cls=msg_cls_image),
        'lidar': conversions.array_to_pointcloud2(cloud, msg_cls=msg_cls_cloud),
        'event': conversions.array_to_pointcloud2(events, msg_cls=msg_cls_cloud),
    }


def test_messages_to_inputs_same_for_rclpy_and_rosbags_messages():
    cfg = FrontendConfig()
    bgr, rclpy_msgs = _messages()
    store = get_typestore(Stores.LATEST)
    _, bag_msgs = _messages(store, store)
    frame = frame_from_messages(5, rclpy_msgs, GEOM)
    np.testing.assert_array_equal(frame.rgb, bgr[..., ::-1])  # bgr8 -> RGB order
    online = build_model_input(frame, cfg)
    offline = build_model_input(frame_from_messages(5, bag_msgs, GEOM), cfg)
    assert online.presence.all() and offline.presence.all()
    for m in MODALITIES:
        np.testing.assert_array_equal(online.tensors[m], offline.tensors[m])


def test_malformed_message_error_names_the_modality():
    _, msgs = _messages()
    msgs['depth'].encoding = 'yuv422'
    with pytest.raises(ValueError, match='depth'):
        build_model_input(frame_from_messages(1, msgs, GEOM), FrontendConfig())
    _, msgs = _messages()
    bad = np.zeros(3, dtype=[('x', 'f4'), ('y', 'f4')])
    msgs['event'] = conversions.array_to_pointcloud2(bad)
    with pytest.raises(ValueError, match=r'event: event cloud lacks fields'):
        frame_from_messages(1, msgs, GEOM)
