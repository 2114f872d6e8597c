"""The node graph of `perception.launch.py` and `rmseg-bringup`, and the perception node's
parameters, described once as data.

The launch file turns `build_graph(...)` into launch_ros Node actions; `rmseg_ros.bringup` runs
the very same NodeSpecs where launch_ros is absent. The perception node declares exactly the
parameters in PERCEPTION_PARAMETERS (names, defaults, descriptions), and `parameters_from_config`
turns a config/perception.yaml into overrides of those names, so the YAML, the launch file, the
bringup and `ros2 param describe` cannot drift apart. No rclpy import here: the launch file runs in
`ros2 launch`'s own process.

Modality lists are comma-separated strings ('rgb,depth'): ROS 2 cannot pass an empty string array
through overrides (it arrives typed as a byte array), and "no required modality" must be sayable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from rmseg_ros.camera import SizeLimits
from rmseg_ros.config import config_path, load_yaml
from rmseg_ros.inference.device import BACKENDS, DEVICES
from rmseg_ros.modalities import MODALITIES
from rmseg_ros.params import ParamSpec, qos_parameters
from rmseg_ros.pipeline.config import DegradedConfig, InputCheckConfig, OutputConfig
from rmseg_ros.pipeline.freshness import FreshnessConfig
from rmseg_ros.sync.core import SyncConfig

PACKAGE = 'rmseg_ros'
DEFAULT_WEIGHTS = 'weights/rmmss_student.safetensors'


@dataclass
class NodeSpec:
    """One node of the graph: what `launch_ros.actions.Node` and bringup both need."""

    name: str
    executable: str  # console script of this package
    module: str  # python -m entry (bringup runs it so where no console script is on PATH)
    parameters: dict[str, Any] = field(default_factory=dict)
    remappings: list[tuple[str, str]] = field(default_factory=list)
    namespace: str = ''
    package: str = PACKAGE
    # exit policy (`on_node_exit`): a required node's exit stops the graph; a `finishes` node
    # (the bag replay) exiting 0 has done its job, and the graph stops after a linger
    required: bool = True
    finishes: bool = False


@dataclass(frozen=True)
class ExitDecision:
    """What the launch file and bringup do when one node's process exits."""

    stop: bool  # stop the whole graph
    status: int  # the graph's exit status when this stops it
    delay_s: float  # wait before stopping (the replay's last outputs still flow)
    message: str


def exit_status(returncode: int) -> int:
    """A child's return code as a shell exit status (killed by signal N -> 128 + N)."""
    return 128 - returncode if returncode < 0 else returncode


def on_node_exit(spec: NodeSpec, returncode: int, *, shutting_down: bool = False,
                 linger_s: float = 3.0) -> ExitDecision:
    """The exit policy shared by `perception.launch.py` and `rmseg-bringup`.

    Why one function: a robot's bringup must notice a dead perception node the same way
    whichever tool started it. Exits while the graph is already stopping are expected.
    """
    status = exit_status(returncode)
    if shutting_down:
        return ExitDecision(False, 0, 0.0, f'{spec.name} stopped (status {status})')
    if status != 0:
        if not spec.required:
            return ExitDecision(False, 0, 0.0, f'{spec.name} exited with status {status} '
                                               '(not required: the graph goes on)')
        return ExitDecision(True, status, 0.0, f'required node {spec.name} exited with '
                                               f'status {status}: stopping the graph')
    if spec.finishes:
        return ExitDecision(True, 0, linger_s, f'{spec.name} finished; stopping the graph '
                                               f'in {linger_s:g} s')
    if spec.required:
        return ExitDecision(True, 0, 0.0, f'required node {spec.name} exited; stopping the '
                                          'graph')
    return ExitDecision(False, 0, 0.0, f'{spec.name} exited')


def _csv(names: tuple[str, ...] | list[str]) -> str:
    return ','.join(names)


def parse_csv(text: str) -> tuple[str, ...]:
    """'rgb, depth' -> ('rgb', 'depth'); '' -> ()."""
    return tuple(p.strip() for p in str(text).split(',') if p.strip())


_SYNC, _OUT, _CHK, _DEG = SyncConfig(), OutputConfig(), InputCheckConfig(), DegradedConfig()
_FRESH = FreshnessConfig()
_LIM = SizeLimits()

PERCEPTION_PARAMETERS: tuple[ParamSpec, ...] = (
    # model
    ParamSpec('checkpoint', '', 'Deployable checkpoint (.safetensors + JSON metadata); empty = '
              f'the package default {DEFAULT_WEIGHTS}.'),
    ParamSpec('classes_file', '', 'Class table YAML; empty = config/classes.yaml. A checkpoint '
              'whose classes disagree is refused.'),
    ParamSpec('device', 'auto', "'auto' (CUDA when available), 'cuda' or 'cpu'. A CUDA failure "
              'at run time falls back to the CPU for good.', choices=DEVICES),
    ParamSpec('backend', 'auto', "'torch', 'onnx' (onnxruntime; faster on CPU) or 'auto' (onnx "
              'on CPU, torch on CUDA).', choices=BACKENDS),
    ParamSpec('num_threads', 0, 'CPU threads for inference; 0 = available cores minus one '
              '(one is left for receiving and pre-processing).'),
    ParamSpec('autostart', True, 'Configure and activate on start (false: wait for lifecycle '
              'transitions from a manager).'),
    # topics
    ParamSpec('camera_topic', 'camera/image', 'RGB camera: sensor_msgs/Image (rgb8, bgr8, '
              'mono8, bayer_* debayered, ...) or CompressedImage (see camera_transport).'),
    ParamSpec('camera_transport', 'raw', "'raw' (Image) or 'compressed' (CompressedImage).",
              choices=('raw', 'compressed')),
    ParamSpec('camera_info_topic', 'camera/camera_info', 'CameraInfo of the RGB camera; every '
              'modality is aligned to it.'),
    ParamSpec('depth_topic', 'depth/image', 'Depth image aligned with the camera: 32FC1 metres '
              '(NaN invalid) or 16UC1 millimetres (0 invalid).'),
    ParamSpec('lidar_topic', 'lidar/points', 'LiDAR PointCloud2 with x, y, z [, intensity].'),
    ParamSpec('event_topic', 'events', 'Event camera: PointCloud2 with x, y, t, p, an event '
              'Image or an event_camera_msgs/EventPacket (see event_format).'),
    ParamSpec('event_format', 'cloud', "'cloud' (PointCloud2 x y t p), 'image' (pre-rendered "
              "event Image) or 'packet' (event_camera_msgs/EventPacket, evt3 encoding, as the "
              'Prophesee driver publishes; needs event_camera_msgs).',
              choices=('cloud', 'image', 'packet')),
    ParamSpec('event_sensor_size', [0.0, 0.0], 'Event sensor [width, height] in pixels when it '
              'differs from the camera; [0, 0] = camera size.'),
    ParamSpec('use_robot_mask', False, 'Subscribe to the RobotSeg mask: robot pixels get the '
              'robot class and their LiDAR points are marked.'),
    ParamSpec('robot_mask_topic', '/robotseg/robot_mask', 'mono8 robot mask (non-zero = robot).'),
    ParamSpec('tf_static_topic', '/tf_static', 'tf2_msgs/TFMessage with the LiDAR -> camera '
              'transform (static case); used when tf2_msgs is installed, else the parameter.'),
    ParamSpec('lidar_frame', '', 'LiDAR frame id to look up in /tf_static; empty = the cloud '
              "header's frame_id."),
    ParamSpec('lidar_extrinsic', [0.0, 0.0, 0.0, math.pi / 2, -math.pi / 2, 0.0],
              'T_camera_lidar (LiDAR points -> camera optical frame): [x, y, z, roll, pitch, '
              'yaw] (metres, radians, fixed axes) or 16 values row-major. Default: co-located, '
              'LiDAR x forward / z up. /tf_static wins when it has the transform.'),
    *qos_parameters('every sensor subscription', 'best_effort', 5),
    # synchroniser (rmseg_ros.sync.core.SyncConfig)
    ParamSpec('sync.modalities', _csv(_SYNC.modalities), 'Comma-separated modalities to '
              'subscribe to and fuse (of rgb, depth, lidar, event).'),
    ParamSpec('sync.pivot', _SYNC.pivot, 'Modality whose messages drive output (one set per '
              'message).'),
    ParamSpec('sync.pivot_fallback', 'depth,lidar,event', 'Comma-separated pivots to fall back '
              'to, in order, while the pivot is dead; only used when the pivot is not required.'),
    ParamSpec('sync.slop', _SYNC.slop, 'Max stamp difference to the pivot (s).'),
    ParamSpec('sync.queue_size', _SYNC.queue_size, 'Messages cached per modality.'),
    *(ParamSpec(f'sync.timeouts.{m}', 0.5, f'Seconds without {m} messages (relative to the '
                'newest stamp) before it is stale and left out; 0 = never stale.')
      for m in MODALITIES),
    ParamSpec('sync.required', _csv(_SYNC.required), 'Comma-separated modalities without which '
              'nothing is published (empty: none; then the pivot falls back).'),
    ParamSpec('sync.rejoin_count', _SYNC.rejoin_count, 'Fresh messages before a stale modality '
              'is used again.'),
    ParamSpec('sync.wait_for_closer', _SYNC.wait_for_closer, 'Wait for a possibly closer later '
              'partner message (exact matching) instead of taking the closest one at or before '
              'the pivot (lower latency; use a slop >= the slowest period).'),
    ParamSpec('sync.jump_threshold', _SYNC.jump_threshold, 'A pivot stamp this far (s) behind '
              'the newest is a bag loop or clock reset: caches are cleared (once).'),
    ParamSpec('sync.jump_confirm', _SYNC.jump_confirm, 'Consecutive messages that must agree on '
              'such a backward jump before anything is reset; fewer are dropped as bad stamps.'),
    # outputs (rmseg_ros.pipeline.config.OutputConfig)
    ParamSpec('output.size', _OUT.size, "'camera' (outputs at the camera resolution) or 'model' "
              '(at the model resolution; cheaper).', choices=('camera', 'model')),
    ParamSpec('output.overlay_alpha', _OUT.overlay_alpha, 'Colour mask opacity in ~/overlay.'),
    ParamSpec('output.min_confidence', _OUT.min_confidence, 'Pixels whose max softmax is below '
              'this get label 255 (unknown).'),
    ParamSpec('output.robot_class', _OUT.robot_class, 'Class given to pixels under the robot '
              'mask.'),
    ParamSpec('output.robot_mask_max_age_s', _OUT.robot_mask_max_age_s, 'A robot mask further '
              'than this from the frame is not applied.'),
    ParamSpec('output.occlusion_tolerance_m', _OUT.occlusion_tolerance_m, 'A LiDAR point more '
              'than this behind the nearest point on its pixel is occluded (label 255).'),
    # inference worker scheduling (rmseg_ros.pipeline.freshness.FreshnessConfig)
    ParamSpec('worker.max_wait_s', _FRESH.max_wait_s, 'A complete set that waited longer than '
              'this (s) for the busy worker, and longer than the next set is still away, is '
              'skipped for that next one while the output rate stays >= worker.min_rate_hz '
              '(fresher output when inference is slower than the camera); 0 = off, always the '
              'newest set at once.'),
    ParamSpec('worker.min_rate_hz', _FRESH.min_rate_hz, 'Output rate (Hz) below which waited '
              'sets are processed rather than skipped for fresher ones.'),
    # input checks (rmseg_ros.pipeline.config.InputCheckConfig)
    ParamSpec('checks.max_future_s', _CHK.max_future_s, 'Messages stamped further ahead of the '
              'node clock are rejected and counted; 0 = off.'),
    ParamSpec('checks.max_age_s', _CHK.max_age_s, 'Messages older than this are rejected and '
              'counted; 0 = off (replayed bags carry old stamps unless use_sim_time).'),
    # degraded-input detection (rmseg_ros.pipeline.config.DegradedConfig)
    ParamSpec('degraded.rgb_dark_mean', _DEG.rgb_dark_mean, 'RGB mean intensity (0..1) below '
              'which the camera is under-exposed.'),
    ParamSpec('degraded.rgb_saturated_fraction', _DEG.rgb_saturated_fraction, 'Fraction of '
              'saturated pixels making RGB over-exposed.'),
    ParamSpec('degraded.rgb_min_std', _DEG.rgb_min_std, 'RGB std (0..1) below which the image is '
              'uniform.'),
    ParamSpec('degraded.depth_min_valid_fraction', _DEG.depth_min_valid_fraction, 'Depth with '
              'fewer valid pixels is degraded.'),
    ParamSpec('degraded.lidar_min_points_in_view', _DEG.lidar_min_points_in_view, 'LiDAR with '
              'fewer points in the camera view is degraded.'),
    ParamSpec('degraded.event_max_rate_per_pixel', _DEG.event_max_rate_per_pixel, 'More events '
              'per pixel per window is a storm (degraded).'),
    ParamSpec('degraded.drop', 'rgb,depth,lidar,event', 'Comma-separated modalities removed from '
              'fusion when degraded (the others are fed anyway).'),
    # size limits on untrusted messages (rmseg_ros.camera.SizeLimits)
    ParamSpec('limits.max_side', _LIM.max_side, 'Largest width or height (pixels) a CameraInfo '
              'or the event sensor may have; a larger one is rejected before anything is '
              'allocated (the last valid CameraInfo stays in use).'),
    ParamSpec('limits.max_pixels', _LIM.max_pixels, 'Largest width x height (pixels) of a '
              'CameraInfo or the event sensor: the camera size sets the output images.'),
    # reporting
    ParamSpec('diagnostics_period_s', 1.0, 'Period of /diagnostics messages (s).'),
    ParamSpec('log_throttle_s', 5.0, 'Minimum seconds between repeated warnings of one kind.'),
)

PARAMETER_NAMES = frozenset(p.name for p in PERCEPTION_PARAMETERS)

# launch argument -> (default, description); the launch file and bringup both offer these.
LAUNCH_ARGUMENTS: dict[str, tuple[str, str]] = {
    'config': ('', 'perception YAML (config/perception.yaml format); empty = the package one'),
    'device': ('', "inference device: auto, cuda or cpu; empty = the config's node.device "
                   '(auto when it has none)'),
    'use_robotseg': ('false', 'also run the RobotSeg node and feed its mask to perception'),
    'bag': ('', 'rosbag2 directory to replay through the graph (empty: live sensors)'),
    'namespace': ('', 'namespace of every node'),
    'checkpoint': ('', 'perception checkpoint; empty = the config value or the default'),
}


def _flatten(prefix: str, obj: Any, out: dict[str, Any]) -> None:
    for key, value in obj.items():
        name = f'{prefix}.{key}' if prefix else str(key)
        if isinstance(value, dict):
            _flatten(name, value, out)
        else:
            out[name] = value


def _ros_value(name: str, value: Any, default: Any) -> Any:
    """YAML value -> the parameter's type (lists of modality names become CSV strings)."""
    if isinstance(default, str) and isinstance(value, (list, tuple)):
        return _csv([str(v) for v in value])
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ValueError(f'{name}: expected true/false, got {value!r}')
        return value
    if isinstance(default, float):
        return 0.0 if value is None else float(value)
    if isinstance(default, int):
        return int(value)
    if isinstance(default, list):
        return [float(v) for v in value]
    return str(value)


def parameters_from_config(data: dict[str, Any]) -> dict[str, Any]:
    """A perception YAML (sections node, sync, output, checks, worker, limits,
    frontend.degraded) -> overrides.

    Unknown keys are errors. The `frontend` section other than `degraded` is the training
    front-end (the node takes normalisation and size from its checkpoint) and is skipped here.
    """
    defaults = {p.name: p.default for p in PERCEPTION_PARAMETERS}
    flat: dict[str, Any] = {}
    for section, body in data.items():
        if section == 'frontend':
            degraded = dict(body.get('degraded', {}))
            policy = degraded.pop('policy', None)
            _flatten('degraded', degraded, flat)
            if policy is not None:
                flat['degraded.drop'] = [m for m, v in policy.items() if v == 'drop']
        elif section == 'node':
            _flatten('', body, flat)
        elif section in ('sync', 'output', 'checks', 'worker', 'limits'):
            _flatten(section, body, flat)
        else:
            raise ValueError(f'unknown section {section!r} in the perception config')
    if 'sync.timeouts' in flat:  # an empty mapping
        flat.pop('sync.timeouts')
    unknown = sorted(set(flat) - PARAMETER_NAMES)
    if unknown:
        raise ValueError(f'unknown perception parameters {unknown}')
    return {k: _ros_value(k, v, defaults[k]) for k, v in flat.items()}


def sync_config_from_parameters(p: dict[str, Any]) -> SyncConfig:
    """The node's parameter values -> SyncConfig (the core keeps dataclasses, not parameters)."""
    mods = parse_csv(p['sync.modalities'])
    timeouts = {m: float(p[f'sync.timeouts.{m}']) for m in mods
                if float(p[f'sync.timeouts.{m}']) > 0}
    return SyncConfig(modalities=mods, pivot=p['sync.pivot'], slop=float(p['sync.slop']),
                      queue_size=int(p['sync.queue_size']), timeouts=timeouts,
                      required=parse_csv(p['sync.required']),
                      rejoin_count=int(p['sync.rejoin_count']),
                      jump_threshold=float(p['sync.jump_threshold']),
                      jump_confirm=int(p['sync.jump_confirm']),
                      wait_for_closer=bool(p['sync.wait_for_closer']),
                      pivot_fallback=tuple(m for m in parse_csv(p['sync.pivot_fallback'])
                                           if m in mods and m != p['sync.pivot']))


def section_from_parameters(cls: type, prefix: str, p: dict[str, Any]) -> Any:
    """Build dataclass `cls` from the parameters '<prefix>.<field>'."""
    return cls(**{f.name: p[f'{prefix}.{f.name}'] for f in fields(cls)
                  if f'{prefix}.{f.name}' in p})


def _truthy(value: str | bool) -> bool:
    if isinstance(value, bool):
        return value
    if str(value).lower() in ('true', '1', 'yes', 'on'):
        return True
    if str(value).lower() in ('false', '0', 'no', 'off', ''):
        return False
    raise ValueError(f'expected true or false, got {value!r}')


def _input_topics(params: dict[str, Any]) -> list[str]:
    """The bag topics the perception node reads (the replay waits only for these)."""
    defaults = {p.name: p.default for p in PERCEPTION_PARAMETERS}
    value = {**defaults, **params}
    topic_of = {'rgb': 'camera_topic', 'depth': 'depth_topic', 'lidar': 'lidar_topic',
                'event': 'event_topic'}
    mods = parse_csv(value['sync.modalities'])
    return [value['camera_info_topic']] + [value[topic_of[m]] for m in mods]


def build_graph(config: str = '', device: str = '', use_robotseg: str | bool = False,
                bag: str = '', namespace: str = '', checkpoint: str = '') -> list[NodeSpec]:
    """The nodes to run for the given launch arguments (strings, as launch passes them).

    An empty argument leaves the config file's value (so `device` in the YAML holds unless
    `device:=...` is given).
    """
    path = Path(config) if config else config_path('perception.yaml')
    params = parameters_from_config(load_yaml(path))
    if device:
        params['device'] = device
    if checkpoint:
        params['checkpoint'] = checkpoint
    robotseg = _truthy(use_robotseg)
    nodes = []
    if bag:  # a replay can be lossless: reliable both ways (live sensors stay best effort)
        params['qos_reliability'] = 'reliable'
        params.setdefault('qos_depth', 10)
        nodes.append(NodeSpec(
            name='bag_replay', executable='bag_replay_node',
            module='rmseg_ros.nodes.bag_replay_node', namespace=namespace,
            parameters={'bag': str(bag), 'wait_for_subscribers': 1,
                        'wait_for_subscribers_timeout': 60.0, 'qos_reliability': 'reliable',
                        'topics': _input_topics(params)},
            remappings=[], finishes=True))
    if robotseg:
        params['use_robot_mask'] = True
        params['robot_mask_topic'] = 'robotseg/robot_mask'
        nodes.append(NodeSpec(
            name='robotseg', executable='robotseg_node', module='rmseg_ros.nodes.robotseg_node',
            namespace=namespace, parameters={'device': params.get('device', 'auto')},
            remappings=[('camera/image', params.get('camera_topic', 'camera/image'))]))
    nodes.append(NodeSpec(name='perception', executable='perception_node',
                          module='rmseg_ros.nodes.perception_node', namespace=namespace,
                          parameters=params))
    return nodes
