"""`demo_recorder`: writes what the perception graph publishes to a folder, for `make demo`.

Overlays become PNGs (overlay/<index>_<stamp>.png), every output message a line in
outputs.jsonl (topic, stamp, arrival time) and every perception diagnostics status a line in
diagnostics.jsonl. `rmseg_ros.demo` turns these into the video, the timeline and summary.json.

Run:  python -m rmseg_ros.nodes.demo_recorder --out demo_output [--node /perception]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import cv2
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image, PointCloud2

from rmseg_ros import conversions
from rmseg_ros.nodes.runner import spin_node, split_argv


class DemoRecorder(Node):
    def __init__(self, out: Path, node: str, context=None) -> None:
        super().__init__('demo_recorder', context=context)
        self.out = out
        (out / 'overlay').mkdir(parents=True, exist_ok=True)
        self.outputs = open(out / 'outputs.jsonl', 'w', encoding='utf-8', buffering=1)
        self.diags = open(out / 'diagnostics.jsonl', 'w', encoding='utf-8', buffering=1)
        self.count = 0
        self.ticks = 0
        qos = QoSProfile(depth=20, reliability=ReliabilityPolicy.RELIABLE)
        node = node.rstrip('/')
        self.node = node.lstrip('/')
        self.create_subscription(Image, f'{node}/overlay', self._on_overlay, qos)
        self.create_subscription(Image, f'{node}/labels', lambda m: self._log('labels', m), qos)
        self.create_subscription(PointCloud2, f'{node}/labeled_points',
                                 lambda m: self._log('labeled_points', m), qos)
        self.create_subscription(DiagnosticArray, '/diagnostics', self._on_diag, 50)

    def _log(self, topic: str, msg, **extra) -> None:
        self.outputs.write(json.dumps({'topic': topic, 'stamp_ns': conversions.stamp_ns(msg),
                                       'wall': time.time(), **extra}) + '\n')

    def _on_overlay(self, msg: Image) -> None:
        rgb = conversions.image_to_rgb(msg)
        stamp = conversions.stamp_ns(msg)
        name = f'{self.count:05d}_{stamp}.png'
        cv2.imwrite(str(self.out / 'overlay' / name), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        self.count += 1
        self._log('overlay', msg, file=name)

    def _on_diag(self, msg: DiagnosticArray) -> None:
        self.ticks += 1
        for st in msg.status:
            if not st.name.startswith(self.node.split('/')[-1] + ':'):
                continue
            level = st.level[0] if isinstance(st.level, bytes) else int(st.level)
            self.diags.write(json.dumps({
                'tick': self.ticks, 'wall': time.time(), 'name': st.name, 'level': level,
                'message': st.message, 'values': {kv.key: kv.value for kv in st.values}}) + '\n')

    def close(self) -> None:
        self.outputs.close()
        self.diags.close()


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    ours, _ = split_argv(argv)
    ap = argparse.ArgumentParser(prog='demo_recorder', description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--out', required=True, help='output folder')
    ap.add_argument('--node', default='/perception', help='perception node to record')
    opts = ap.parse_args(ours)
    return spin_node(lambda ctx: DemoRecorder(Path(opts.out), opts.node, ctx), argv,
                     on_exit=lambda node: node.close())


if __name__ == '__main__':
    sys.exit(main())
