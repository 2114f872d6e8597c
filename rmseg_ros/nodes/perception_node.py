"""`perception_node`: robust multi-modal segmentation over ROS 2 (a lifecycle node).

Why one long module: it is the node's whole ROS shell (parameters, lifecycle, endpoints, the
five input callbacks and the publishers); every decision it makes is in the ROS-free modules.

construction declares the parameters (rmseg_ros.graph.PERCEPTION_PARAMETERS, so `ros2 param
list` shows them before any transition); configure reads and checks them, loads the class table
and the checkpoint, builds the synchroniser; activate: subscribes, publishes, starts the
inference worker; deactivate: stops them and frees the device; cleanup: forgets the model. With
`autostart` (default) the node configures and activates itself.

Data flow: sensor callbacks -> stamp checks -> FailoverSynchronizer -> latest-only worker thread
(rmseg_ros.pipeline.perception.PerceptionPipeline) -> ~/labels, ~/color_mask, ~/overlay,
~/confidence, ~/labeled_points (each only when subscribed) and /diagnostics. The class table is
latched (reliable, transient local) on ~/class_table (std_msgs/String, JSON) and, where vision_msgs
is installed, ~/label_info (vision_msgs/LabelInfo). All the work is in the ROS-free modules; this
file only translates messages and parameters.

Run:  perception_node --ros-args -p checkpoint:=weights/rmmss_student.safetensors
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.event_handler import SubscriptionEventCallbacks
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.logging import get_logger
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2
from std_msgs.msg import String
from std_srvs.srv import SetBool

from rmseg_ros import conversions
from rmseg_ros.camera import SizeLimits
from rmseg_ros.classes import ClassTable
from rmseg_ros.config import share_path
from rmseg_ros.frontend.evt3 import Evt3Decoder, decode_packet
from rmseg_ros.frontend.prepared import PREPARED_MODALITIES
from rmseg_ros.frontend.sensor_geometry import GeometryTracker, SensorGeometry
from rmseg_ros.graph import (
    DEFAULT_WEIGHTS,
    PERCEPTION_PARAMETERS,
    parse_csv,
    section_from_parameters,
    sync_config_from_parameters,
)
from rmseg_ros.inference.device import resolve_backend
from rmseg_ros.modalities import MODALITIES
from rmseg_ros.nodes.common import (
    declare_parameters,
    make_qos,
    parameter_values,
    run_node,
    split_argv,
)
from rmseg_ros.pipeline.config import (
    DROP,
    FEED,
    DegradedConfig,
    InputCheckConfig,
    OutputConfig,
    PerceptionConfig,
)
from rmseg_ros.pipeline.diagnostics import PerceptionStats, statuses
from rmseg_ros.pipeline.freshness import FreshnessConfig, FreshnessPolicy
from rmseg_ros.pipeline.perception import (
    OUTPUTS,
    NoUsableInputError,
    PerceptionPipeline,
    PerceptionResult,
    stamp_problem,
)
from rmseg_ros.pipeline.worker import Job, LatestOnlyWorker
from rmseg_ros.runtime import inference_threads
from rmseg_ros.sync.core import SyncedSet
from rmseg_ros.sync.failover import FailoverSynchronizer
from rmseg_ros.transforms import TransformTree, transform_from_xyz_rpy

NODE_NAME = 'perception'
SUCCESS, FAILURE = TransitionCallbackReturn.SUCCESS, TransitionCallbackReturn.FAILURE


def event_packet_class() -> type:
    """event_camera_msgs/EventPacket, or a ValueError saying the package is missing."""
    try:
        from event_camera_msgs.msg import EventPacket
    except ImportError:
        raise ValueError("event_format 'packet' needs event_camera_msgs, which is not "
                         "installed; use 'cloud' or 'image'") from None
    return EventPacket


def extrinsic_matrix(values: Sequence[float]) -> np.ndarray:
    """6 values (x y z roll pitch yaw) or 16 (row-major) -> 4x4 T_camera_lidar."""
    v = [float(x) for x in values]
    if len(v) == 6:
        return transform_from_xyz_rpy(v[:3], v[3:])
    if len(v) == 16:
        T = np.array(v).reshape(4, 4)
        if not np.allclose(T[3], [0, 0, 0, 1]):
            raise ValueError('lidar_extrinsic: the last row of a 4x4 matrix must be 0 0 0 1')
        return T
    raise ValueError(f'lidar_extrinsic needs 6 or 16 values, got {len(v)}')


class PerceptionNode(LifecycleNode):
    def __init__(self, *, context: Any = None, node_name: str = NODE_NAME, namespace: str = '',
                 parameter_overrides: list[Parameter] | None = None) -> None:
        super().__init__(node_name, context=context, namespace=namespace or None,
                         parameter_overrides=parameter_overrides)
        declare_parameters(self, PERCEPTION_PARAMETERS)
        self.stats = PerceptionStats()
        self.enabled = True
        self.pipeline: PerceptionPipeline | None = None
        self.worker: LatestOnlyWorker | None = None
        self._subs: list[Any] = []
        self._pubs: dict[str, Any] = {}
        self._timer: Any = None
        self._service: Any = None
        self.segmenter: Any = None  # rmseg_ros.inference.segmenter.Segmenter once configured
        self._geometry = GeometryTracker()  # camera + LiDAR extrinsic + event size, versioned
        self._camera_frame = ''
        self._camera_gate = conversions.CameraInfoGate()
        self._robot_mask: tuple[int, np.ndarray] | None = None
        self._tf = TransformTree()
        self._lidar_frame_seen = ''
        self._sync_lock = threading.Lock()

    # ------------------------------------------------------------------ parameters
    def _params(self) -> dict[str, Any]:
        """The current values, converted and checked against their choices."""
        return parameter_values(self, PERCEPTION_PARAMETERS)

    def _checkpoint_path(self, p: dict[str, Any]) -> Path:
        return Path(p['checkpoint']) if p['checkpoint'] else share_path(DEFAULT_WEIGHTS)

    # ------------------------------------------------------------------ lifecycle
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            p = self.p = self._params()
            self.classes = ClassTable.load(p['classes_file'] or None)
            self.sync_cfg = sync_config_from_parameters(p)
            drop = set(parse_csv(p['degraded.drop']))
            degraded = section_from_parameters(DegradedConfig, 'degraded', p)
            degraded.policy = {m: DROP if m in drop else FEED for m in MODALITIES}
            self.cfg = PerceptionConfig(
                sync=self.sync_cfg, output=section_from_parameters(OutputConfig, 'output', p),
                checks=section_from_parameters(InputCheckConfig, 'checks', p),
                worker=section_from_parameters(FreshnessConfig, 'worker', p),
                degraded=degraded)
            self.T_cam_lidar_param = extrinsic_matrix(p['lidar_extrinsic'])
            self.limits = section_from_parameters(SizeLimits, 'limits', p)
            w, h = (int(v) for v in p['event_sensor_size'])
            self.event_sensor_hw = None
            if w or h:  # [0, 0] = the camera's size (checked with each CameraInfo)
                self.limits.check('event_sensor_size', w, h)
                self.event_sensor_hw = (h, w)
            self._geometry.update(event_sensor_hw=self.event_sensor_hw)
            self._camera_gate = conversions.CameraInfoGate(self.limits)
            if p['event_format'] == 'packet' and 'event' in self.sync_cfg.modalities:
                event_packet_class()  # refuses now, not at activation, when it is missing
            self._load_model()
        except Exception as exc:  # any reason, logged: "autostart failed" alone says nothing
            self.get_logger().error(f'configure failed: {type(exc).__name__}: {exc}'
                                    if not isinstance(exc, (ValueError, OSError))
                                    else f'configure failed: {exc}')
            return FAILURE
        self.sync = FailoverSynchronizer(self.sync_cfg)
        self.get_logger().info(
            f'configured: checkpoint={self._checkpoint_path(p)} device={self.segmenter.device} '
            f'backend={self.segmenter.backend} model_input={self.segmenter.input_hw} '
            f'modalities={",".join(self.sync_cfg.modalities)} pivot={self.sync_cfg.pivot} '
            f'required={",".join(self.sync_cfg.required) or "none"} '
            f'fallback={",".join(self.sync.pivots[1:]) or "none"}')
        return SUCCESS

    def _load_model(self) -> None:
        from rmseg_ros.inference.segmenter import Segmenter
        from rmseg_ros.models.checkpoint import check_file

        p = self.p
        device = p['device']
        backend = resolve_backend(p['backend'], device)
        path = self._checkpoint_path(p)
        check_file(path)  # says what a directory or /dev/zero is, instead of "missing"
        self.segmenter = Segmenter.from_checkpoint(
            path, device=device, backend=backend, expected_classes=self.classes.names,
            num_threads=inference_threads(int(p['num_threads'])))
        self.pipeline = PerceptionPipeline(self.segmenter, self.classes, self.cfg)
        self.segmenter.warm_up()

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        if self.pipeline is None:
            try:
                self._load_model()
            except Exception as exc:  # any reason, logged
                self.get_logger().error(f'activate failed: {type(exc).__name__}: {exc}')
                return FAILURE
        self.worker = LatestOnlyWorker(self._process, self._on_worker_error, 'perception',
                                       FreshnessPolicy(self.cfg.worker))
        self._create_endpoints()
        self.get_logger().info('active: subscribed to ' + ', '.join(
            s.topic_name for s in self._subs))
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._destroy_endpoints()
        self._free_model()
        self.get_logger().info('deactivated: endpoints closed, model released')
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._destroy_endpoints()
        self._free_model()
        return SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._destroy_endpoints()
        self._free_model()
        return SUCCESS

    def _free_model(self) -> None:
        on_cuda = self.pipeline is not None and str(self.segmenter.device).startswith('cuda')
        self.pipeline = None
        self.segmenter = None
        if on_cuda:
            import torch

            torch.cuda.empty_cache()

    # ------------------------------------------------------------------ endpoints
    def _qos(self) -> QoSProfile:
        return make_qos(self.p['qos_reliability'], self.p['qos_depth'])

    def _events(self, topic: str) -> SubscriptionEventCallbacks:
        def incompatible(info: Any) -> None:
            self.get_logger().warning(
                f'{topic}: a publisher with incompatible QoS was found '
                f'(policy id {info.last_policy_kind}, {info.total_count} so far); set '
                "qos_reliability:=best_effort (accepts any publisher)",
                throttle_duration_sec=float(self.p['log_throttle_s']))
        return SubscriptionEventCallbacks(incompatible_qos=incompatible)

    def _create_endpoints(self) -> None:
        p, qos = self.p, self._qos()
        mods = self.sync_cfg.modalities

        def sub(cls: type, topic: str, cb: Any, q: Any = qos) -> None:
            self._subs.append(self.create_subscription(
                cls, topic, cb, q, event_callbacks=self._events(topic)))

        guard = self._guarded
        if 'rgb' in mods:
            cls = CompressedImage if p['camera_transport'] == 'compressed' else Image
            sub(cls, p['camera_topic'], guard('rgb', lambda m: self._on_sensor('rgb', m)))
        sub(CameraInfo, p['camera_info_topic'], guard('camera_info', self._on_camera_info))
        if 'depth' in mods:
            sub(Image, p['depth_topic'], guard('depth', lambda m: self._on_sensor('depth', m)))
        if 'lidar' in mods:
            sub(PointCloud2, p['lidar_topic'],
                guard('lidar', lambda m: self._on_sensor('lidar', m)))
        if 'event' in mods and p['event_format'] == 'packet':
            self._evt3 = Evt3Decoder()  # one stream: its state spans packets
            sub(event_packet_class(), p['event_topic'], guard('event', self._on_event_packet))
        elif 'event' in mods:
            cls = Image if p['event_format'] == 'image' else PointCloud2
            sub(cls, p['event_topic'], guard('event', lambda m: self._on_sensor('event', m)))
        if p['use_robot_mask']:
            sub(Image, p['robot_mask_topic'], guard('robot_mask', self._on_robot_mask))
        try:
            from tf2_msgs.msg import TFMessage  # not installable everywhere (e.g. pip wheels)
        except ImportError:
            self.get_logger().info('tf2_msgs is not installed: the LiDAR extrinsic comes from '
                                   'the lidar_extrinsic parameter')
        else:
            from rclpy.qos import DurabilityPolicy

            latched = QoSProfile(depth=100, durability=DurabilityPolicy.TRANSIENT_LOCAL,
                                 reliability=ReliabilityPolicy.RELIABLE)
            sub(TFMessage, p['tf_static_topic'], guard('tf_static', self._on_tf_static),
                latched)
        out_qos = QoSProfile(depth=2, reliability=ReliabilityPolicy.RELIABLE)
        self._pubs = {
            'labels': self.create_publisher(Image, '~/labels', out_qos),
            'color_mask': self.create_publisher(Image, '~/color_mask', out_qos),
            'overlay': self.create_publisher(Image, '~/overlay', out_qos),
            'confidence': self.create_publisher(Image, '~/confidence', out_qos),
            'points': self.create_publisher(PointCloud2, '~/labeled_points', out_qos),
            'diagnostics': self.create_publisher(DiagnosticArray, '/diagnostics', 10),
        }
        self._publish_class_table()
        self._service = self.create_service(SetBool, '~/set_enabled', self._on_set_enabled)
        self._timer = self.create_timer(float(p['diagnostics_period_s']),
                                        self._publish_diagnostics)

    def _publish_class_table(self) -> None:
        """Latched once per activation: late subscribers (a costmap layer) still get it."""
        from rclpy.qos import DurabilityPolicy

        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        threshold = float(self.cfg.output.min_confidence)
        pub = self.create_publisher(String, '~/class_table', latched)
        pub.publish(String(data=self.classes.to_json(threshold)))
        self._pubs['class_table'] = pub
        try:
            from vision_msgs.msg import LabelInfo, VisionClass
        except ImportError:
            return
        msg = LabelInfo(threshold=threshold, class_map=[
            VisionClass(class_id=i, class_name=n) for i, n in self.classes.class_map()])
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.header.frame_id = self._camera_frame
        pub = self.create_publisher(LabelInfo, '~/label_info', latched)
        pub.publish(msg)
        self._pubs['label_info'] = pub

    def _destroy_endpoints(self) -> None:
        if self.worker is not None:
            self.worker.stop()
            self.worker = None
        for s in self._subs:
            self.destroy_subscription(s)
        self._subs = []
        for pub in self._pubs.values():
            self.destroy_publisher(pub)
        self._pubs = {}
        if self._timer is not None:
            self.destroy_timer(self._timer)
            self._timer = None
        if self._service is not None:
            self.destroy_service(self._service)
            self._service = None

    # ------------------------------------------------------------------ callbacks
    def _warn(self, text: str) -> None:
        self.get_logger().warning(text, throttle_duration_sec=float(self.p['log_throttle_s']))

    def _on_set_enabled(self, request: Any, response: Any) -> Any:
        self.enabled = bool(request.data)
        response.success = True
        response.message = 'processing enabled' if self.enabled else 'processing disabled'
        self.get_logger().info(response.message)
        return response

    def _guarded(self, name: str, callback: Any) -> Any:
        """`callback` that never lets an exception reach the executor (spin() would end and
        the robot lose its perception): it is counted per input and kind, logged throttled."""
        def run(msg: Any) -> None:
            try:
                callback(msg)
            except Exception as exc:
                self.stats.problem(name, f'exception.{type(exc).__name__}')
                self.get_logger().error(
                    f'{name}: message dropped, {type(exc).__name__}: {exc}',
                    throttle_duration_sec=float(self.p['log_throttle_s']))
        return run

    def _on_camera_info(self, msg: CameraInfo) -> None:
        why = self._camera_gate.update(msg)
        if why is not None:
            self.stats.problem('camera_info', 'invalid')
            self._warn(f'ignoring CameraInfo (the last valid one stays in use): {why}')
            return
        self._geometry.update(camera=self._camera_gate.camera)
        self._camera_frame = self._camera_gate.frame_id

    def _on_event_packet(self, msg: Any) -> None:
        """Decoded as it arrives, in stream order (the EVT 3.0 state spans packets); what goes
        on to the synchroniser is the decoded packet with its header."""
        try:
            decoded = decode_packet(msg, self._evt3, conversions.stamp_ns(msg))
        except ValueError as exc:
            self.stats.problem('event', 'malformed')
            self._warn(f'event: packet left out: {exc}')
            return
        self._on_sensor('event', decoded)

    def _on_tf_static(self, msg: Any) -> None:
        self._tf.add_message(msg)

    def _on_robot_mask(self, msg: Image) -> None:
        try:
            mask = conversions.image_to_numpy(msg)
            if mask.ndim != 2 or mask.dtype != np.uint8:
                raise ValueError(f'robot mask must be mono8, got {msg.encoding}')
        except ValueError as exc:
            self.stats.problem('robot_mask', 'invalid')
            self._warn(f'ignoring robot mask: {exc}')
            return
        self._robot_mask = (conversions.stamp_ns(msg), np.array(mask))

    def _on_sensor(self, modality: str, msg: Any) -> None:
        if not self.enabled:
            return
        stamp = conversions.stamp_ns(msg)
        problem = stamp_problem(stamp, self.get_clock().now().nanoseconds, self.cfg.checks)
        if problem:
            self.stats.problem(modality, problem[0])
            self._warn(f'{modality}: rejected message: {problem[1]}')
            return
        if modality == 'lidar' and msg.header.frame_id:
            self._lidar_frame_seen = msg.header.frame_id
        pipeline = self.pipeline
        if modality in PREPARED_MODALITIES and pipeline is not None and self._wanted():
            # before the set can complete: its worker then finds the tensor built
            pipeline.prepare(modality, msg, self._current_geometry())
        with self._sync_lock:
            jumps = self.sync.backward_jumps
            sets = self.sync.add(modality, stamp, msg)
            dropped = self.sync.last_rejection  # counted by the synchroniser, per reason
            jumped = self.sync.backward_jumps != jumps
        if dropped:
            self._warn(f'{modality}: {dropped}')
        if jumped:  # confirmed by several messages: once per bag loop or clock reset
            self.get_logger().warning(
                f'{modality}: stamps jumped back in time (bag loop or clock reset): '
                'synchronisation state reset')
        if not sets:
            return
        synced = sets[-1]  # latest only: older completed sets would be skipped anyway
        if self.worker is not None:
            age_ms = (self.get_clock().now().nanoseconds - synced.stamp_ns) / 1e6
            self.worker.submit((synced, age_ms), superseded=len(sets) - 1)

    # ------------------------------------------------------------------ inference
    def _wanted(self) -> frozenset[str]:
        pubs = self._pubs
        return frozenset(k for k in OUTPUTS if k in pubs and pubs[k].get_subscription_count())

    def _current_geometry(self) -> SensorGeometry | None:
        """The rig now (None before the first valid CameraInfo): the LiDAR extrinsic from
        /tf_static when it has the pair of frames, else the parameter."""
        extrinsic = self.T_cam_lidar_param
        lidar_frame = self.p['lidar_frame'] or self._lidar_frame_seen
        if self._camera_frame and lidar_frame:
            try:
                extrinsic = self._tf.lookup(self._camera_frame, lidar_frame)
            except (LookupError, ValueError):  # not in /tf_static: the parameter holds
                pass
        return self._geometry.update(T_cam_lidar=extrinsic)

    def _process(self, job: Job[tuple[SyncedSet, float]]) -> None:
        """Worker thread: one synchronised set -> outputs. `job` carries the set, its age when
        it completed (ms, ROS clock) and the worker's submit and start times."""
        synced, receive_ms = job.item
        pipeline = self.pipeline
        if pipeline is None:
            return
        want = self._wanted()
        if not want:
            self.stats.unsubscribed += 1
            return
        geometry = self._current_geometry()
        if geometry is None:
            self.stats.problem('camera_info', 'missing')
            self._warn('no CameraInfo received yet: cannot align the modalities')
            return
        robot = None
        if self._robot_mask is not None:
            mask_stamp, mask = self._robot_mask
            if abs(mask_stamp - synced.stamp_ns) <= self.cfg.output.robot_mask_max_age_s * 1e9:
                robot = mask
        try:
            result = pipeline.run(synced, geometry, robot, want)
        except NoUsableInputError as exc:  # counted here, once: not a worker failure
            self._count_rejected(exc.errors, exc.degraded)
            self.stats.problem('all', 'no_usable_input')
            self._warn(str(exc))
            return
        self._count_rejected(result.errors, result.degraded)
        t_publish = time.monotonic()
        self._publish(synced, result)
        now = time.monotonic()
        stages = {k.removesuffix('_ms'): v for k, v in result.timings_ms.items()}
        stages['publish'] = (now - t_publish) * 1e3
        stages['receive'] = receive_ms
        stages['wait'] = (job.started - job.submitted) * 1e3
        self.stats.output(now, (now - job.submitted) * 1e3, stages, result.used,
                          tuple(sorted(result.missing)), result.degraded)

    def _count_rejected(self, errors: dict[str, str], degraded: dict[str, str]) -> None:
        for modality, why in errors.items():
            self.stats.problem(modality, 'malformed')
            self._warn(f'{modality}: malformed message left out: {why}')
        for modality in degraded:
            self.stats.problem(modality, 'degraded')

    def _on_worker_error(self, exc: BaseException, job: Job[tuple[SyncedSet, float]]) -> None:
        self.stats.problem('all', 'inference_error')
        self.get_logger().error(f'processing set {job.item[0].stamp_ns} failed: '
                                f'{type(exc).__name__}: {exc}',
                                throttle_duration_sec=float(self.p['log_throttle_s']))

    def _publish(self, synced: SyncedSet, result: PerceptionResult) -> None:
        pivot = synced.messages.get(self.sync_cfg.pivot)
        header = next(iter(synced.messages.values())).header
        if pivot is not None:
            header = pivot.header
        else:  # fallback pivot: camera frame, the set's stamp
            from std_msgs.msg import Header

            src = header
            header = Header(frame_id=self._camera_frame or src.frame_id, stamp=src.stamp)
        pubs = self._pubs
        if 'labels' in pubs:
            pubs['labels'].publish(conversions.numpy_to_image(result.labels, 'mono8', header))
        if result.color_mask is not None:
            pubs['color_mask'].publish(
                conversions.numpy_to_image(result.color_mask, 'rgb8', header))
        if result.overlay is not None:
            pubs['overlay'].publish(conversions.numpy_to_image(result.overlay, 'rgb8', header))
        if result.confidence_image is not None:
            pubs['confidence'].publish(
                conversions.numpy_to_image(result.confidence_image, 'mono8', header))
        if result.point_labels is not None and result.point_xyz is not None:
            xyz = result.point_xyz
            cloud = np.empty(len(xyz), dtype=[('x', '<f4'), ('y', '<f4'), ('z', '<f4'),
                                              ('label', 'u1'), ('robot', 'u1')])
            cloud['x'], cloud['y'], cloud['z'] = xyz[:, 0], xyz[:, 1], xyz[:, 2]
            cloud['label'] = result.point_labels
            cloud['robot'] = 0 if result.point_robot is None else result.point_robot
            pubs['points'].publish(conversions.array_to_pointcloud2(
                cloud, synced.messages['lidar'].header))

    # ------------------------------------------------------------------ diagnostics
    def _publish_diagnostics(self) -> None:
        pub = self._pubs.get('diagnostics')
        if pub is None:
            return
        now = time.monotonic()
        with self._sync_lock:
            states = self.sync.states()
            blocked = self.sync.blocked_reason
            sync_stats = self.sync.stats()
        worker = self.worker
        extra = {'device': getattr(self.segmenter, 'device', ''),
                 'backend': getattr(self.segmenter, 'backend', ''),
                 'output_rate_hz': self.stats.rate_hz(now),
                 'skipped_frames': worker.skipped if worker else 0,
                 'skipped_for_freshness': worker.skipped_for_freshness if worker else 0,
                 'active_pivot': sync_stats['active_pivot'],
                 'pivot_switches': sync_stats['pivot_switches'],
                 'pivots_dropped': sync_stats['pivots_dropped'],
                 'backward_jumps': sync_stats['backward_jumps']}
        if self.pipeline is not None:  # LiDAR / event tensors built on arrival vs with the set
            extra['prepared_inputs_used'] = self.pipeline.prepared.hits
            extra['prepared_inputs_missed'] = self.pipeline.prepared.misses
            for (modality, kind), n in sorted(self.pipeline.prepared.failures.items()):
                extra[f'prepared_inputs_failed.{modality}.{kind}'] = n
        msg = DiagnosticArray()
        msg.header.stamp = self.get_clock().now().to_msg()
        for st in statuses(self.get_name(), states, self.stats.snapshot(), extra, blocked,
                           self.enabled):
            msg.status.append(DiagnosticStatus(
                level=bytes([st.level]), name=st.name, message=st.message,
                hardware_id=self.get_fully_qualified_name(),
                values=[KeyValue(key=k, value=v) for k, v in st.values.items()]))
        pub.publish(msg)
        if blocked and self.enabled:
            self._warn(f'no output: {blocked}')


# ---------------------------------------------------------------------------- entry point

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='perception_node',
        description='Robust multi-modal semantic segmentation node (lifecycle). Parameters are '
                    'ROS parameters (--ros-args -p NAME:=VALUE or --params-file FILE):\n\n'
                    + '\n'.join(f'  {p.name} (default {p.default!r}): {p.description}'
                                for p in PERCEPTION_PARAMETERS),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    build_parser().parse_args(split_argv(argv)[0])  # --help exits here, before ROS starts

    def body(node: PerceptionNode, spin: Any) -> int:
        if node.get_parameter('autostart').value and (
                node.trigger_configure() != SUCCESS or node.trigger_activate() != SUCCESS):
            get_logger(NODE_NAME).error('autostart failed (see above)')
            return 2
        spin()
        return 0

    def on_exit(node: PerceptionNode) -> None:
        if node.worker is not None:
            node.worker.stop()

    return run_node(lambda context: PerceptionNode(context=context), argv, name=NODE_NAME,
                    body=body, on_exit=on_exit)


if __name__ == '__main__':
    sys.exit(main())
