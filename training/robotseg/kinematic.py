"""Robot masks from kinematics: the robot rendered from its URDF, joint states and TF (ROS-free).

A user segmenting their own robot has its URDF, `/joint_states` and TF; rendering the robot
where they put it gives its mask in every camera frame without a manual label (the URDF
self-filter of point clouds, turned into RobotSeg's `labels/robot`). The pieces:

- `JointTrack`: joint positions by name over time, linearly interpolated to a camera stamp
  (continuous joints the short way round), refusing stamps too far from any sample;
- `TimedTransforms`: /tf_static plus /tf over time; `lookup(target, source, t)` interpolates
  each moving edge (translation linear, rotation slerp) and chains the tree;
- `gl_projection` (training.sim.camera, shared with the simulator) turns CameraInfo's K into the
  OpenGL matrix TinyRenderer needs, so pixel (u, v) sees u = fx X / Z + cx, v = fy Y / Z + cy;
  `distort_mask` applies CameraInfo's distortion to a mask rendered for the pinhole K;
- `KinematicRenderer`: the robots alone in a headless pybullet client, posed in the camera's
  frame, rendered with TinyRenderer; the segmentation buffer is the mask.

The mask is the robot's silhouette: joints and TF cannot say what stands in front of the robot,
so a part hidden behind an object is labelled robot (a camera's ground truth labels only what
is visible).
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from rmseg_ros.camera import CameraIntrinsics
from rmseg_ros.transforms import TransformTree, transform_from_xyz_quat
from training.sim.camera import gl_projection

__all__ = ['JointTrack', 'KinematicRenderer', 'RobotModel', 'TimedTransforms',
           'calibration_error', 'distort_mask', 'gl_projection', 'interpolate', 'mask_iou',
           'resolve_packages']


# ----------------------------------------------------------------------------- time series

def interpolate(stamps: np.ndarray, values: np.ndarray, t: int, *, wrap: bool = False,
                max_gap_ns: int = 500_000_000, max_extrapolation_ns: int = 50_000_000
                ) -> float | None:
    """Value at stamp t from samples (sorted stamps): linear between the two around t, held
    within `max_extrapolation_ns` outside the samples, None when no sample is close enough or
    the two around t are more than `max_gap_ns` apart (a dropout is not a motion). `wrap`:
    an angle of a continuous joint, interpolated the short way round."""
    stamps = np.asarray(stamps, dtype=np.int64)
    if stamps.size == 0:
        return None
    i = int(np.searchsorted(stamps, t, side='left'))
    if i < stamps.size and stamps[i] == t:
        return float(values[i])
    if i == 0:
        return float(values[0]) if stamps[0] - t <= max_extrapolation_ns else None
    if i == stamps.size:
        return float(values[-1]) if t - stamps[-1] <= max_extrapolation_ns else None
    t0, t1 = int(stamps[i - 1]), int(stamps[i])
    if t1 - t0 > max_gap_ns:
        return None
    a, b = float(values[i - 1]), float(values[i])
    if wrap:
        b = a + (b - a + np.pi) % (2 * np.pi) - np.pi
    return a + (b - a) * (t - t0) / (t1 - t0)


class JointTrack:
    """Joint positions by name from JointState messages (names and order may change)."""

    def __init__(self, max_gap_ns: int = 500_000_000,
                 max_extrapolation_ns: int = 50_000_000) -> None:
        self.max_gap_ns = int(max_gap_ns)
        self.max_extrapolation_ns = int(max_extrapolation_ns)
        self._raw: dict[str, list[tuple[int, float]]] = {}
        self._series: dict[str, tuple[np.ndarray, np.ndarray]] | None = None

    def add(self, stamp_ns: int, names: Iterable[str], positions: Iterable[float]) -> None:
        names, positions = list(names), list(positions)
        if len(names) != len(positions):
            raise ValueError(f'JointState at {stamp_ns}: {len(names)} names but '
                             f'{len(positions)} positions')
        for name, value in zip(names, positions, strict=True):
            if np.isfinite(value):
                self._raw.setdefault(str(name), []).append((int(stamp_ns), float(value)))
        self._series = None

    @property
    def names(self) -> set[str]:
        return set(self._raw)

    def _ready(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        if self._series is None:
            self._series = {}
            for name, samples in self._raw.items():
                samples.sort(key=lambda s: s[0])
                arr = np.asarray(samples)
                self._series[name] = (arr[:, 0].astype(np.int64), arr[:, 1])
        return self._series

    def at(self, t_ns: int, wrap: Iterable[str] = ()) -> dict[str, float]:
        """Positions at t of every joint with samples close enough (others are left out)."""
        wrap = set(wrap)
        out = {}
        for name, (stamps, values) in self._ready().items():
            v = interpolate(stamps, values, t_ns, wrap=name in wrap, max_gap_ns=self.max_gap_ns,
                            max_extrapolation_ns=self.max_extrapolation_ns)
            if v is not None:
                out[name] = v
        return out


def _slerp(q0: np.ndarray, q1: np.ndarray, s: float) -> np.ndarray:
    q0, q1 = q0 / np.linalg.norm(q0), q1 / np.linalg.norm(q1)
    dot = float(q0 @ q1)
    if dot < 0:
        q1, dot = -q1, -dot
    if dot > 0.9995:
        q = q0 + s * (q1 - q0)
        return q / np.linalg.norm(q)
    theta = np.arccos(dot)
    return (np.sin((1 - s) * theta) * q0 + np.sin(s * theta) * q1) / np.sin(theta)


class TimedTransforms:
    """/tf_static edges plus /tf edges over time (a moving base, a camera on an arm)."""

    def __init__(self, max_gap_ns: int = 500_000_000,
                 max_extrapolation_ns: int = 50_000_000) -> None:
        self.static = TransformTree()
        self.max_gap_ns = int(max_gap_ns)
        self.max_extrapolation_ns = int(max_extrapolation_ns)
        # (parent, child) -> samples (stamp, xyz, quat xyzw)
        self._moving: dict[tuple[str, str], list[tuple[int, np.ndarray, np.ndarray]]] = {}

    def add_static(self, tf_message) -> None:
        self.static.add_message(tf_message)

    def add(self, tf_message) -> None:
        """Every TransformStamped of a /tf message, at its own header stamp."""
        for st in tf_message.transforms:
            t, q = st.transform.translation, st.transform.rotation
            key = (st.header.frame_id.lstrip('/'), st.child_frame_id.lstrip('/'))
            stamp = int(st.header.stamp.sec) * 1_000_000_000 + int(st.header.stamp.nanosec)
            self.add_sample(key[0], key[1], stamp, (t.x, t.y, t.z), (q.x, q.y, q.z, q.w))

    def add_sample(self, parent: str, child: str, stamp_ns: int, xyz, quat_xyzw) -> None:
        self._moving.setdefault((parent.lstrip('/'), child.lstrip('/')), []).append(
            (int(stamp_ns), np.asarray(xyz, np.float64), np.asarray(quat_xyzw, np.float64)))

    @property
    def frames(self) -> set[str]:
        return self.static.frames | {f for key in self._moving for f in key}

    def _edge_at(self, samples: list, t: int) -> np.ndarray | None:
        samples.sort(key=lambda s: s[0])
        stamps = np.array([s[0] for s in samples], dtype=np.int64)
        i = int(np.searchsorted(stamps, t, side='left'))
        if i < stamps.size and stamps[i] == t:
            return transform_from_xyz_quat(samples[i][1], samples[i][2])
        if i == 0 or i == stamps.size:
            j = 0 if i == 0 else -1
            if abs(int(stamps[j]) - t) > self.max_extrapolation_ns:
                return None
            return transform_from_xyz_quat(samples[j][1], samples[j][2])
        (t0, p0, q0), (t1, p1, q1) = samples[i - 1], samples[i]
        if t1 - t0 > self.max_gap_ns:
            return None
        s = (t - t0) / (t1 - t0)
        return transform_from_xyz_quat(p0 + s * (p1 - p0), _slerp(q0, q1, s))

    def tree_at(self, t_ns: int) -> TransformTree:
        """The static tree with every moving edge that has samples close enough to t."""
        tree = self.static.copy()
        for (parent, child), samples in self._moving.items():
            T = self._edge_at(samples, t_ns)
            if T is not None:
                tree.add(parent, child, T)
        return tree

    def lookup(self, target: str, source: str, t_ns: int) -> np.ndarray:
        """T_target_source at t (LookupError when the chain is broken at that time)."""
        return self.tree_at(t_ns).lookup(target, source)


# ----------------------------------------------------------------------------- geometry

def calibration_error(rotation_deg: float, translation_m: float,
                      rng: np.random.Generator) -> np.ndarray:
    """A rigid error of exactly `rotation_deg` about a random axis and `translation_m` along a
    random direction (T_cam_true_cam_assumed): a miscalibrated camera mount."""
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    direction = rng.normal(size=3)
    direction /= np.linalg.norm(direction)
    R, _ = cv2.Rodrigues(axis * np.deg2rad(rotation_deg))
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = direction * translation_m
    return T


def distort_mask(mask: np.ndarray, intr: CameraIntrinsics) -> np.ndarray:
    """A mask rendered for the pinhole K, moved to where the distorted camera sees it
    (CameraInfo D: plumb_bob / rational_polynomial, or equidistant); unchanged without D."""
    D = np.asarray(intr.D, np.float64).reshape(-1)
    if D.size == 0 or not D.any():
        return mask
    h, w = mask.shape
    u, v = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
    pts = np.stack([u.ravel(), v.ravel()], 1).reshape(-1, 1, 2)
    K = np.asarray(intr.K, np.float64)
    if intr.distortion_model == 'equidistant':
        und = cv2.fisheye.undistortPoints(pts, K, D[:4], P=K)
    elif intr.distortion_model in ('plumb_bob', 'rational_polynomial', ''):
        und = cv2.undistortPoints(pts, K, D, P=K)
    else:
        raise ValueError(f'distortion model {intr.distortion_model!r} is not supported')
    und = und.reshape(h, w, 2).astype(np.float32)
    return cv2.remap(mask, und[..., 0], und[..., 1], cv2.INTER_NEAREST,
                     borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def mask_iou(pred: np.ndarray, truth: np.ndarray) -> tuple[int, int]:
    """(intersection, union) pixel counts of two masks (non-zero = robot), to pool over frames."""
    a, b = np.asarray(pred) > 0, np.asarray(truth) > 0
    return int(np.count_nonzero(a & b)), int(np.count_nonzero(a | b))


# ----------------------------------------------------------------------------- rendering

_FILENAME = re.compile(r'filename=(["\'])(.*?)\1')


def resolve_packages(urdf_text: str, package_paths: Mapping[str, str | Path],
                     base_dir: str | Path | None = None) -> str:
    """Every mesh `filename` made absolute, so the URDF loads from anywhere: `package://NAME/x`
    -> DIR/x for `--package-path NAME=DIR`, else <base_dir>/NAME/x when that exists (where
    pybullet itself would look); `file://` stripped; relative paths against `base_dir`."""
    base = Path(base_dir).resolve() if base_dir is not None else None

    def resolve(value: str) -> str:
        if value.startswith('package://'):
            name, _, rest = value[len('package://'):].partition('/')
            if name in package_paths:
                return str(Path(package_paths[name]).resolve() / rest)
            if base is not None and (base / name / rest).exists():
                return str(base / name / rest)
            return value
        if value.startswith('file://'):
            return value[len('file://'):]
        if base is not None and not Path(value).is_absolute():
            return str(base / value)
        return value

    return _FILENAME.sub(lambda m: f'filename={m.group(1)}{resolve(m.group(2))}{m.group(1)}',
                         urdf_text)


@dataclass
class RobotModel:
    urdf: Path | None = None  # URDF file
    base_frame: str | None = None  # TF frame of the URDF's root link; None: the link's name
    text: str | None = None  # URDF text instead of a file (robot_description from a bag)


@dataclass
class _Loaded:
    body: int
    base_frame: str
    T_link_inertial: np.ndarray
    joints: dict[str, int]  # movable joint name -> pybullet index
    continuous: set[str]


class KinematicRenderer:
    """The robots alone in a headless pybullet client, rendered from the camera."""

    def __init__(self, robots: list[RobotModel],
                 package_paths: Mapping[str, str | Path] | None = None) -> None:
        import pybullet as p

        from training.sim.record import base_inertial_offset

        self._p = p
        self.client = p.connect(p.DIRECT)
        self.robots: list[_Loaded] = []
        package_paths = dict(package_paths or {})
        try:
            for model in robots:
                body = self._load(model, package_paths)
                joints, continuous = {}, set()
                for j in range(p.getNumJoints(body, physicsClientId=self.client)):
                    info = p.getJointInfo(body, j, physicsClientId=self.client)
                    if info[2] in (p.JOINT_REVOLUTE, p.JOINT_PRISMATIC):
                        name = info[1].decode()
                        joints[name] = j
                        if info[2] == p.JOINT_REVOLUTE and info[9] < info[8]:
                            continuous.add(name)
                root = p.getBodyInfo(body, physicsClientId=self.client)[0].decode()
                self.robots.append(_Loaded(body, (model.base_frame or root).lstrip('/'),
                                           base_inertial_offset(body, self.client), joints,
                                           continuous))
        except BaseException:
            self.close()
            raise

    def _load(self, model: RobotModel, package_paths: Mapping[str, str | Path]) -> int:
        p = self._p
        if model.text is not None:
            text, base = model.text, None
        else:
            urdf = Path(model.urdf).resolve()
            text, base = urdf.read_text(encoding='utf-8'), urdf.parent
        with tempfile.TemporaryDirectory(prefix='rmseg_urdf_') as tmp:
            path = Path(tmp) / 'robot.urdf'
            path.write_text(resolve_packages(text, package_paths, base), encoding='utf-8')
            from training.sim.scene import _quiet_native_output

            with _quiet_native_output():  # links without inertia print a line each
                return p.loadURDF(str(path), useFixedBase=True, physicsClientId=self.client)

    @property
    def joint_names(self) -> set[str]:
        return {n for r in self.robots for n in r.joints}

    @property
    def continuous_joints(self) -> set[str]:
        return {n for r in self.robots for n in r.continuous}

    def render(self, joints: Mapping[str, float], T_cam_bases: list[np.ndarray],
               intr: CameraIntrinsics, near: float = 0.02, far: float = 20.0) -> np.ndarray:
        """uint8 mask (1 = robot) of the robots posed by `joints` with their base links at
        T_cam_bases[i] (base -> camera optical frame), as the camera `intr` sees them."""
        from training.sim.geometry import quaternion_from_matrix

        p, c = self._p, self.client
        for robot, T_cam_base in zip(self.robots, T_cam_bases, strict=True):
            T = np.asarray(T_cam_base, np.float64) @ robot.T_link_inertial
            p.resetBasePositionAndOrientation(robot.body, T[:3, 3].tolist(),
                                              quaternion_from_matrix(T[:3, :3]).tolist(),
                                              physicsClientId=c)
            for name, index in robot.joints.items():
                if name in joints:
                    p.resetJointState(robot.body, index, float(joints[name]),
                                      physicsClientId=c)
        w, h = int(intr.width), int(intr.height)
        view = np.diag([1.0, -1.0, -1.0, 1.0]).T.flatten().tolist()  # GL eye = optical frame
        proj = gl_projection(intr, near, far).T.flatten().tolist()
        _, _, _, _, seg = p.getCameraImage(w, h, view, proj, renderer=p.ER_TINY_RENDERER,
                                           physicsClientId=c)
        mask = (np.asarray(seg, dtype=np.int32).reshape(h, w) >= 0).astype(np.uint8)
        return distort_mask(mask, intr)

    def close(self) -> None:
        if self.client >= 0:
            self._p.disconnect(physicsClientId=self.client)
            self.client = -1

    def __enter__(self) -> KinematicRenderer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
