"""The perception node's ROS-free core: outputs, robot mask, malformed input, latest-only worker."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from rig_messages import set_messages

from rmseg_ros import conversions
from rmseg_ros.classes import ClassTable
from rmseg_ros.frontend.preprocess import build_model_input, frame_from_messages
from rmseg_ros.frontend.sensor_geometry import SensorGeometry
from rmseg_ros.inference.segmenter import Segmenter
from rmseg_ros.pipeline import visualization
from rmseg_ros.pipeline.config import InputCheckConfig, OutputConfig, PerceptionConfig
from rmseg_ros.pipeline.perception import NoUsableInputError, PerceptionPipeline, check_stamp
from rmseg_ros.pipeline.worker import Job, LatestOnlyWorker
from rmseg_ros.sync.core import SyncedSet
from rmseg_ros.synthetic import T_CAM_LIDAR_DEFAULT, SyntheticRig, cloud_array

RIG = SyntheticRig(width=320, height=240, lidar_columns=240)
GEOM = SensorGeometry(RIG.camera, T_CAM_LIDAR_DEFAULT)
STAMP = 1_700_000_000_000_000_000


def _messages(t: float = 0.3) -> dict:
    return set_messages(RIG, t, STAMP)


def _set(messages: dict, missing=()) -> SyncedSet:
    return SyncedSet(STAMP, messages, dict.fromkeys(messages, STAMP), frozenset(missing))


@pytest.fixture(scope='module')
def pipeline(tiny_checkpoint) -> PerceptionPipeline:
    seg = Segmenter.from_checkpoint(tiny_checkpoint, device='cpu')
    return PerceptionPipeline(seg, ClassTable.load(), PerceptionConfig())


def test_full_set_gives_every_output_at_camera_size(pipeline):
    res = pipeline.run(_set(_messages()), GEOM)
    assert res.used == ('rgb', 'depth', 'lidar', 'event')
    assert res.labels.shape == (240, 320) and res.labels.dtype == np.uint8
    assert res.labels.max() < len(pipeline.classes.names)
    assert np.array_equal(res.color_mask, pipeline.palette[res.labels])
    assert res.overlay.shape == (240, 320, 3)
    n = len(RIG.lidar(0.3)[0])
    assert res.point_xyz.shape == (n, 3) and res.point_labels.shape == (n,)
    in_view = res.point_labels != 255
    assert in_view.sum() > n // 4  # the rig's LiDAR looks where the camera looks
    assert res.errors == {} and res.timings_ms['forward_ms'] > 0


def test_model_size_outputs_and_only_wanted_outputs(pipeline, tiny_checkpoint):
    seg = Segmenter.from_checkpoint(tiny_checkpoint, device='cpu')
    small = PerceptionPipeline(seg, ClassTable.load(),
                               PerceptionConfig(output=OutputConfig(size='model')))
    res = small.run(_set(_messages()), GEOM, want=frozenset({'labels'}))
    assert res.labels.shape == (60, 80)
    assert res.color_mask is None and res.overlay is None and res.point_labels is None


def test_robot_mask_relabels_pixels_and_marks_points(pipeline):
    mask = np.zeros((120, 160), np.uint8)  # half resolution: resized to the labels
    mask[:, :80] = 255
    res = pipeline.run(_set(_messages()), GEOM, robot_mask=mask)
    robot = pipeline.classes.index('robot')
    assert (res.labels[:, :160] == robot).all()
    assert res.robot_pixels == 240 * 160
    marked = res.point_robot == 1
    assert marked.any() and (res.point_labels[marked] == robot).all()
    # points on the right half of the image are not on the robot
    assert (res.point_robot == 0).sum() > 0


@pytest.mark.parametrize('modality, broken, where', [
    ('rgb', lambda: conversions.numpy_to_image(np.zeros((240, 320), np.float32), '32FC1'),
     'errors'),
    ('depth', lambda: conversions.numpy_to_image(np.ones((100, 100), np.float32), '32FC1'),
     'errors'),
    ('depth', lambda: conversions.numpy_to_image(np.full((240, 320), np.nan, np.float32),
                                                 '32FC1'), 'degraded'),
    ('lidar', lambda: conversions.array_to_pointcloud2(cloud_array(
        np.zeros((0, 3), np.float32), np.zeros(0, np.float32))), 'degraded'),
    ('event', lambda: conversions.array_to_pointcloud2(cloud_array(
        np.zeros((5, 3), np.float32), np.zeros(5, np.float32))), 'errors'),
])
def test_a_malformed_modality_costs_only_itself(pipeline, modality, broken, where):
    messages = _messages()
    messages[modality] = broken()
    res = pipeline.run(_set(messages), GEOM)
    assert modality in getattr(res, where)
    assert modality not in res.used
    assert set(res.used) == {'rgb', 'depth', 'lidar', 'event'} - {modality}


def test_size_mismatch_in_the_image_data_is_an_error(pipeline):
    msg = conversions.numpy_to_image(RIG.rgb(0.3), 'rgb8')
    msg.height = 241  # header says more rows than the data holds
    res = pipeline.run(_set({**_messages(), 'rgb': msg}), GEOM)
    assert 'rgb' in res.errors and 'rgb' not in res.used


def test_nothing_usable_raises(pipeline):
    nan = conversions.numpy_to_image(np.full((240, 320), np.nan, np.float32), '32FC1')
    with pytest.raises(NoUsableInputError, match='depth'):
        pipeline.run(_set({'depth': nan}, missing=('rgb', 'lidar', 'event')), GEOM)


def test_overlay_without_rgb_is_drawn_on_depth():
    messages = _messages()
    frame = frame_from_messages(STAMP, {'depth': messages['depth']}, SensorGeometry(RIG.camera))
    from rmseg_ros.frontend.preprocess import FrontendConfig

    mi = build_model_input(frame, FrontendConfig(height=60, width=80))
    base = visualization.base_image(mi)
    assert base.shape == (60, 80, 3)
    x0, y0, x1, _ = RIG._box_rect(0.3)
    box = base[int(y0 / 4) + 2, int((x0 + x1) / 8)]
    wall = base[5, 5]
    assert not np.array_equal(box, wall)  # nearer box and farther wall get different colours


def test_checkpoint_for_other_classes_is_refused(tmp_path):
    from conftest import write_tiny_checkpoint

    other = write_tiny_checkpoint(tmp_path / 'other.safetensors', classes=['a', 'b', 'c'])
    seg = Segmenter.from_checkpoint(other, device='cpu')
    with pytest.raises(ValueError, match='disagree'):
        PerceptionPipeline(seg, ClassTable.load(), PerceptionConfig())


def test_stamp_checks():
    cfg = InputCheckConfig(max_future_s=2.0, max_age_s=5.0)
    now = STAMP
    assert check_stamp(now, now, cfg) is None
    assert 'zero' in check_stamp(0, now, cfg)
    assert 'future' in check_stamp(now + 3 * 10**9, now, cfg)
    assert check_stamp(now + 1 * 10**9, now, cfg) is None
    assert 'past' in check_stamp(now - 6 * 10**9, now, cfg)
    assert check_stamp(now - 6 * 10**9, now, InputCheckConfig(max_age_s=0)) is None


def test_latest_only_worker_skips_stale_items_and_survives_errors():
    seen: list[int] = []
    errors: list[BaseException] = []
    gate, busy = threading.Event(), threading.Event()

    def process(job: Job[int]) -> None:
        busy.set()
        assert gate.wait(5)
        if job.item == 99:
            raise RuntimeError('boom')
        seen.append(job.item)

    worker = LatestOnlyWorker(process, lambda exc, job: errors.append(exc))
    worker.submit(0)
    assert busy.wait(5)  # the worker holds item 0, blocked on the gate
    for i in range(1, 6):
        worker.submit(i)
    gate.set()
    assert worker.wait_idle(5)
    assert seen == [0, 5]  # 1..4 were replaced while waiting
    assert worker.skipped == 4 and worker.submitted == 6
    worker.submit(99)
    assert worker.wait_idle(5)
    worker.submit(7)
    assert worker.wait_idle(5)
    assert seen[-1] == 7 and [str(e) for e in errors] == ['boom']
    assert worker.processed == 3 and worker.failed == 1 and worker.alive
    worker.stop()


def test_confidence_image_matches_the_labels_and_costs_nothing_unwanted(pipeline):
    res = pipeline.run(_set(_messages()), GEOM)
    conf = res.confidence_image
    assert conf.shape == res.labels.shape == (240, 320) and conf.dtype == np.uint8
    # 0..255 = max softmax probability: never below 1/K for K classes
    k = len(pipeline.classes.names)
    assert conf.min() >= int(255 / k) - 1
    assert np.array_equal(conf, visualization.confidence_image(res.confidence, (240, 320)))
    mask = np.zeros((240, 320), np.uint8)
    mask[:, :100] = 1  # the robot mask decides those labels: full confidence there
    masked = pipeline.run(_set(_messages()), GEOM, robot_mask=mask)
    assert (masked.confidence_image[:, :100] == 255).all()
    unwanted = pipeline.run(_set(_messages()), GEOM,
                            want=frozenset({'labels'}))
    assert unwanted.confidence is None and unwanted.confidence_image is None
    assert np.array_equal(unwanted.labels, res.labels)


def test_confidence_image_scale_and_size():
    conf = np.array([[0.0, 0.5], [1.0, 1.2]], np.float32)
    assert visualization.confidence_image(conf, (2, 2)).tolist() == [[0, 128], [255, 255]]
    assert visualization.confidence_image(conf, (4, 6)).shape == (4, 6)


def test_class_table_for_consumers():
    import json

    table = ClassTable.load()
    assert table.class_map() == list(enumerate(table.names))
    data = json.loads(table.to_json(0.4))
    assert [(c['id'], c['name']) for c in data['classes']] == table.class_map()
    assert data['classes'][3]['color'] == table.colors[3].tolist()
    assert data['ignore_index'] == 255 and data['threshold'] == 0.4
