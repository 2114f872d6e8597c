"""`make demo`'s outputs, end to end on a small recording: the demo replays it through
rmseg-bringup and writes every output as a rosbag2 mcap, read back here with rosbags (each
output topic present, stamps those of the input frames), and a montage with a class legend."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import yaml
from rig_bag import write_rig_bag
from rosbags.highlevel import AnyReader

from rmseg_ros.classes import ClassTable
from rmseg_ros.demo import failure_stretches, legend, score_by_stretch, score_labels

IMAGES = ('labels', 'color_mask', 'overlay', 'confidence')


def test_score_labels_matches_frames_by_stamp_and_counts_where_pixels_went():
    names = ['floor', 'wall', 'mug']
    truth = {10: np.array([[0, 0, 2, 2], [1, 1, 2, 255]], np.uint8),
             20: np.full((2, 4), 1, np.uint8)}
    pred = {10: np.array([[0, 1, 2, 0], [1, 1, 2, 0]], np.uint8),  # one mug pixel -> floor
            30: np.zeros((2, 4), np.uint8)}  # no truth at this stamp: not scored
    s = score_labels(pred, truth, names)
    assert s['frames'] == 1
    # floor: tp 1, truth 2, predicted 2 (the 255 pixel is ignored) -> 1 / 3
    assert s['class_iou'] == {'floor': 33.33, 'wall': pytest.approx(66.67), 'mug': 66.67}
    assert s['predicted_as_pct']['mug'] == {'floor': 33.3, 'mug': 66.7}
    assert s['miou'] == pytest.approx((33.33 + 66.67 + 66.67) / 3, abs=0.01)
    # a prediction at half the size is resized (nearest) to the truth's
    half = {20: np.full((1, 2), 1, np.uint8)}
    assert score_labels(half, truth, names)['class_iou'] == {'wall': 100.0}
    assert score_labels(pred, {99: truth[10]}, names) is None


def test_demo_scores_each_injected_failure_stretch_apart_from_the_rest(tmp_path):
    bag = tmp_path / 'demo' / 'test' / 'scene_000007'
    bag.mkdir(parents=True)
    (tmp_path / 'demo' / 'manifest.json').write_text(json.dumps({'scenes': [
        {'path': 'elsewhere/scene_000003', 'frames': 6, 'failures': [
            {'name': 'motion_blur', 'frames': [0, 2]}]},
        {'path': 'data/demo/test/scene_000007', 'frames': 6, 'failures': [
            {'name': 'under_exposure', 'frames': [2, 4]},
            {'name': 'drop', 'frames': [0, 6]}]}]}))  # gaps anywhere: no stretch
    stretches = failure_stretches(bag)
    assert stretches == {'under_exposure': (2, 4)}
    assert failure_stretches(tmp_path) == {}  # no manifest above it
    names = ['floor', 'mug']
    truth = {100 + k: np.ones((1, 2), np.uint8) for k in range(6)}  # frame k at stamp 100 + k
    pred = {s: (np.zeros if s in (102, 103) else np.ones)((1, 2), np.uint8) for s in truth}
    parts = score_by_stretch(pred, truth, names, stretches)
    assert parts['under_exposure']['frames'] == 2  # stop is exclusive: frames 2 and 3
    assert parts['under_exposure']['class_iou'] == {'mug': 0.0}
    assert parts['other frames']['frames'] == 4
    assert parts['other frames']['class_iou'] == {'mug': 100.0}


@pytest.mark.ros
def test_demo_writes_its_outputs_as_a_bag_on_the_input_clock(tiny_checkpoint, tmp_path,
                                                             spawn_python):
    from rmseg_ros.config import config_path

    # 3 s of frames: the recorder may join after the first ones (DDS discovery)
    stamps = write_rig_bag(tmp_path / 'demo' / 'scene', frames=30, lidar=True, labels=True)
    config = yaml.safe_load(config_path('perception.yaml').read_text())
    config['sync'].update(modalities=['rgb', 'depth', 'lidar'], pivot_fallback=[])
    (tmp_path / 'perception.yaml').write_text(yaml.safe_dump(config))
    out = tmp_path / 'out'
    proc = spawn_python(args=['-m', 'rmseg_ros.demo', '--bag', str(tmp_path / 'demo'),
                              '--checkpoint', str(tiny_checkpoint), '--out', str(out),
                              '--rate', '1.0', '--config', str(tmp_path / 'perception.yaml')])
    stdout, stderr = proc.communicate(timeout=240)
    assert proc.returncode == 0, (stdout + stderr)[-4000:]

    by_topic: dict[str, list] = {}
    with AnyReader([out / 'bag']) as reader:
        assert reader.connections[0].msgdef.data  # definitions stored: Foxglove decodes them
        for conn, log_ns, raw in reader.messages():
            by_topic.setdefault(conn.topic, []).append((log_ns, reader.deserialize(
                raw, conn.msgtype)))
    expected = {f'/perception/{n}' for n in (*IMAGES, 'labeled_points', 'class_table')}
    assert expected | {'/diagnostics'} <= set(by_topic), sorted(by_topic)
    frames = {}
    for name in (*IMAGES, 'labeled_points'):
        msgs = by_topic[f'/perception/{name}']
        got = [m.header.stamp.sec * 10**9 + m.header.stamp.nanosec for _, m in msgs]
        assert set(got) <= set(stamps), name  # the input frames' stamps, not the node's clock
        assert [log for log, _ in msgs] == got  # the bag runs on the input's clock
        frames[name] = got
    assert all(frames[n] == frames['labels'] for n in IMAGES)  # one set, every output
    labels = by_topic['/perception/labels'][0][1]
    confidence = by_topic['/perception/confidence'][0][1]
    assert (labels.width, labels.height) == (confidence.width, confidence.height) == (160, 120)
    table = json.loads(by_topic['/perception/class_table'][0][1].data)
    assert [c['name'] for c in table['classes']] == list(ClassTable.load().names)
    assert min(log for log, _ in by_topic['/diagnostics']) >= min(stamps)

    # every published label image scored against the recording's truth of the same stamp
    scored = json.loads((out / 'summary.json').read_text())['against_labels']
    assert scored['frames'] == len(frames['labels'])
    assert set(scored['class_iou']) == {'wall', 'box'}  # the rig's two classes
    assert f'({scored["frames"]} frames): mIoU' in stdout

    montage = cv2.imread(str(out / 'montage.png'))
    strip = legend(ClassTable.load(), montage.shape[1])
    assert np.array_equal(montage[-strip.shape[0]:], strip)
    assert tuple(strip[10, 10]) == tuple(int(v) for v in ClassTable.load().colors[0][::-1])
