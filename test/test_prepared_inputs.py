"""LiDAR / event tensors built on arrival: the same outputs as building them with the set, used
only while message and geometry are unchanged, never altered by the sets that share them."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from rig_messages import set_messages

from rmseg_ros import conversions
from rmseg_ros.camera import CameraIntrinsics
from rmseg_ros.classes import ClassTable
from rmseg_ros.frontend.prepared import PreparedInputCache, prepare_input
from rmseg_ros.frontend.preprocess import FrontendConfig, build_model_input, frame_from_messages
from rmseg_ros.frontend.sensor_geometry import GeometryTracker, SensorGeometry
from rmseg_ros.inference.segmenter import Segmenter
from rmseg_ros.pipeline.config import PerceptionConfig
from rmseg_ros.pipeline.perception import PerceptionPipeline
from rmseg_ros.sync.core import SyncedSet
from rmseg_ros.synthetic import T_CAM_LIDAR_DEFAULT, SyntheticRig

RIG = SyntheticRig(width=320, height=240, lidar_columns=240)
STAMP = 1_700_000_000_000_000_000
GEOM = SensorGeometry(RIG.camera, T_CAM_LIDAR_DEFAULT)


def _messages(t: float = 0.3) -> dict:
    return set_messages(RIG, t, STAMP)


def _set(messages: dict, stamp: int = STAMP) -> SyncedSet:
    return SyncedSet(stamp, messages, dict.fromkeys(messages, stamp), frozenset())


@pytest.fixture
def pipeline(tiny_checkpoint) -> PerceptionPipeline:
    seg = Segmenter.from_checkpoint(tiny_checkpoint, device='cpu')
    return PerceptionPipeline(seg, ClassTable.load(), PerceptionConfig())


@pytest.mark.parametrize('modality', ['lidar', 'event'])
def test_prepared_tensor_is_the_one_the_set_builds(modality):
    cfg = FrontendConfig(height=120, width=160)
    msgs = _messages()
    frame = frame_from_messages(STAMP, msgs, GEOM)
    expected = build_model_input(frame, cfg).tensors[modality]
    got = prepare_input(modality, msgs[modality], GEOM, cfg)
    assert got.tensor.shape == expected.shape and np.abs(expected).sum() > 0
    np.testing.assert_array_equal(got.tensor, expected)
    with pytest.raises(ValueError, match='with its set'):
        prepare_input('rgb', msgs['rgb'], SensorGeometry(RIG.camera), cfg)


def test_pipeline_outputs_equal_with_and_without_prepared_inputs(pipeline, tiny_checkpoint):
    msgs = _messages()
    fresh = PerceptionPipeline(Segmenter.from_checkpoint(tiny_checkpoint, device='cpu'),
                               ClassTable.load(), PerceptionConfig())
    expected = fresh.run(_set(msgs), GEOM)
    assert fresh.prepared.hits == 0 and fresh.prepared.misses == 2
    for m in ('lidar', 'event'):
        assert pipeline.prepare(m, msgs[m], GEOM)
    assert not pipeline.prepare('rgb', msgs['rgb'], GEOM)
    got = pipeline.run(_set(msgs), GEOM)
    assert pipeline.prepared.hits == 2 and pipeline.prepared.misses == 0
    assert got.used == expected.used == ('rgb', 'depth', 'lidar', 'event')
    np.testing.assert_array_equal(got.labels, expected.labels)
    np.testing.assert_array_equal(got.point_labels, expected.point_labels)
    np.testing.assert_array_equal(got.point_xyz, expected.point_xyz)


def test_one_scan_shared_by_several_camera_frames_is_not_altered(pipeline):
    msgs = _messages()
    assert pipeline.prepare('lidar', msgs['lidar'], GEOM)
    before = pipeline.prepared.take(msgs, GEOM)['lidar']
    snapshot = before.tensor.copy()
    first = pipeline.run(_set(msgs), GEOM)
    later = dict(msgs, rgb=_messages(0.35)['rgb'])  # the next camera frame, the same scan
    pipeline.run(_set(later, STAMP + 33_000_000), GEOM)
    again = pipeline.run(_set(msgs), GEOM)
    np.testing.assert_array_equal(before.tensor, snapshot)
    np.testing.assert_array_equal(again.labels, first.labels)


def test_changed_geometry_or_another_message_is_built_with_the_set(pipeline):
    msgs = _messages()
    rig = GeometryTracker()
    assert rig.update(T_cam_lidar=T_CAM_LIDAR_DEFAULT) is None  # no camera yet
    geom = rig.update(camera=RIG.camera)
    assert pipeline.prepare('lidar', msgs['lidar'], geom)
    moved_T = T_CAM_LIDAR_DEFAULT.copy()
    moved_T[0, 3] += 0.5  # a /tf_static update after the scan arrived
    moved = rig.update(T_cam_lidar=moved_T)
    assert moved.version != geom.version
    cache = pipeline.prepared
    assert 'lidar' not in cache.take(msgs, moved)
    res = pipeline.run(_set(msgs), moved)
    expected = build_model_input(frame_from_messages(STAMP, msgs, moved),
                                 pipeline.frontend).tensors['lidar']
    rebuilt = prepare_input('lidar', msgs['lidar'], moved, pipeline.frontend)
    np.testing.assert_array_equal(rebuilt.tensor, expected)
    assert 'lidar' in res.used
    back = rig.update(T_cam_lidar=T_CAM_LIDAR_DEFAULT)
    assert back.version not in (geom.version, moved.version)  # a change, even back again
    assert pipeline.prepare('lidar', msgs['lidar'], back)
    # the same content in another message object is not taken for it
    copy = conversions.array_to_pointcloud2(conversions.pointcloud2_to_array(msgs['lidar']))
    assert 'lidar' not in cache.take(dict(msgs, lidar=copy), back)
    # a new CameraInfo with the same values keeps the version; other intrinsics do not
    same = rig.update(camera=dataclasses.replace(RIG.camera, K=RIG.camera.K.copy()))
    assert same is back and 'lidar' in cache.take(msgs, same)
    other = CameraIntrinsics.from_fov(320, 240, 90.0)
    assert not np.allclose(other.K, RIG.camera.K)
    assert 'lidar' not in cache.take(msgs, rig.update(camera=other))
    # the event sensor size is part of the geometry too
    assert rig.update(event_sensor_hw=(480, 640)).version != rig.update(event_sensor_hw=None
                                                                         ).version


def test_cache_keeps_the_last_entries_and_skips_what_it_cannot_build():
    cache = PreparedInputCache(FrontendConfig(height=60, width=80), keep=2)
    scans = [_messages(t)['lidar'] for t in (0.1, 0.2, 0.3)]
    for scan in scans:
        assert cache.put('lidar', scan, GEOM)
    got = [('lidar' in cache.take({'lidar': s}, GEOM)) for s in scans]
    assert got == [False, True, True]  # the oldest was evicted
    assert not cache.put('lidar', scans[0], None)  # no CameraInfo
    assert not cache.put('lidar', scans[0], SensorGeometry(RIG.camera))  # no extrinsic
    bad = conversions.array_to_pointcloud2(np.zeros(3, dtype=[('a', '<f4')]))
    assert not cache.put('lidar', bad, GEOM)  # malformed
