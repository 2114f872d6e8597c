"""`synthetic_sensors`: publishes the synthetic rig (rmseg_ros.synthetic) as ROS topics.

Each modality runs on its own timer at its own rate, stamped with the node clock, so the
perception node can be exercised (and benchmarked) without sensors or bags: run one process per
modality to kill and restart a single sensor. `--malform KIND` makes every N-th message of the
published modalities malformed in the way KIND says (see rmseg_ros.synthetic.MALFORMATIONS).

Run:  python -m rmseg_ros.nodes.synthetic_sensors --modalities rgb depth --rates 30 15
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo

from rmseg_ros import conversions
from rmseg_ros.nodes.common import make_qos, run_node, split_argv
from rmseg_ros.params import QOS_RELIABILITIES
from rmseg_ros.synthetic import MALFORMATIONS, SyntheticRig, cloud_array, event_array

TOPICS = {'rgb': 'camera/image', 'depth': 'depth/image', 'lidar': 'lidar/points',
          'event': 'events', 'camera_info': 'camera/camera_info'}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog='synthetic_sensors', description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--modalities', nargs='+', default=['rgb', 'depth', 'lidar', 'event'],
                    choices=['rgb', 'depth', 'lidar', 'event'])
    ap.add_argument('--rates', nargs='+', type=float, default=None,
                    help='Hz per modality (default 30 15 10 20 for rgb depth lidar event)')
    ap.add_argument('--width', type=int, default=640)
    ap.add_argument('--height', type=int, default=480)
    ap.add_argument('--camera-info', action='store_true',
                    help='also publish CameraInfo (with the camera rate)')
    ap.add_argument('--duration', type=float, default=0.0, help='seconds; 0 = until stopped')
    ap.add_argument('--malform', choices=MALFORMATIONS, help='publish malformed messages')
    ap.add_argument('--malform-every', type=int, default=1, help='every N-th message')
    ap.add_argument('--reliability', choices=QOS_RELIABILITIES, default='reliable')
    ap.add_argument('--cache-frames', type=int, default=0, metavar='N',
                    help='render the first N camera, depth and LiDAR frames, then replay '
                         'them with fresh stamps: a driver-like publisher for benchmarks, whose '
                         'rendering would otherwise take a third of a core from the node '
                         'under test; 0 = render every frame')
    return ap


DEFAULT_RATES = {'rgb': 30.0, 'depth': 15.0, 'lidar': 10.0, 'event': 20.0}


class SyntheticSensors(Node):
    def __init__(self, opts: argparse.Namespace, context=None) -> None:
        super().__init__('synthetic_sensors', context=context)
        self.opts = opts
        self.rig = SyntheticRig(width=opts.width, height=opts.height)
        rates = opts.rates or [DEFAULT_RATES[m] for m in opts.modalities]
        if len(rates) != len(opts.modalities):
            raise SystemExit('--rates needs one value per modality')
        qos = make_qos(opts.reliability, 5)
        self.count = dict.fromkeys(opts.modalities, 0)
        self.cached: dict[str, list] = {}  # modality -> pre-built messages (--cache-frames)
        self.pubs = {}
        self.t0 = time.monotonic()
        from sensor_msgs.msg import Image, PointCloud2

        for m, hz in zip(opts.modalities, rates, strict=True):
            cls = PointCloud2 if m in ('lidar', 'event') else Image
            self.pubs[m] = self.create_publisher(cls, TOPICS[m], qos)
            self.create_timer(1.0 / hz, lambda m=m, hz=hz: self._tick(m, hz))
        if opts.camera_info:
            self.info_pub = self.create_publisher(CameraInfo, TOPICS['camera_info'], qos)
            self.create_timer(1.0 / 30.0, self._info)

    def _header(self, frame: str, offset_s: float = 0.0):
        from std_msgs.msg import Header

        now = self.get_clock().now().nanoseconds + int(offset_s * 1e9)
        h = Header(frame_id=frame)
        h.stamp.sec, h.stamp.nanosec = divmod(now, 1_000_000_000)
        return h

    def _info(self) -> None:
        cam = self.rig.camera
        msg = CameraInfo(header=self._header('camera_optical_frame'), width=cam.width,
                         height=cam.height, distortion_model='plumb_bob')
        msg.k = cam.K.reshape(-1).tolist()
        msg.d = [0.0] * 5
        msg.r = np.eye(3).reshape(-1).tolist()
        P = np.zeros((3, 4))
        P[:, :3] = cam.K
        msg.p = P.reshape(-1).tolist()
        self.info_pub.publish(msg)

    def _tick(self, m: str, hz: float) -> None:
        o = self.opts
        self.count[m] += 1
        bad = o.malform if o.malform and self.count[m] % o.malform_every == 0 else None
        if o.duration and time.monotonic() - self.t0 > o.duration:
            raise SystemExit(0)
        offset = {'stamp_future': 3600.0, 'stamp_past': -3600.0}.get(bad or '', 0.0)
        t = time.monotonic() - self.t0
        if o.cache_frames > 0 and m != 'event' and not bad:
            frames = self.cached.setdefault(m, [])
            if len(frames) < o.cache_frames:  # the first N ticks render, later ones replay
                frames.append(self._render(m, t, hz, None, 0.0))
            msg = frames[(self.count[m] - 1) % o.cache_frames]
            msg.header.stamp = self._header(msg.header.frame_id).stamp
            self.pubs[m].publish(msg)
            return
        msg = self._render(m, t, hz, bad, offset)
        if m != 'event':  # stamp at publication, as a driver does: rendering is not latency
            msg.header.stamp = self._header(msg.header.frame_id, offset).stamp
        self.pubs[m].publish(msg)

    def _render(self, m: str, t: float, hz: float, bad: str | None, offset: float) -> Any:
        """The message of modality `m` at rig time `t` (malformed as `bad` says)."""
        rig = self.rig
        if m == 'rgb':
            header = self._header('camera_optical_frame', offset)
            img = rig.rgb(t)
            if bad == 'wrong_encoding':
                msg = conversions.numpy_to_image(img[..., 0].astype(np.float32), '32FC1', header)
            else:
                msg = conversions.numpy_to_image(img, 'rgb8', header)
                if bad == 'size_mismatch':
                    msg.height += 7
        elif m == 'depth':
            header = self._header('camera_optical_frame', offset)
            d = rig.depth_m(t)
            if bad == 'nan_depth':
                d = np.full_like(d, np.nan)
            if bad == 'size_mismatch':
                d = d[: d.shape[0] // 2]
            msg = conversions.numpy_to_image(d, '32FC1', header)
        elif m == 'lidar':
            header = self._header('lidar', offset)
            xyz, inten = rig.lidar(t)
            if bad == 'empty_cloud':
                xyz, inten = xyz[:0], inten[:0]
            msg = conversions.array_to_pointcloud2(cloud_array(xyz, inten), header)
        else:
            header = self._header('camera_optical_frame', offset)
            stamp = header.stamp.sec * 1_000_000_000 + header.stamp.nanosec
            ev = event_array(rig.events(t, stamp, int(1e9 / hz)))
            if bad == 'bad_event_fields':
                msg = conversions.array_to_pointcloud2(cloud_array(
                    np.zeros((4, 3), np.float32), np.zeros(4, np.float32)), header)
            else:
                msg = conversions.array_to_pointcloud2(ev, header)
        return msg


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    ours, _ = split_argv(argv)
    opts = build_parser().parse_args(ours)
    return run_node(lambda ctx: SyntheticSensors(opts, ctx), argv, name='synthetic_sensors')


if __name__ == '__main__':
    sys.exit(main())
