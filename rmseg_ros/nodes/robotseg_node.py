"""`robotseg_node`: the robot's own body in its camera images, segmented with RobotSeg.

Subscribes to `camera/image` (sensor_msgs/Image rgb8/bgr8/mono8/rgba8/bgra8, or a
CompressedImage when `compressed` is true) and publishes, with the source header kept,
`~/robot_mask` (mono8: `mask_value` on the robot, 0 elsewhere) and `~/overlay` (rgb8), plus
`/diagnostics` (latency, device, memory, resets). The memory of the last K frames is cleared by
the `~/reset` service (std_srvs/Trigger), on a scene cut and when stamps jump backwards (all in
the ROS-free rmseg_ros.pipeline.robotseg_stream). The subscription callback only hands the
message to a latest-only worker thread (rmseg_ros.pipeline.worker, as the perception node): the
model never runs
on the executor, so the reset service and diagnostics answer while a frame is in flight, and when
the model is slower than the camera the newest frame wins and the frames replaced before the
worker took them are counted (`skipped_frames` in /diagnostics).

Run:  robotseg_node --ros-args -p checkpoint:=weights/robotseg.safetensors
      python -m rmseg_ros.nodes.robotseg_node --ros-args -p checkpoint:=... -r camera/image:=/cam
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image
from std_srvs.srv import Trigger

from rmseg_ros import conversions
from rmseg_ros.inference.device import DEVICES
from rmseg_ros.nodes.common import declare_parameters, make_qos, parameter_values, run_node
from rmseg_ros.params import ParamSpec, qos_parameters
from rmseg_ros.pipeline.robotseg_stream import RobotSegStream, overlay
from rmseg_ros.pipeline.worker import Job, LatestOnlyWorker

NODE_NAME = 'robotseg'
DEFAULT_CHECKPOINT = 'weights/robotseg.safetensors'


def _spec(name: str, default: Any, description: str, **kw: Any) -> ParamSpec:
    return ParamSpec(name, default, description, read_only=True, **kw)  # read at start only


PARAMETERS: tuple[ParamSpec, ...] = (
    _spec('checkpoint', DEFAULT_CHECKPOINT, 'RobotSeg checkpoint (safetensors + JSON metadata, '
          'written by rmseg-train robotseg).'),
    _spec('device', 'auto', "'auto' (CUDA when available), 'cuda' or 'cpu'; a CUDA failure "
          'falls back to the CPU.', choices=DEVICES),
    _spec('threads', 0, 'torch CPU threads (0 = torch default).'),
    _spec('memory_size', 0, 'K: frames kept in memory (1..the K the model was trained with; '
          '0 = that K).'),
    _spec('threshold', 0.5, 'Robot probability above which a pixel is robot.'),
    _spec('mask_value', 1, 'Value of robot pixels in ~/robot_mask (background is 0); 1 as in '
          'the labels/robot topic of the training bags, 255 to view it.'),
    _spec('compressed', False, 'Subscribe to a sensor_msgs/CompressedImage instead of an '
          'Image.'),
    *qos_parameters('the camera subscription', 'best_effort', 1, read_only=True),
    _spec('publish_overlay', True, 'Publish ~/overlay (RGB with the mask blended in).'),
    _spec('overlay_alpha', 0.5, 'Blend factor of the overlay colour.'),
    _spec('overlay_color', [255.0, 64.0, 0.0], 'Overlay colour (R, G, B).'),
    _spec('scene_cut_threshold', 0.3, 'Reset the memory when the mean absolute difference of '
          'consecutive, brightness-normalised grey thumbnails exceeds this (0..1; 0 '
          'disables).'),
    _spec('reset_on_stamp_jump', True, 'Reset the memory when a frame is stamped earlier than '
          'the previous one (bag loop, clock reset).'),
    _spec('stamp_jump_tolerance', 0.0, 'Seconds a stamp may go backwards without a reset.'),
    _spec('diagnostics_period', 1.0, 'Seconds between /diagnostics messages (0 disables).'),
)


@dataclass(frozen=True)
class RobotSegNodeConfig:
    """The node's settings, checked (built by `robotseg_config` from parameter values)."""

    checkpoint: str
    device: str
    threads: int
    memory_size: int
    threshold: float
    mask_value: int
    compressed: bool
    qos_reliability: str
    qos_depth: int
    publish_overlay: bool
    overlay_alpha: float
    overlay_color: tuple[int, int, int]
    scene_cut_threshold: float
    reset_on_stamp_jump: bool
    stamp_jump_tolerance: float
    diagnostics_period: float


def robotseg_config(values: dict[str, Any]) -> RobotSegNodeConfig:
    """Parameter values (rmseg_ros.params.read_parameters of PARAMETERS) -> the typed config;
    ValueError names the parameter that is out of range."""
    v = dict(values)
    if not 1 <= int(v['mask_value']) <= 255:
        raise ValueError(f"mask_value must be in 1..255, got {v['mask_value']}")
    color = v['overlay_color']
    if len(color) != 3 or not all(0 <= c <= 255 for c in color):
        raise ValueError(f'overlay_color must be 3 values in 0..255, got {color}')
    v['overlay_color'] = tuple(int(c) for c in color)
    for name in ('threshold', 'overlay_alpha'):
        if not 0.0 <= v[name] <= 1.0:
            raise ValueError(f'{name} must be in 0..1, got {v[name]}')
    if v['threads'] < 0 or v['memory_size'] < 0:
        raise ValueError('threads and memory_size must be >= 0')
    return RobotSegNodeConfig(**v)


class RobotSegNode(Node):
    """Loads the checkpoint and wires topics and services on construction."""

    def __init__(self, *, context: Any = None,
                 parameter_overrides: list[Parameter] | None = None) -> None:
        super().__init__(NODE_NAME, context=context, parameter_overrides=parameter_overrides)
        declare_parameters(self, PARAMETERS)
        self.cfg = cfg = robotseg_config(parameter_values(self, PARAMETERS))
        import torch

        from rmseg_ros.models.robotseg import RobotSegTracker, load_robotseg, resolve_device

        if cfg.threads > 0:
            torch.set_num_threads(cfg.threads)
        path = cfg.checkpoint
        device = resolve_device(cfg.device)
        try:
            model, meta = load_robotseg(path, device)
        except Exception as exc:
            if device == 'cpu':
                raise
            self.get_logger().warning(f'loading on {device} failed ({exc}); using the CPU')
            device = 'cpu'
            model, meta = load_robotseg(path, device)
        k = cfg.memory_size or model.config.memory_size
        tracker = RobotSegTracker(model, device=device, input_hw=tuple(meta['input_hw']),
                                  memory_size=k, threshold=cfg.threshold)
        self.stream = RobotSegStream(
            tracker, scene_cut_threshold=cfg.scene_cut_threshold,
            stamp_jump_tolerance_ns=int(cfg.stamp_jump_tolerance * 1e9),
            reset_on_stamp_jump=cfg.reset_on_stamp_jump)
        self.mask_value = cfg.mask_value
        self.overlay_color = cfg.overlay_color
        self.overlay_alpha = cfg.overlay_alpha
        self.checkpoint = path
        self.variant = str((meta.get('extra') or {}).get('variant'))
        self.errors = 0
        self.last_error = ''
        # held while the model steps or its memory is reset (worker thread vs. reset service)
        self.stream_lock = threading.Lock()
        self.worker: LatestOnlyWorker | None = LatestOnlyWorker(
            self._process, self._on_worker_error, 'robotseg')

        msg_type = CompressedImage if cfg.compressed else Image
        qos = make_qos(cfg.qos_reliability, cfg.qos_depth)
        out_qos = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
        self.mask_pub = self.create_publisher(Image, '~/robot_mask', out_qos)
        self.overlay_pub = self.create_publisher(Image, '~/overlay', out_qos) \
            if cfg.publish_overlay else None
        self.diag_pub = self.create_publisher(DiagnosticArray, '/diagnostics', 10)
        self.sub = self.create_subscription(msg_type, 'camera/image', self._on_image, qos)
        self.reset_srv = self.create_service(Trigger, '~/reset', self._on_reset)
        period = cfg.diagnostics_period
        self.diag_timer = self.create_timer(period, self._publish_diagnostics) \
            if period > 0 else None
        self.get_logger().info(
            f'RobotSeg {path} (variant {self.variant}, input {meta["input_hw"]}, K={k}) on '
            f'{tracker.device}; camera {self.sub.topic_name} ({msg_type.__name__}, '
            f'{cfg.qos_reliability}) -> {self.mask_pub.topic_name}')

    # -- callbacks -------------------------------------------------------------------------
    def _on_image(self, msg: Any) -> None:
        if self.worker is not None:
            self.worker.submit(msg)

    def _on_worker_error(self, exc: BaseException, job: Job[Any]) -> None:
        """A bad frame must not stop the node: counted, logged, the worker goes on."""
        self.errors += 1
        self.last_error = f'{type(exc).__name__}: {exc}'
        self.get_logger().error(f'frame dropped: {self.last_error}', throttle_duration_sec=2.0)

    def _process(self, job: Job[Any]) -> None:
        """Worker thread: decode, step the model, publish (the source header is kept)."""
        msg = job.item
        rgb = conversions.image_to_rgb(msg)
        with self.stream_lock:
            result = self.stream.process(rgb, conversions.stamp_ns(msg))
        if result.reset_reason is not None:
            self.get_logger().info(f'memory reset ({result.reset_reason})')
        mask = result.mask * self.mask_value
        self.mask_pub.publish(conversions.numpy_to_image(mask, 'mono8', msg.header))
        if self.overlay_pub is not None and self.overlay_pub.get_subscription_count() > 0:
            ov = overlay(rgb, result.mask, self.overlay_color, self.overlay_alpha)
            self.overlay_pub.publish(conversions.numpy_to_image(ov, 'rgb8', msg.header))

    def _on_reset(self, request: Trigger.Request, response: Trigger.Response
                  ) -> Trigger.Response:
        with self.stream_lock:  # waits for the frame in flight, if any
            held = self.stream.reset('manual')
        response.success = True
        response.message = f'memory cleared ({held} frames)'
        self.get_logger().info(response.message)
        return response

    def diagnostic_status(self) -> DiagnosticStatus:
        stats = self.stream.stats
        med, worst = stats.latency_summary()
        level = DiagnosticStatus.OK
        message = 'ok'
        if stats.frames == 0:
            level, message = DiagnosticStatus.WARN, 'no frames yet'
        elif self.errors:
            level, message = DiagnosticStatus.WARN, f'{self.errors} frames failed'
        worker = self.worker
        values = {
            'frames': stats.frames,
            'submitted_frames': worker.submitted if worker else 0,
            'skipped_frames': worker.skipped if worker else 0,
            'latency_ms_median': f'{med:.2f}',
            'latency_ms_max': f'{worst:.2f}', 'device': self.stream.device,
            'memory_frames': self.stream.memory_frames,
            'memory_size': self.stream.tracker.memory.capacity,
            'frames_since_reset': self.stream.tracker.frames_since_reset,
            'resets_manual': stats.resets['manual'],
            'resets_scene_cut': stats.resets['scene_cut'],
            'resets_stamp_jump': stats.resets['stamp_jump'],
            'scene_change_score': f'{stats.last_scene_score:.3f}',
            'cpu_fallbacks': stats.fallbacks, 'errors': self.errors,
            'last_error': self.last_error, 'checkpoint': self.checkpoint,
            'variant': self.variant,
        }
        return DiagnosticStatus(level=level, name=f'{self.get_name()}: robotseg',
                                message=message, hardware_id=self.stream.device,
                                values=[KeyValue(key=k, value=str(v))
                                        for k, v in values.items()])

    def stop_worker(self) -> None:
        """Finish the frame in flight and end the worker thread (before the node goes)."""
        if self.worker is not None:
            self.worker.stop()
            self.worker = None

    def destroy_node(self) -> None:
        self.stop_worker()
        super().destroy_node()

    def _publish_diagnostics(self) -> None:
        arr = DiagnosticArray()
        arr.header.stamp = self.get_clock().now().to_msg()
        arr.status = [self.diagnostic_status()]
        self.diag_pub.publish(arr)


def main(args: Sequence[str] | None = None) -> int:
    """Entry point (`robotseg_node`); `args` as sys.argv (ROS arguments after --ros-args)."""
    def on_exit(node: RobotSegNode) -> None:
        node.get_logger().info(f'stopping after {node.stream.stats.frames} frames')
        node.stop_worker()

    return run_node(lambda context: RobotSegNode(context=context),
                    list(sys.argv if args is None else args), name=NODE_NAME, on_exit=on_exit)


if __name__ == '__main__':
    sys.exit(main())
