"""`demo_recorder`: writes what the perception graph publishes to a folder, for `make demo`.

Every output (labels, color_mask, overlay, confidence, labeled_points, /diagnostics and the
latched class table) goes, as received, into a rosbag2 mcap (<out>/bag) that Foxglove opens and
`ros2 bag play` / bag_replay_node replays into rviz2. Its log times are the outputs' header
stamps, so the bag runs on the input recording's clock; diagnostics and the class table (stamped
by the node's clock, or not at all) are logged at the newest output stamp. Besides: overlays
become PNGs (overlay/<index>_<stamp>.png), every output message a line in outputs.jsonl (topic,
stamp, arrival time) and every perception diagnostics status a line in diagnostics.jsonl;
`rmseg_ros.demo` turns these into the video, the montage, the timeline and summary.json.

Run:  python -m rmseg_ros.nodes.demo_recorder --out demo_output [--node /perception]
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from rclpy.serialization import deserialize_message
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore
from sensor_msgs.msg import Image, PointCloud2
from std_msgs.msg import String

from rmseg_ros import conversions
from rmseg_ros.bag_qos import LATCHED_QOS
from rmseg_ros.nodes.common import run_node, split_argv

# output -> (message class, ROS type name); topics are <node>/<output>
OUTPUTS = {'labels': (Image, 'sensor_msgs/msg/Image'),
           'color_mask': (Image, 'sensor_msgs/msg/Image'),
           'overlay': (Image, 'sensor_msgs/msg/Image'),
           'confidence': (Image, 'sensor_msgs/msg/Image'),
           'labeled_points': (PointCloud2, 'sensor_msgs/msg/PointCloud2')}


def header_stamp_ns(cdr: bytes) -> int:
    """The header stamp of a serialised message that starts with std_msgs/Header (CDR: 4-byte
    encapsulation, then int32 sec and uint32 nanosec, in the byte order it names)."""
    order = '<' if cdr[1] & 1 else '>'
    sec, nanosec = struct.unpack_from(f'{order}iI', cdr, 4)
    return sec * 1_000_000_000 + nanosec


class OutputBag:
    """The outputs as a rosbag2 mcap, written from serialised messages as received."""

    def __init__(self, path: Path) -> None:
        self.store = get_typestore(Stores.ROS2_KILTED)
        self.writer = Writer(path, version=9, storage_plugin=StoragePlugin.MCAP)
        self.writer.open()
        self.conns: dict[str, Any] = {}
        self.newest_ns = 0
        self.pending: list[tuple[str, str, bytes, bool]] = []  # until a stamp is known

    def write(self, topic: str, msgtype: str, cdr: bytes, stamped: bool,
              latched: bool = False) -> None:
        if stamped:
            self.newest_ns = max(self.newest_ns, header_stamp_ns(cdr))
        if not self.newest_ns:
            self.pending.append((topic, msgtype, cdr, latched))
            return
        for item in self.pending:
            self._write(*item, self.newest_ns)
        self.pending = []
        self._write(topic, msgtype, cdr, latched,
                    header_stamp_ns(cdr) if stamped else self.newest_ns)

    def _write(self, topic: str, msgtype: str, cdr: bytes, latched: bool, log_ns: int) -> None:
        conn = self.conns.get(topic)
        if conn is None:
            conn = self.conns[topic] = self.writer.add_connection(
                topic, msgtype, typestore=self.store,
                offered_qos_profiles=[LATCHED_QOS] if latched else [])
        self.writer.write(conn, log_ns, cdr)

    def close(self) -> None:
        for item in self.pending:  # no output ever came: log them at the wall time
            self._write(*item, self.newest_ns or time.time_ns())
        self.writer.close()


class DemoRecorder(Node):
    def __init__(self, out: Path, node: str, context=None) -> None:
        super().__init__('demo_recorder', context=context)
        self.out = out
        (out / 'overlay').mkdir(parents=True, exist_ok=True)
        self.outputs = open(out / 'outputs.jsonl', 'w', encoding='utf-8', buffering=1)
        self.diags = open(out / 'diagnostics.jsonl', 'w', encoding='utf-8', buffering=1)
        self.bag = OutputBag(out / 'bag')
        self.count = 0
        self.ticks = 0
        qos = QoSProfile(depth=20, reliability=ReliabilityPolicy.RELIABLE)
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        node = node.rstrip('/')
        self.node = node.lstrip('/')
        for name, (cls, msgtype) in OUTPUTS.items():
            topic = f'{node}/{name}'
            self.create_subscription(
                cls, topic, lambda data, n=name, t=topic, m=msgtype: self._on_output(n, t, m,
                                                                                    data),
                qos, raw=True)
        self.create_subscription(
            String, f'{node}/class_table', lambda data: self.bag.write(
                f'{node}/class_table', 'std_msgs/msg/String', data, False, latched=True),
            latched, raw=True)
        self.create_subscription(DiagnosticArray, '/diagnostics', self._on_diag, 50, raw=True)

    def _on_output(self, name: str, topic: str, msgtype: str, data: bytes) -> None:
        self.bag.write(topic, msgtype, data, True)
        stamp = header_stamp_ns(data)
        extra = {}
        if name == 'overlay':
            rgb = conversions.image_to_rgb(deserialize_message(data, Image))
            extra['file'] = f'{self.count:05d}_{stamp}.png'
            cv2.imwrite(str(self.out / 'overlay' / extra['file']),
                        cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
            self.count += 1
        self.outputs.write(json.dumps({'topic': name, 'stamp_ns': stamp, 'wall': time.time(),
                                       **extra}) + '\n')

    def _on_diag(self, data: bytes) -> None:
        msg = deserialize_message(data, DiagnosticArray)
        mine = [st for st in msg.status if st.name.startswith(self.node.split('/')[-1] + ':')]
        if not mine:
            return
        self.bag.write('/diagnostics', 'diagnostic_msgs/msg/DiagnosticArray', data, False)
        self.ticks += 1
        for st in mine:
            level = st.level[0] if isinstance(st.level, bytes) else int(st.level)
            self.diags.write(json.dumps({
                'tick': self.ticks, 'wall': time.time(), 'name': st.name, 'level': level,
                'message': st.message, 'values': {kv.key: kv.value for kv in st.values}}) + '\n')

    def close(self) -> None:
        self.outputs.close()
        self.diags.close()
        self.bag.close()


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    ours, _ = split_argv(argv)
    ap = argparse.ArgumentParser(prog='demo_recorder', description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--out', required=True, help='output folder')
    ap.add_argument('--node', default='/perception', help='perception node to record')
    opts = ap.parse_args(ours)
    return run_node(lambda ctx: DemoRecorder(Path(opts.out), opts.node, ctx), argv,
                    name='demo_recorder', on_exit=lambda node: node.close())


if __name__ == '__main__':
    sys.exit(main())
