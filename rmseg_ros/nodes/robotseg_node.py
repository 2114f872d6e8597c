"""`robotseg_node`: the robot's own body in its camera images, segmented with RobotSeg.

Subscribes to `camera/image` (sensor_msgs/Image rgb8/bgr8/mono8/rgba8/bgra8, or a
CompressedImage when `compressed` is true) and publishes, with the source header kept,
`~/robot_mask` (mono8: `mask_value` on the robot, 0 elsewhere) and `~/overlay` (rgb8), plus
`/diagnostics` (latency, device, memory, resets). The memory of the last K frames is cleared by
the `~/reset` service (std_srvs/Trigger), on a scene cut and when stamps jump backwards (all in
the ROS-free rmseg_ros.robotseg_stream). The subscription callback only hands the message to a
latest-only worker thread (rmseg_ros.latest_worker, as the perception node): the model never runs
on the executor, so the reset service and diagnostics answer while a frame is in flight, and when
the model is slower than the camera the newest frame wins and the frames replaced before the
worker took them are counted (`skipped_frames` in /diagnostics).

Run:  robotseg_node --ros-args -p checkpoint:=weights/robotseg.safetensors
      python -m rmseg_ros.nodes.robotseg_node --ros-args -p checkpoint:=... -r camera/image:=/cam
"""

from __future__ import annotations

import copy
import signal
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.logging import get_logger
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    QoSProfile,
    ReliabilityPolicy,
    qos_profile_sensor_data,
)
from sensor_msgs.msg import CompressedImage, Image
from std_srvs.srv import Trigger

from rmseg_ros import conversions
from rmseg_ros.latest_worker import Job, LatestOnlyWorker
from rmseg_ros.robotseg_stream import RobotSegStream, overlay

NODE_NAME = 'robotseg'
DEFAULT_CHECKPOINT = 'weights/robotseg.safetensors'


def _desc(text: str, *, dynamic: bool = False) -> ParameterDescriptor:
    return ParameterDescriptor(description=text, dynamic_typing=dynamic)


# name -> (default, descriptor); doubles are dynamically typed so that `x:=1` is accepted
PARAMETERS: dict[str, tuple[Any, ParameterDescriptor]] = {
    'checkpoint': (DEFAULT_CHECKPOINT, _desc(
        'RobotSeg checkpoint (safetensors + JSON metadata, written by rmseg-train robotseg).')),
    'device': ('auto', _desc("'auto' (CUDA when available), 'cuda' or 'cpu'; a CUDA failure "
                             'falls back to the CPU.')),
    'threads': (0, _desc('torch CPU threads (0 = torch default).')),
    'memory_size': (0, _desc('K: frames kept in memory (1..the K the model was trained with; '
                             '0 = that K).')),
    'threshold': (0.5, _desc('Robot probability above which a pixel is robot.', dynamic=True)),
    'mask_value': (1, _desc('Value of robot pixels in ~/robot_mask (background is 0); 1 as '
                            'in the labels/robot topic of the training bags, 255 to view it.')),
    'compressed': (False, _desc('Subscribe to a sensor_msgs/CompressedImage instead of an '
                                'Image.')),
    'qos': ('sensor_data', _desc("Camera subscription QoS: 'sensor_data' (best effort, matches "
                                 "any publisher) or 'reliable'.")),
    'queue_depth': (1, _desc('Camera subscription history depth (1 = newest frame only).')),
    'publish_overlay': (True, _desc('Publish ~/overlay (RGB with the mask blended in).')),
    'overlay_alpha': (0.5, _desc('Blend factor of the overlay colour.', dynamic=True)),
    'overlay_color': ([255, 64, 0], _desc('Overlay colour (R, G, B).')),
    'scene_cut_threshold': (0.3, _desc(
        'Reset the memory when the mean absolute difference of consecutive, brightness-'
        'normalised grey thumbnails exceeds this (0..1; 0 disables).', dynamic=True)),
    'reset_on_stamp_jump': (True, _desc('Reset the memory when a frame is stamped earlier than '
                                        'the previous one (bag loop, clock reset).')),
    'stamp_jump_tolerance': (0.0, _desc('Seconds a stamp may go backwards without a reset.',
                                        dynamic=True)),
    'diagnostics_period': (1.0, _desc('Seconds between /diagnostics messages (0 disables).',
                                      dynamic=True)),
}


def make_qos(kind: str, depth: int) -> QoSProfile:
    if depth < 1:
        raise ValueError(f'queue_depth must be >= 1, got {depth}')
    if kind == 'sensor_data':
        qos = copy.copy(qos_profile_sensor_data)
        qos.depth = depth
        return qos
    if kind == 'reliable':
        return QoSProfile(depth=depth, history=HistoryPolicy.KEEP_LAST,
                          reliability=ReliabilityPolicy.RELIABLE,
                          durability=DurabilityPolicy.VOLATILE)
    raise ValueError(f"qos must be 'sensor_data' or 'reliable', got {kind!r}")


class RobotSegNode(Node):
    """Loads the checkpoint and wires topics and services on construction."""

    def __init__(self, *, context: Any = None,
                 parameter_overrides: list[Parameter] | None = None) -> None:
        super().__init__(NODE_NAME, context=context, parameter_overrides=parameter_overrides)
        for name, (default, descriptor) in PARAMETERS.items():
            self.declare_parameter(name, default, descriptor)
        import torch

        from rmseg_ros.models.robotseg import RobotSegTracker, load_robotseg, resolve_device

        threads = int(self._get('threads'))
        if threads > 0:
            torch.set_num_threads(threads)
        path = str(self._get('checkpoint'))
        device = resolve_device(str(self._get('device')))
        try:
            model, meta = load_robotseg(path, device)
        except Exception as exc:
            if device == 'cpu':
                raise
            self.get_logger().warning(f'loading on {device} failed ({exc}); using the CPU')
            device = 'cpu'
            model, meta = load_robotseg(path, device)
        k = int(self._get('memory_size')) or model.config.memory_size
        tracker = RobotSegTracker(model, device=device, input_hw=tuple(meta['input_hw']),
                                  memory_size=k, threshold=self._float('threshold'))
        self.stream = RobotSegStream(
            tracker, scene_cut_threshold=self._float('scene_cut_threshold'),
            stamp_jump_tolerance_ns=int(self._float('stamp_jump_tolerance') * 1e9),
            reset_on_stamp_jump=bool(self._get('reset_on_stamp_jump')))
        self.mask_value = int(self._get('mask_value'))
        if not 1 <= self.mask_value <= 255:
            raise ValueError(f'mask_value must be in 1..255, got {self.mask_value}')
        self.overlay_color = tuple(int(v) for v in self._get('overlay_color'))
        self.overlay_alpha = self._float('overlay_alpha')
        self.checkpoint = path
        self.variant = str((meta.get('extra') or {}).get('variant'))
        self.errors = 0
        self.last_error = ''
        # held while the model steps or its memory is reset (worker thread vs. reset service)
        self.stream_lock = threading.Lock()
        self.worker: LatestOnlyWorker | None = LatestOnlyWorker(
            self._process, self._on_worker_error, 'robotseg')

        msg_type = CompressedImage if self._get('compressed') else Image
        qos = make_qos(str(self._get('qos')), int(self._get('queue_depth')))
        out_qos = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
        self.mask_pub = self.create_publisher(Image, '~/robot_mask', out_qos)
        self.overlay_pub = self.create_publisher(Image, '~/overlay', out_qos) \
            if self._get('publish_overlay') else None
        self.diag_pub = self.create_publisher(DiagnosticArray, '/diagnostics', 10)
        self.sub = self.create_subscription(msg_type, 'camera/image', self._on_image, qos)
        self.reset_srv = self.create_service(Trigger, '~/reset', self._on_reset)
        period = self._float('diagnostics_period')
        self.diag_timer = self.create_timer(period, self._publish_diagnostics) \
            if period > 0 else None
        self.get_logger().info(
            f'RobotSeg {path} (variant {self.variant}, input {meta["input_hw"]}, K={k}) on '
            f'{tracker.device}; camera {self.sub.topic_name} ({msg_type.__name__}, '
            f'{self._get("qos")}) -> {self.mask_pub.topic_name}')

    # -- parameters ------------------------------------------------------------------------
    def _get(self, name: str) -> Any:
        return self.get_parameter(name).value

    def _float(self, name: str) -> float:
        value = self._get(name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f'parameter {name!r} must be a number, got {value!r}')
        return float(value)

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


def _raise_keyboard_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(args: Sequence[str] | None = None) -> int:
    """Entry point (`robotseg_node`); `args` as sys.argv (ROS arguments after --ros-args)."""
    argv = list(sys.argv if args is None else args)
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    context = rclpy.Context()
    rclpy.init(args=argv, context=context)
    logger = get_logger(NODE_NAME)
    node = None
    try:
        try:
            node = RobotSegNode(context=context)
        except Exception as exc:
            logger.error(f'cannot start: {type(exc).__name__}: {exc}')
            return 2
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(node)
        try:
            t0 = time.monotonic()
            while rclpy.ok(context=context):
                executor.spin_once(timeout_sec=0.1)
        except (KeyboardInterrupt, ExternalShutdownException):
            node.get_logger().info(f'stopping after {time.monotonic() - t0:.1f} s, '
                                   f'{node.stream.stats.frames} frames')
        finally:
            executor.shutdown(timeout_sec=1.0)
    finally:
        if node is not None:
            node.destroy_node()
        context.try_shutdown()
    return 0


if __name__ == '__main__':
    sys.exit(main())
