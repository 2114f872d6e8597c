"""What a Nav2 semantic costmap layer reads from the perception node, across processes: the
mono8 confidence image next to the label image (same stamp, same size, 0-255 = max softmax) and
the class table, latched (a subscriber that comes late still gets it)."""

from __future__ import annotations

import importlib.util
import json
import threading

import numpy as np
import pytest

from rmseg_ros import conversions
from rmseg_ros.classes import ClassTable

pytestmark = pytest.mark.ros

W, H = 160, 120
HAVE_VISION_MSGS = importlib.util.find_spec('vision_msgs') is not None


class Outputs:
    """labels + confidence by stamp, and the latched class table, from another process."""

    def __init__(self, context):
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image

        self.node = rclpy.create_node('costmap_layer_probe', context=context)
        self.cond = threading.Condition()
        self.images: dict[str, dict[int, object]] = {'labels': {}, 'confidence': {}}
        self.tables: list[str] = []
        self.label_infos: list[object] = []
        qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        for name in self.images:
            self.node.create_subscription(Image, f'/perception/{name}',
                                          lambda m, n=name: self._on(n, m), qos)
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def _on(self, name, msg):
        with self.cond:
            self.images[name][conversions.stamp_ns(msg)] = msg
            self.cond.notify_all()

    def subscribe_class_table(self):
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
        from std_msgs.msg import String

        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)

        def on(msg):
            with self.cond:
                self.tables.append(msg.data)
                self.cond.notify_all()
        self.node.create_subscription(String, '/perception/class_table', on, latched)
        if HAVE_VISION_MSGS:
            from vision_msgs.msg import LabelInfo

            def on_info(msg):
                with self.cond:
                    self.label_infos.append(msg)
                    self.cond.notify_all()
            self.node.create_subscription(LabelInfo, '/perception/label_info', on_info, latched)

    def both(self):
        return sorted(set(self.images['labels']) & set(self.images['confidence']))

    def wait(self, cond, timeout, what):
        with self.cond:
            if not self.cond.wait_for(cond, timeout):
                pytest.fail(f'timed out waiting for {what}: '
                            f'{ {k: len(v) for k, v in self.images.items()} } images, '
                            f'{len(self.tables)} tables')

    def close(self):
        self.executor.shutdown(timeout_sec=1.0)
        self.thread.join(5)
        self.node.destroy_node()


def test_confidence_and_class_table_reach_another_process(tiny_checkpoint, spawn_python,
                                                          rclpy_context):
    outputs = Outputs(rclpy_context)
    try:
        spawn_python(args=['-m', 'rmseg_ros.nodes.perception_node', '--ros-args',
                           '-p', f'checkpoint:={tiny_checkpoint}', '-p', 'device:=cpu',
                           '-p', 'sync.modalities:=rgb'])
        spawn_python(args=['-m', 'rmseg_ros.nodes.synthetic_sensors', '--modalities', 'rgb',
                           '--rates', '10', '--width', str(W), '--height', str(H),
                           '--camera-info'])
        outputs.wait(lambda: len(outputs.both()) >= 3, 120, 'labels with their confidence')
        # the table was published at activation, long before this subscription: latched
        outputs.subscribe_class_table()
        outputs.wait(lambda: outputs.tables and (outputs.label_infos or not HAVE_VISION_MSGS),
                     30, 'the class table')
        with outputs.cond:
            pairs = [(outputs.images['labels'][s], outputs.images['confidence'][s])
                     for s in outputs.both()]
            table = json.loads(outputs.tables[0])
    finally:
        outputs.close()
    classes = ClassTable.load()
    assert [(c['id'], c['name']) for c in table['classes']] == classes.class_map()
    assert table['ignore_index'] == classes.ignore_index
    if HAVE_VISION_MSGS:  # vision_msgs/LabelInfo, as Nav2's semantic layer reads it
        info = outputs.label_infos[0]
        assert [(c.class_id, c.class_name) for c in info.class_map] == classes.class_map()
    k = len(table['classes'])
    for labels_msg, conf_msg in pairs:
        assert labels_msg.header == conf_msg.header
        assert (conf_msg.encoding, labels_msg.encoding) == ('mono8', 'mono8')
        labels = conversions.image_to_numpy(labels_msg)
        conf = conversions.image_to_numpy(conf_msg)
        assert labels.shape == conf.shape == (H, W)
        # every label is a class of the table; confidence is a max softmax of k classes
        assert set(np.unique(labels).tolist()) <= set(range(k))
        assert conf.min() >= int(255 / k) - 1 and conf.max() <= 255
