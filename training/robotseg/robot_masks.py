"""`rmseg-train robot-masks`: robot masks for every camera frame of a bag, from kinematics.

    rmseg-train robot-masks --bags BAG... [--urdf FILE ... [--base-frame FRAME ...]]
                            [--package-path NAME=DIR ...] [--sim-robots] [--label-dir labels]
                            [--iou-against labels/robot] [--calib-error-deg 1 --calib-error-cm 1]

For each frame of the camera topic: the joint states interpolated to its stamp, the camera pose
relative to each robot's base from /tf_static (+ /tf when something moves) at that stamp, and
the CameraInfo; the robot is rendered (training.robotseg.kinematic) and the mask written as
<bag>/<label-dir>/robot/<stamp_ns>.png (mono8, 1 = robot), the layout the dataset reads with
`label_png_dir: labels` and RobotSeg reads as a robot topic. Without --urdf the bag's
`robot_description` (std_msgs/String) is used. `--sim-robots` takes the robots of a simulator
bag from its sidecar <bag>.json (pybullet_data URDFs, frames '<name>/base_link').

`--iou-against TOPIC` scores the masks against a mask topic of the bag (the simulator's
`labels/robot`), with the exact calibration and with the camera pose off by
`--calib-error-deg` degrees about a random axis and `--calib-error-cm` along a random direction
(a new draw per bag and repetition), and prints `robot_mask_iou_exact: V %` and
`robot_mask_iou_calib_err: V %` (intersection over union pooled over every frame).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from rmseg_ros import conversions
from rmseg_ros.camera import CameraIntrinsics

from .kinematic import (
    JointTrack,
    KinematicRenderer,
    RobotModel,
    TimedTransforms,
    calibration_error,
    mask_iou,
)

log = logging.getLogger('rmseg-train.robot-masks')


@dataclass
class Topics:
    image: str = 'camera/image'
    camera_info: str = 'camera/camera_info'
    joint_states: str = 'joint_states'
    tf: str = '/tf'
    tf_static: str = '/tf_static'
    robot_description: str = 'robot_description'


@dataclass
class BagKinematics:
    """What a bag says about where the robot is and how the camera sees it."""

    frames: list[int]  # camera stamps (ns), sorted
    camera: dict[int, CameraIntrinsics]  # CameraInfo by stamp
    camera_frame: str
    joints: JointTrack
    tf: TimedTransforms
    robot_description: str | None = None
    truth: dict[int, np.ndarray] = field(default_factory=dict)  # masks of `truth_topic`

    def camera_at(self, stamp: int) -> CameraIntrinsics:
        """The CameraInfo of this stamp, else the latest before it (else the first)."""
        if stamp in self.camera:
            return self.camera[stamp]
        before = [s for s in self.camera if s <= stamp]
        return self.camera[max(before) if before else min(self.camera)]


def _norm(topic: str) -> str:
    return topic.lstrip('/')


def read_bag(bag: str | Path, topics: Topics | None = None,
             truth_topic: str | None = None) -> BagKinematics:
    from rosbags.highlevel import AnyReader

    t = topics or Topics()
    image_stamps: set[int] = set()
    info_stamps: set[int] = set()
    camera: dict[int, CameraIntrinsics] = {}
    frame_id = ''
    joints, tf = JointTrack(), TimedTransforms()
    description = None
    truth: dict[int, np.ndarray] = {}
    with AnyReader([Path(bag)]) as reader:
        want = {_norm(x) for x in (t.image, t.camera_info, t.joint_states, t.tf, t.tf_static,
                                   t.robot_description, truth_topic or '')} - {''}
        conns = [c for c in reader.connections if _norm(c.topic) in want]
        for conn, _, raw in reader.messages(connections=conns):
            topic = _norm(conn.topic)
            if topic == _norm(t.image):
                # only the header is needed: the stamps of the frames to label
                msg = reader.deserialize(raw, conn.msgtype)
                image_stamps.add(conversions.stamp_ns(msg))
                frame_id = frame_id or msg.header.frame_id
                continue
            msg = reader.deserialize(raw, conn.msgtype)
            if topic == _norm(t.camera_info):
                stamp = conversions.stamp_ns(msg)
                camera[stamp] = conversions.camera_info_to_intrinsics(msg)
                info_stamps.add(stamp)
                frame_id = msg.header.frame_id or frame_id
            elif topic == _norm(t.joint_states):
                joints.add(conversions.stamp_ns(msg), msg.name, msg.position)
            elif topic == _norm(t.tf_static):
                tf.add_static(msg)
            elif topic == _norm(t.tf):
                tf.add(msg)
            elif topic == _norm(t.robot_description):
                description = str(msg.data)
            elif truth_topic and topic == _norm(truth_topic):
                truth[conversions.stamp_ns(msg)] = conversions.image_to_numpy(msg)
    if not camera:
        raise ValueError(f'{bag}: no CameraInfo on {t.camera_info!r}')
    frames = sorted(image_stamps or info_stamps)
    return BagKinematics(frames, camera, frame_id.lstrip('/'), joints, tf, description, truth)


def sim_robots(bag: str | Path) -> list[RobotModel]:
    """The robots of a simulator bag (its sidecar <bag>.json), as the simulator loads them."""
    from training.sim.scene import DATA, ROBOT_SPECS

    sidecar = Path(bag).with_suffix('.json')
    if not sidecar.is_file():
        raise FileNotFoundError(f'{sidecar}: no simulator sidecar (is {bag} a sim bag?)')
    names = json.loads(sidecar.read_text())['robots']
    for name in names:
        if ROBOT_SPECS[name].scale != 1.0:
            raise ValueError(f'{name}: scaled URDFs are not supported')
    return [RobotModel(DATA / ROBOT_SPECS[name].urdf, f'{name}/base_link') for name in names]


@dataclass
class MaskStats:
    frames: int = 0
    skipped: dict[str, int] = field(default_factory=lambda: {'joints': 0, 'tf': 0})
    missing_joints: set[str] = field(default_factory=set)


def render_bag(kin: BagKinematics, renderer: KinematicRenderer,
               camera_error: np.ndarray | None = None, near: float = 0.02, far: float = 20.0,
               stats: MaskStats | None = None):
    """Yield (stamp, mask) for every frame whose joints and TF are known at its stamp.
    `camera_error` (T_cam_true_cam_assumed) moves the camera by a calibration error."""
    stats = stats if stats is not None else MaskStats()
    wanted = renderer.joint_names
    wrap = renderer.continuous_joints
    never = wanted - kin.joints.names  # not in joint_states at all: held at the URDF's zero
    if never - stats.missing_joints:
        log.warning('joints never in joint_states, held at 0: %s', sorted(never))
        stats.missing_joints |= never
    for stamp in kin.frames:
        joints = kin.joints.at(stamp, wrap)
        if (wanted - never) - set(joints):  # published, but not near this stamp
            stats.skipped['joints'] += 1
            continue
        try:
            tree = kin.tf.tree_at(stamp)
            poses = [tree.lookup(kin.camera_frame, r.base_frame) for r in renderer.robots]
        except LookupError as exc:
            stats.skipped['tf'] += 1
            log.debug('frame %d: %s', stamp, exc)
            continue
        if camera_error is not None:
            poses = [np.linalg.inv(camera_error) @ T for T in poses]
        stats.frames += 1
        yield stamp, renderer.render(joints, poses, kin.camera_at(stamp), near, far)


def write_png(path: Path, mask: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f'.{path.stem}.{os.getpid()}.tmp.png')
    if not cv2.imwrite(str(tmp), mask):
        raise OSError(f'cannot write {tmp}')
    tmp.replace(path)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog='rmseg-train robot-masks',
                                 description=__doc__.splitlines()[0])
    ap.add_argument('--bags', nargs='+', required=True, help='rosbag2 directories')
    ap.add_argument('--urdf', action='append', default=[],
                    help='robot URDF (repeat for several robots); default: the bag\'s '
                         'robot_description')
    ap.add_argument('--base-frame', action='append', default=[],
                    help='TF frame of each URDF\'s root link, in --urdf order (default: the '
                         'root link\'s name)')
    ap.add_argument('--package-path', action='append', default=[], metavar='NAME=DIR',
                    help='where package://NAME/ meshes live (repeatable)')
    ap.add_argument('--sim-robots', action='store_true',
                    help='simulator bags: the robots named in each bag\'s sidecar JSON')
    ap.add_argument('--label-dir', default='labels',
                    help='PNGs go to <bag>/<label-dir>/robot/<stamp_ns>.png')
    ap.add_argument('--image-topic', default='camera/image')
    ap.add_argument('--camera-info-topic', default='camera/camera_info')
    ap.add_argument('--joint-states-topic', default='joint_states')
    ap.add_argument('--near', type=float, default=0.02, help='near clip plane (m)')
    ap.add_argument('--far', type=float, default=20.0, help='far clip plane (m)')
    ap.add_argument('--iou-against', metavar='TOPIC',
                    help='score against this mask topic of the bag (e.g. labels/robot)')
    ap.add_argument('--calib-error-deg', type=float, default=1.0)
    ap.add_argument('--calib-error-cm', type=float, default=1.0)
    ap.add_argument('--calib-error-draws', type=int, default=4,
                    help='random calibration errors per bag (IoU pooled over all)')
    ap.add_argument('--seed', type=int, default=0, help='seed of the calibration errors')
    ap.add_argument('--no-write', action='store_true', help='score only, write no PNG')
    ap.add_argument('--write-calib-error', action='store_true',
                    help='write masks rendered with one random calibration error per bag '
                         '(--calib-error-deg / --calib-error-cm, --seed) instead of the exact '
                         'ones: the self-filter of a robot whose camera calibration is off')
    return ap


def _robots(opts: argparse.Namespace, bag: Path, kin: BagKinematics) -> list[RobotModel]:
    if opts.sim_robots:
        return sim_robots(bag)
    frames = list(opts.base_frame)
    if opts.urdf:
        if frames and len(frames) != len(opts.urdf):
            raise ValueError('give one --base-frame per --urdf (or none)')
        return [RobotModel(Path(u), frames[i] if frames else None)
                for i, u in enumerate(opts.urdf)]
    if kin.robot_description is None:
        raise ValueError(f'{bag}: no --urdf and no robot_description in the bag')
    return [RobotModel(None, frames[0] if frames else None, kin.robot_description)]


def make_masks(opts: argparse.Namespace, out_root: str | Path | None = None) -> dict[str, Any]:
    """Render (and write, unless opts.no_write) the masks of every bag of `opts` (the parsed
    `rmseg-train robot-masks` options); with opts.iou_against, score them. Returns the pooled
    figures: frames written, frames scored, IoU (%) exact and with the calibration error."""
    packages = {}
    for item in opts.package_path:
        name, sep, path = item.partition('=')
        if not sep or not name:
            raise ValueError(f'--package-path expects NAME=DIR, got {item!r}')
        packages[name] = path
    topics = Topics(image=opts.image_topic, camera_info=opts.camera_info_topic,
                    joint_states=opts.joint_states_topic)
    exact, calib = np.zeros(2, np.int64), np.zeros(2, np.int64)
    scored = written = 0
    for b, bag in enumerate(Path(x) for x in opts.bags):
        kin = read_bag(bag, topics, opts.iou_against)
        out_dir = (Path(out_root) / bag.name if out_root else bag) / opts.label_dir / 'robot'
        stats = MaskStats()
        rng = np.random.default_rng([opts.seed, b])
        # --write-calib-error: the written masks come from one drawn calibration error
        write_err = calibration_error(opts.calib_error_deg, opts.calib_error_cm / 100.0, rng) \
            if opts.write_calib_error else None
        with KinematicRenderer(_robots(opts, bag, kin), packages) as renderer:
            for stamp, mask in render_bag(kin, renderer, write_err, opts.near, opts.far, stats):
                if not opts.no_write:
                    write_png(out_dir / f'{stamp}.png', mask)
                    written += 1
                if opts.iou_against and stamp in kin.truth and write_err is None:
                    exact += mask_iou(mask, kin.truth[stamp])
                    scored += 1
            if opts.iou_against:
                if write_err is not None:  # the exact render is scored without writing it
                    for stamp, mask in render_bag(kin, renderer, None, opts.near, opts.far):
                        if stamp in kin.truth:
                            exact += mask_iou(mask, kin.truth[stamp])
                            scored += 1
                for _ in range(opts.calib_error_draws):
                    err = calibration_error(opts.calib_error_deg, opts.calib_error_cm / 100.0,
                                            rng)
                    for stamp, mask in render_bag(kin, renderer, err, opts.near, opts.far):
                        if stamp in kin.truth:
                            calib += mask_iou(mask, kin.truth[stamp])
        print(f'{bag}: {stats.frames} of {len(kin.frames)} frames'
              f'{"" if opts.no_write else f" -> {out_dir}"}; skipped: {stats.skipped}',
              file=sys.stderr)
    return {'bags': len(opts.bags), 'frames_written': written, 'frames_scored': scored,
            'iou_exact': 100.0 * exact[0] / max(exact[1], 1) if scored else None,
            'iou_calib_error': 100.0 * calib[0] / max(calib[1], 1) if scored else None,
            'calib_error_deg': opts.calib_error_deg, 'calib_error_cm': opts.calib_error_cm,
            'calib_error_draws': opts.calib_error_draws}


def run(args: argparse.Namespace, extra: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format='%(name)s: %(message)s', stream=sys.stderr)
    opts = build_parser().parse_args([a for a in extra if a != '--'])
    try:
        res = make_masks(opts, getattr(args, 'out', None))
    except ValueError as exc:
        raise SystemExit(str(exc)) from exc
    if opts.iou_against:
        if not res['frames_scored']:
            print(f'no frame has a mask on {opts.iou_against!r} to score against',
                  file=sys.stderr)
            return 1
        print(f'robot_mask_frames: {res["frames_scored"]} frames')
        print(f'robot_mask_iou_exact: {res["iou_exact"]:.2f} %')
        print(f'robot_mask_iou_calib_err: {res["iou_calib_error"]:.2f} % '
              f'({opts.calib_error_deg:g} deg, {opts.calib_error_cm:g} cm, '
              f'{opts.calib_error_draws} draws per bag)')
    return 0
