"""Drive one scene for M frames and write its rosbag2 recording (the simulator's main loop).

Per frame k (stamp = start + k / rate): pose robots and rig, render RGB / depth / labels / robot
mask, emit the events since frame k-1, scan the LiDAR, apply the requested sensor failures
(each from its own random stream, so a failure changes only its modality), write the messages.
Events at frame k cover (t_{k-1}, t_k] and carry stamp t_k; frame 0 gets an empty event cloud.

Random streams (numpy Generators seeded with [scene_seed, stream]): 1 scene, 2 motions,
3 event sensor, 10 + i failure i of training.failures.FAILURES. The same seed, config and
failures give the same bag, message for message.

Splits: `split_of(seed)` hashes the scene seed (blake2b), so a scene's split never depends on
how many scenes a run makes; `val_fraction` and `test_fraction` set the shares.

Bag contents (topic names from the config): camera/image rgb8, camera/camera_info, depth/image
32FC1 (optical-frame z in metres, NaN = nothing within far), labels/semantic mono8 (class ids of
config/classes.yaml, 255 = nothing), labels/robot mono8 (1 on any robot, else 0), lidar/points
(organised beams x columns, x y z intensity float32 in the `lidar` frame, NaN = no return),
events (x uint16, y uint16, t float64 seconds on the bag clock, p int8 +1/-1), joint_states
(every robot joint; velocities are exact derivatives), /tf_static (base_link -> camera optical
frame and LiDAR; world -> each fixed arm's '<name>/base_link'), /tf per frame (world ->
base_link, the moving rig, and world -> mobile robots' '<name>/base_link').
Failure 'drop' removes the messages of rgb / depth / lidar / events inside its gaps; CameraInfo,
labels, joint states and TF are never dropped (they are geometry and ground truth).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pybullet as p

from rmseg_ros.classes import ClassTable
from rmseg_ros.transforms import transform_from_xyz_rpy
from training import failures as F  # noqa: N812
from training.sim import bag_writer as bw
from training.sim.camera import Camera
from training.sim.config import SimConfig, SplitConfig
from training.sim.event_sim import Events, EventSimulator
from training.sim.geometry import R_BASE_OPTICAL, make_transform, matrix_from_quaternion
from training.sim.lidar import Lidar
from training.sim.scene import (
    HUSKY_WHEEL_RADIUS_M,
    Robot,
    Scene,
    arm_collides,
    body_aabb,
    build_scene,
    connect,
    disconnect,
    keep_out_spheres,
    set_joints,
)
from training.sim.trajectory import (
    CameraTrajectory,
    JointTrajectory,
    random_camera_trajectory,
    random_joint_trajectory,
    static_trajectory,
)

SPLITS = ('train', 'val', 'test')
FAILURE_STREAM = {name: 10 + i for i, name in enumerate(F.FAILURES)}
DROPPABLE = ('rgb', 'depth', 'lidar', 'events')


def split_of(scene_seed: int, cfg: SplitConfig | None = None) -> str:
    """'train', 'val' or 'test' from a hash of the seed (stable across runs and machines)."""
    cfg = cfg or SplitConfig()
    digest = hashlib.blake2b(str(int(scene_seed)).encode(), digest_size=8).digest()
    u = int.from_bytes(digest, 'little') / 2.0 ** 64
    if u < cfg.test_fraction:
        return 'test'
    if u < cfg.test_fraction + cfg.val_fraction:
        return 'val'
    return 'train'


def scene_seeds(seed: int, count: int, split: str | None, cfg: SplitConfig) -> list[int]:
    """`count` scene seeds from `seed` upwards; with a split, only seeds of that split."""
    out, s = [], int(seed)
    while len(out) < count:
        if split in (None, 'all') or split_of(s, cfg) == split:
            out.append(s)
        s += 1
    return out


def bag_path(out_dir: str | Path, seed: int, cfg: SplitConfig | None = None) -> Path:
    """out_dir/<split>/scene_<seed, 6 digits>: a rosbag2 directory (its .json sidecar beside it
    holds the scene's summary and is written last)."""
    return Path(out_dir) / split_of(seed, cfg) / f'scene_{int(seed):06d}'


def is_complete(out_dir: str | Path, seed: int, cfg: SplitConfig | None = None) -> bool:
    path = bag_path(out_dir, seed, cfg)
    return path.is_dir() and path.with_suffix('.json').is_file()


@dataclass
class FailureSpec:
    name: str
    params: dict[str, Any] = field(default_factory=dict)


def parse_failures(tokens: list[str], defaults: dict[str, dict[str, Any]]) -> list[FailureSpec]:
    """`NAME` or `NAME:key=value,key=value` (a value with '+' is a list: modalities=lidar+rgb;
    values are read as YAML scalars). Parameters start from the config's defaults."""
    import yaml

    specs = []
    for token in tokens:
        for part in filter(None, token.split(';')):
            name, _, rest = part.partition(':')
            name = name.strip()
            if name not in F.FAILURES:
                raise ValueError(f'unknown failure {name!r}; known: {", ".join(F.FAILURES)}')
            params = dict(defaults.get(name, {}))
            for item in filter(None, rest.split(',')):
                key, eq, value = item.partition('=')
                if not eq:
                    raise ValueError(f'failure parameter {item!r} of {name} is not key=value')
                parsed = [yaml.safe_load(v) for v in value.split('+')] if '+' in value \
                    else yaml.safe_load(value)
                params[key.strip()] = parsed
            specs.append(FailureSpec(name, params))
    return specs


@dataclass
class SceneResult:
    seed: int
    split: str
    path: str
    frames: int
    counts: dict[str, int]
    robots: list[str]
    objects: int
    brightness: float
    camera_moving: bool
    robot_motion: bool
    failures: list[dict[str, Any]]
    seconds: float
    timings_s: dict[str, float]

    @property
    def frames_per_s(self) -> float:
        return self.frames / max(self.seconds, 1e-9)


class _ActiveFailure:
    """A failure with its window of active frames and its own random stream."""

    def __init__(self, spec: FailureSpec, seed: int, frames: int) -> None:
        self.spec = spec
        self.rng = np.random.default_rng([seed, FAILURE_STREAM[spec.name]])
        params = dict(spec.params)
        fraction = float(params.pop('fraction', 1.0))
        length = round(np.clip(fraction, 0.0, 1.0) * frames)
        self.start = int(self.rng.integers(0, frames - length + 1))
        self.stop = self.start + length
        self.params = params

    def active(self, k: int) -> bool:
        return self.start <= k < self.stop

    def describe(self) -> dict[str, Any]:
        return {'name': self.spec.name, 'params': self.spec.params,
                'frames': [self.start, self.stop]}


@dataclass
class _Motion:
    arms: list[tuple[Any, JointTrajectory]]
    camera: CameraTrajectory


#: Arms keep this far (metres) from the camera's path, so they never fill the view.
CAMERA_CLEARANCE_M = 0.45


def _plan_motion(scene: Scene, cfg: SimConfig, seed: int, duration: float) -> _Motion:
    rng = np.random.default_rng([seed, 2])
    sc = cfg.scene
    moving_draw = rng.random()
    moving = {'static': False, 'moving': True}.get(sc.camera_motion,
                                                   moving_draw < sc.moving_camera_probability)
    for robot in scene.robots:
        if not robot.mobile:
            set_joints(scene.client, robot, robot.home)
    avoid = [body_aabb(r.body, scene.client) for r in scene.robots if not r.mobile]
    camera = random_camera_trajectory(rng, scene.target, scene.room, sc, moving, avoid,
                                      CAMERA_CLEARANCE_M + 0.2)
    eyes = [camera.eye(t) for t in np.linspace(0.0, duration, 16 if camera.moving else 1)]
    spheres = keep_out_spheres(scene.client, eyes, CAMERA_CLEARANCE_M)
    arms = []
    try:
        for robot in scene.robots:
            if robot.mobile:
                continue
            if sc.robot_motion:
                traj = random_joint_trajectory(
                    rng, robot.home, robot.lower, robot.upper, sc.joint_amplitude,
                    sc.segment_s, duration,
                    collides=lambda q, r=robot: arm_collides(scene, r, q,
                                                             keep_out=tuple(spheres)))
            else:
                traj = static_trajectory(robot.home)
            arms.append((robot, traj))
    finally:
        for body in spheres:
            p.removeBody(body, physicsClientId=scene.client)
    return _Motion(arms, camera)


def _pose_scene(scene: Scene, motion: _Motion, t: float, robot_motion: bool
                ) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Set every robot's state at time t; returns joint names, positions, velocities."""
    names, pos, vel = [], [], []
    for robot, traj in motion.arms:
        q, qd = traj.sample(t)
        set_joints(scene.client, robot, q)
        names += robot.joint_names
        pos.append(q)
        vel.append(qd)
    for robot in scene.robots:
        if not robot.mobile or scene.husky_path is None:
            continue
        path = scene.husky_path
        tt = t if robot_motion else 0.0
        xy, yaw, wheel = path.pose(tt)
        z = p.getBasePositionAndOrientation(robot.body, physicsClientId=scene.client)[0][2]
        p.resetBasePositionAndOrientation(
            robot.body, [xy[0], xy[1], z], [0, 0, np.sin(yaw / 2), np.cos(yaw / 2)],
            physicsClientId=scene.client)
        wheel_rate = path.speed / HUSKY_WHEEL_RADIUS_M if robot_motion else 0.0
        q = np.full(len(robot.joints), wheel)
        set_joints(scene.client, robot, q)
        names += robot.joint_names
        pos.append(q)
        vel.append(np.full(len(robot.joints), wheel_rate))
    cat = (lambda a: np.concatenate(a) if a else np.zeros(0))  # noqa: E731
    return names, cat(pos), cat(vel)


def robot_frame(robot: Robot) -> str:
    """TF frame of a robot's base: '<robot name>/base_link' (arms in /tf_static, mobile robots
    in /tf), so a bag with its JointState fully poses every robot."""
    return f'{robot.name}/base_link'


def _base_pose(scene: Scene, robot: Robot) -> np.ndarray:
    """T_world_base of the robot's URDF base link (pybullet reports the base's inertial frame,
    which is offset from the link frame by the URDF's inertial origin)."""
    c = scene.client
    pos, quat = p.getBasePositionAndOrientation(robot.body, physicsClientId=c)
    T_w_inertial = make_transform(matrix_from_quaternion(quat), pos)
    T_link_inertial = base_inertial_offset(robot.body, c)
    return T_w_inertial @ np.linalg.inv(T_link_inertial)


def base_inertial_offset(body: int, client: int) -> np.ndarray:
    """T_link_inertial of a body's base (the URDF <inertial><origin>)."""
    info = p.getDynamicsInfo(body, -1, physicsClientId=client)
    return make_transform(matrix_from_quaternion(info[4]), info[3])


def _apply_frame_failures(active: list[_ActiveFailure], k: int, data: dict[str, Any],
                          cam_hw: tuple[int, int], t_prev: int, t_now: int) -> None:
    h, w = cam_hw
    for f in active:
        if f.spec.name == 'drop' or not f.active(k):
            continue
        name, rng, prm = f.spec.name, f.rng, f.params
        if name in ('motion_blur', 'over_exposure', 'under_exposure', 'rgb_noise'):
            data['rgb'] = getattr(F, name)(data['rgb'], rng, **prm)
        elif name == 'depth_noise':
            data['depth'] = F.depth_noise(data['depth'], rng, **prm)
        elif name == 'pixel_loss':
            prm = dict(prm)
            modality = prm.pop('modality', 'rgb')
            fill = np.nan if modality == 'depth' else 0
            data[modality] = F.pixel_loss(data[modality], rng, fill=prm.pop('fill', fill), **prm)
        elif name == 'lidar_jitter':
            if data.get('lidar') is not None:
                xyz, inten = data['lidar']
                data['lidar'] = (F.lidar_jitter(xyz, rng, **prm), inten)
        elif name == 'low_res_events':
            ev = data['events']
            x, y, t, pol = F.low_res_events(ev.x, ev.y, ev.t_ns, ev.p, rng, width=w, height=h,
                                            **prm)
            data['events'] = Events(x, y, t, pol)
        elif name == 'event_noise':
            ev = data['events']
            rate = float(np.mean(prm.get('rate_hz', 2.0))) if isinstance(
                prm.get('rate_hz'), list) else float(prm.get('rate_hz', 2.0))
            x, y, t, pol = F.event_noise(ev.x, ev.y, ev.t_ns, ev.p, rng, rate_hz=rate * 1e-9,
                                         t_start=t_prev + 1, t_end=t_now + 1, width=w, height=h)
            data['events'] = Events(x, y, t, pol)


def record_scene(seed: int, cfg: SimConfig, out_dir: str | Path,
                 failures: list[FailureSpec] | None = None, storage: str | None = None,
                 frames: int = 50, classes: ClassTable | None = None,
                 on_frame: Callable[[], None] | None = None) -> SceneResult:
    """Render scene `seed` for `frames` frames into out_dir/<split>/scene_<seed>/ (rosbag2)."""
    t_start = time.perf_counter()
    storage = storage or cfg.storage
    classes = classes or ClassTable.load()
    failures = failures or []
    split = split_of(seed, cfg.split)
    final = bag_path(out_dir, seed, cfg.split)
    sidecar = final.with_suffix('.json')
    sidecar.unlink(missing_ok=True)  # written last: its presence marks a complete bag
    if final.exists():
        shutil.rmtree(final)
    final.parent.mkdir(parents=True, exist_ok=True)

    cam_cfg, top, fr = cfg.camera, cfg.topics, cfg.frames
    dt_ns = round(1e9 / cam_cfg.rate_hz)
    stamps = cfg.start_time_ns + dt_ns * np.arange(frames, dtype=np.int64)
    client = connect()
    timings = dict.fromkeys(('build', 'render', 'lidar', 'events', 'failures', 'write'), 0.0)
    try:
        tic = time.perf_counter()
        scene = build_scene(seed, cfg.scene, classes, cfg.lidar, client)
        motion = _plan_motion(scene, cfg, seed, frames * dt_ns * 1e-9 + 1.0)
        camera, lidar = Camera(cam_cfg), Lidar(cfg.lidar)
        events_sim = EventSimulator(cam_cfg.height, cam_cfg.width, cfg.events,
                                    np.random.default_rng([seed, 3]))
        active = [_ActiveFailure(s, seed, frames) for s in failures]
        keep = {m: np.ones(frames, bool) for m in DROPPABLE}
        for f in active:
            if f.spec.name == 'drop':
                prm = dict(f.params)
                mods = prm.pop('modalities', ['lidar'])
                for m in [mods] if isinstance(mods, str) else mods:
                    if m not in keep:
                        raise ValueError(f'drop: unknown modality {m!r}; known: {DROPPABLE}')
                    keep[m] &= F.drop_windows(stamps, f.rng, **prm)
        T_b_c = make_transform(R_BASE_OPTICAL, [0.0, 0.0, 0.0])
        T_b_l = transform_from_xyz_rpy(cfg.lidar.xyz, cfg.lidar.rpy)
        timings['build'] = time.perf_counter() - tic

        with bw.BagWriter(final, storage, cfg.compression) as bag:
            static = [(fr.base, fr.camera, T_b_c), (fr.base, fr.lidar, T_b_l)]
            static += [(fr.world, robot_frame(r), _base_pose(scene, r))
                       for r in scene.robots if not r.mobile]
            bag.write(top.tf_static, int(stamps[0]), bw.tf_msg(static, int(stamps[0])),
                      latched=True)
            for k in range(frames):
                t_ns, t_s = int(stamps[k]), k * dt_ns * 1e-9
                tic = time.perf_counter()
                ev_parts = []
                substeps = max(1, cfg.events.substeps)
                if k > 0 and substeps > 1:
                    for j in range(1, substeps):
                        ts = t_s - dt_ns * 1e-9 * (1 - j / substeps)
                        _pose_scene(scene, motion, ts, cfg.scene.robot_motion)
                        T_w_c = motion.camera.T_world_base(ts) @ T_b_c
                        rgb_j = camera.render(scene, T_w_c).rgb
                        ev_parts.append(events_sim.step(
                            rgb_j, t_ns - round(dt_ns * (1 - j / substeps))))
                names, q, qd = _pose_scene(scene, motion, t_s, cfg.scene.robot_motion)
                T_w_b = motion.camera.T_world_base(t_s)
                frame = camera.render(scene, T_w_b @ T_b_c)
                tac = time.perf_counter()
                timings['render'] += tac - tic
                ev_parts.append(events_sim.step(frame.rgb, t_ns))
                events = Events.concatenate(ev_parts)
                tic = time.perf_counter()
                timings['events'] += tic - tac
                scan = None
                if k % max(1, cfg.lidar.every_n_frames) == 0:
                    s = lidar.scan(scene, T_w_b @ T_b_l)
                    scan = (s.xyz, s.intensity)
                tac = time.perf_counter()
                timings['lidar'] += tac - tic
                data: dict[str, Any] = {'rgb': frame.rgb, 'depth': frame.depth, 'lidar': scan,
                                        'events': events}
                t_prev = int(stamps[k - 1]) if k else t_ns - dt_ns
                _apply_frame_failures(active, k, data, (cam_cfg.height, cam_cfg.width), t_prev,
                                      t_ns)
                tic = time.perf_counter()
                timings['failures'] += tic - tac

                cam = fr.camera
                if keep['rgb'][k]:
                    bag.write(top.rgb, t_ns, bw.image_msg(data['rgb'], 'rgb8', t_ns, cam))
                bag.write(top.camera_info, t_ns,
                          bw.camera_info_msg(camera.intrinsics, t_ns, cam))
                if keep['depth'][k]:
                    bag.write(top.depth, t_ns, bw.image_msg(data['depth'], '32FC1', t_ns, cam))
                if data['lidar'] is not None and keep['lidar'][k]:
                    bag.write(top.lidar, t_ns, bw.lidar_msg(*data['lidar'], t_ns, fr.lidar))
                if keep['events'][k]:
                    ev = data['events']
                    bag.write(top.event, t_ns, bw.events_msg(
                        bw.events_array(ev.x, ev.y, ev.t_ns, ev.p), t_ns, cam))
                bag.write(top.semantic, t_ns, bw.image_msg(frame.labels, 'mono8', t_ns, cam))
                bag.write(top.robot, t_ns,
                          bw.image_msg(frame.robot_mask, 'mono8', t_ns, cam))
                bag.write(top.joint_states, t_ns, bw.joint_state_msg(names, q, qd, t_ns))
                if top.tf:
                    moving = [(fr.world, fr.base, T_w_b)]
                    moving += [(fr.world, robot_frame(r), _base_pose(scene, r))
                               for r in scene.robots if r.mobile]
                    bag.write(top.tf, t_ns, bw.tf_msg(moving, t_ns))
                timings['write'] += time.perf_counter() - tic
                if on_frame is not None:
                    on_frame()
            counts = dict(bag.counts)
        result = SceneResult(
            seed=seed, split=split, path=str(final), frames=frames, counts=counts,
            robots=[r.name for r in scene.robots], objects=len(scene.objects),
            brightness=scene.light.brightness, camera_moving=motion.camera.moving,
            robot_motion=cfg.scene.robot_motion, failures=[f.describe() for f in active],
            seconds=time.perf_counter() - t_start, timings_s=timings)
    finally:
        disconnect(client)
    sidecar.write_text(json.dumps(asdict(result), indent=1, default=_jsonable))
    return result


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)
