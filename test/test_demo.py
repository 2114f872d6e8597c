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
from rmseg_ros.demo import legend

pytestmark = pytest.mark.ros

IMAGES = ('labels', 'color_mask', 'overlay', 'confidence')


def test_demo_writes_its_outputs_as_a_bag_on_the_input_clock(tiny_checkpoint, tmp_path,
                                                             spawn_python):
    from rmseg_ros.config import config_path

    # 3 s of frames: the recorder may join after the first ones (DDS discovery)
    stamps = write_rig_bag(tmp_path / 'demo' / 'scene', frames=30, lidar=True)
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

    montage = cv2.imread(str(out / 'montage.png'))
    strip = legend(ClassTable.load(), montage.shape[1])
    assert np.array_equal(montage[-strip.shape[0]:], strip)
    assert tuple(strip[10, 10]) == tuple(int(v) for v in ClassTable.load().colors[0][::-1])
