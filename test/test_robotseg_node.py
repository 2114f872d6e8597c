"""robotseg_node across processes over real DDS: a bag replayed by bag_replay_node (another
process) feeds the node (a third process) a robot clip -> masks arrive with the source headers;
then frames published here show that the Trigger service, a backwards stamp jump and a scene cut
reset the memory (seen in the node's /diagnostics)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from rmseg_ros.models.robotseg import RobotSegConfig, RobotSegModel, save_robotseg

pytestmark = pytest.mark.filterwarnings('ignore::DeprecationWarning:lark.*')

H, W = 48, 64
K = 3
T0 = 1_700_000_000 * 10**9
FRAME_ID = 'camera_optical_frame'
N_BAG = 8


def robot_clip(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    base = (rng.random((H, W, 3)) * 30 + 40).astype(np.uint8)
    frames = []
    for t in range(n):
        img = base.copy()
        a = 0.8 + 0.1 * t
        end = (int(W / 2 + 18 * np.cos(a)), int(H - 4 - 18 * np.sin(a)))
        cv2.line(img, (W // 2, H - 2), end, (220, 220, 230), 4)
        frames.append(img)
    return frames


def write_clip_bag(path: Path, frames: list[np.ndarray]) -> list[int]:
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    from rmseg_ros import conversions

    ts = get_typestore(Stores.ROS2_KILTED)
    stamps = []
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        conn = writer.add_connection('/camera/image', 'sensor_msgs/msg/Image', typestore=ts)
        for i, f in enumerate(frames):
            stamp = T0 + i * 100_000_000
            header = ts.types['std_msgs/msg/Header'](
                stamp=ts.types['builtin_interfaces/msg/Time'](sec=stamp // 10**9,
                                                              nanosec=stamp % 10**9),
                frame_id=FRAME_ID)
            msg = conversions.numpy_to_image(f, 'rgb8', header, msg_cls=ts)
            writer.write(conn, stamp, bytes(ts.serialize_cdr(msg, 'sensor_msgs/msg/Image')))
            stamps.append(stamp)
    return stamps


def tiny_checkpoint(path: Path) -> Path:
    torch.manual_seed(0)
    cfg = RobotSegConfig(widths=(8, 8, 16, 16), depths=(1, 1, 1, 1), dim=16, memory_dim=8,
                         heads=2, attention_layers=1, upsample_dim=8, object_tokens=2,
                         memory_size=K)
    save_robotseg(path, RobotSegModel(cfg), (H, W), {'variant': 'test'})
    return path


class Probe:
    """Publisher, subscribers and the reset client in this process."""

    def __init__(self, context) -> None:
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.node import Node
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image
        from std_srvs.srv import Trigger

        self.node = Node('robotseg_probe', context=context)
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        reliable = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
        self.masks: list = []
        self.overlays: list = []
        self.diag: list[dict[str, str]] = []
        self.pub = self.node.create_publisher(Image, '/camera/image', reliable)
        self.node.create_subscription(Image, '/robotseg/robot_mask', self.masks.append,
                                      reliable)
        self.node.create_subscription(Image, '/robotseg/overlay', self.overlays.append,
                                      reliable)
        self.node.create_subscription(DiagnosticArray, '/diagnostics', self._on_diag, 50)
        self.reset = self.node.create_client(Trigger, '/robotseg/reset')

    def _on_diag(self, msg) -> None:
        for st in msg.status:
            if st.name.endswith('robotseg'):
                self.diag.append({kv.key: kv.value for kv in st.values})

    def spin_until(self, cond, timeout: float, proc: subprocess.Popen | None = None) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if cond():
                return True
            if proc is not None and proc.poll() is not None and proc.returncode != 0:
                return cond()
            self.executor.spin_once(timeout_sec=0.05)
        return cond()

    def publish(self, frame: np.ndarray, stamp: int) -> None:
        from std_msgs.msg import Header

        from rmseg_ros import conversions

        header = Header(frame_id=FRAME_ID)
        header.stamp.sec, header.stamp.nanosec = divmod(stamp, 10**9)
        self.pub.publish(conversions.numpy_to_image(frame, 'rgb8', header))

    def send(self, frame: np.ndarray, stamp: int, timeout: float = 20.0) -> None:
        """Publish a frame and wait for its mask."""
        from rmseg_ros import conversions

        def got() -> bool:
            return any(conversions.stamp_ns(m) == stamp for m in self.masks)

        self.publish(frame, stamp)
        assert self.spin_until(got, timeout), f'no mask for stamp {stamp}'

    def diag_where(self, timeout: float, **want: int) -> dict[str, str]:
        """Wait for a diagnostics status whose values match `want`."""
        def match() -> bool:
            return bool(self.diag) and all(self.diag[-1].get(k) == str(v)
                                           for k, v in want.items())

        assert self.spin_until(match, timeout), (want, self.diag[-1:] or None)
        return self.diag[-1]

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=1.0)
        self.node.destroy_node()


def _output(proc: subprocess.Popen) -> str:
    if proc.poll() is None:
        proc.terminate()
    try:
        out, err = proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    return (out or '') + (err or '')


@pytest.mark.ros
def test_bag_clip_to_masks_and_memory_resets(tmp_path: Path, rclpy_context,
                                             spawn_python) -> None:
    from rmseg_ros import conversions

    frames = robot_clip(N_BAG + 8)
    bag_stamps = write_clip_bag(tmp_path / 'clip', frames[:N_BAG])
    ckpt = tiny_checkpoint(tmp_path / 'robotseg.safetensors')
    probe = Probe(rclpy_context)
    node = spawn_python(args=[
        '-m', 'rmseg_ros.nodes.robotseg_node', '--ros-args', '-p', f'checkpoint:={ckpt}',
        '-p', 'device:=cpu', '-p', 'threads:=1', '-p', 'mask_value:=255',
        '-p', 'diagnostics_period:=0.2', '-p', 'qos_depth:=20', '-p', 'qos_reliability:=reliable'])
    replay = None
    try:
        # the node is up once its diagnostics arrive
        assert probe.spin_until(lambda: bool(probe.diag), 40.0, node), _output(node)
        assert probe.diag[-1]['frames'] == '0' and probe.diag[-1]['memory_size'] == str(K)
        replay = spawn_python(args=[
            '-m', 'rmseg_ros.nodes.bag_replay_node', str(tmp_path / 'clip'), '--rate', '2',
            '--qos', 'reliable', '--wait-for-subscribers', '1', '--wait-timeout', '20'])
        # latest-only: a loaded host may skip frames, never the last one
        def last_masked() -> bool:
            return any(conversions.stamp_ns(m) == bag_stamps[-1] for m in probe.masks)

        assert probe.spin_until(last_masked, 40.0, replay), _output(replay) + _output(node)
        masks = list(probe.masks)
        got = [conversions.stamp_ns(m) for m in masks]
        assert got == sorted(set(got)) and set(got) <= set(bag_stamps)
        for m in masks:  # source header kept, mono8 at the camera's size
            assert m.header.frame_id == FRAME_ID and m.encoding == 'mono8'
            assert (m.height, m.width) == (H, W)
            assert set(np.unique(conversions.image_to_numpy(m))) <= {0, 255}
        assert probe.overlays and probe.overlays[0].encoding == 'rgb8'
        def all_accounted() -> bool:  # each bag frame either masked or skipped
            d = probe.diag[-1] if probe.diag else {}
            return int(d.get('frames', 0)) + int(d.get('skipped_frames', 0)) == N_BAG

        assert probe.spin_until(all_accounted, 10.0), probe.diag[-1:]
        d = probe.diag[-1]
        assert int(d['frames']) >= len(masks) and d['submitted_frames'] == str(N_BAG)
        assert d['memory_frames'] == str(min(K, int(d['frames'])))
        assert float(d['latency_ms_median']) > 0 and d['device'] == 'cpu'
        assert d['resets_stamp_jump'] == '0' and d['resets_scene_cut'] == '0'

        # Trigger: the memory (full, K frames) is cleared; the next frame starts from scratch
        stamp = bag_stamps[-1]
        for f in frames[N_BAG:N_BAG + 2]:
            stamp += 100_000_000
            probe.send(f, stamp)
        assert probe.reset.wait_for_service(timeout_sec=10.0)
        future = probe.reset.call_async(probe.reset.srv_type.Request())
        assert probe.spin_until(future.done, 10.0)
        assert future.result().success
        assert future.result().message == f'memory cleared ({K} frames)'
        probe.diag_where(10.0, memory_frames=0, resets_manual=1)
        stamp += 100_000_000
        probe.send(frames[N_BAG + 2], stamp)
        probe.diag_where(10.0, memory_frames=1, frames_since_reset=1, resets_manual=1)

        # stamps going backwards (a replay restarting) reset the memory too
        probe.send(frames[N_BAG + 3], stamp + 100_000_000)
        probe.send(frames[N_BAG + 4], bag_stamps[0])
        probe.diag_where(10.0, memory_frames=1, resets_stamp_jump=1)
        # and so does a scene cut (a completely different view)
        probe.send(frames[N_BAG + 5], bag_stamps[1])
        other = np.full((H, W, 3), 230, np.uint8)
        other[:, : W // 3] = 10
        probe.send(other, bag_stamps[2])
        probe.diag_where(10.0, memory_frames=1, resets_scene_cut=1, errors=0)
    finally:
        probe.close()
    out = _output(node)
    assert 'memory reset (stamp_jump)' in out and 'memory reset (scene_cut)' in out, out
    if replay is not None:
        _output(replay)


@pytest.mark.ros
def test_model_runs_off_the_executor_newest_frame_wins(tmp_path: Path, rclpy_context) -> None:
    """While the model is busy (its lock held here), the subscription callback still returns at
    once: every frame reaches the node, diagnostics keep coming, and when the model is free
    again only the newest waiting frame is segmented; the replaced ones are counted."""
    from rclpy.parameter import Parameter

    from rmseg_ros import conversions
    from rmseg_ros.nodes.robotseg_node import RobotSegNode

    ckpt = tiny_checkpoint(tmp_path / 'robotseg.safetensors')
    params = {'checkpoint': str(ckpt), 'device': 'cpu', 'threads': 1, 'qos_reliability': 'reliable',
              'qos_depth': 20, 'diagnostics_period': 0.05}
    node = RobotSegNode(context=rclpy_context,
                        parameter_overrides=[Parameter(k, value=v) for k, v in params.items()])
    probe = Probe(rclpy_context)
    probe.executor.add_node(node)
    frames = robot_clip(6)
    stamps = [T0 + i * 100_000_000 for i in range(len(frames))]
    try:
        assert probe.spin_until(lambda: node.sub.get_publisher_count() > 0
                                and probe.pub.get_subscription_count() > 0, 20.0)
        with node.stream_lock:  # the model is "busy" until this block ends
            for f, s in zip(frames, stamps, strict=True):
                probe.publish(f, s)
            assert probe.spin_until(lambda: node.worker.submitted == len(frames), 20.0)
            busy = probe.diag_where(10.0, submitted_frames=len(frames))
            assert busy['frames'] == '0' and not probe.masks
        assert probe.spin_until(
            lambda: any(conversions.stamp_ns(m) == stamps[-1] for m in probe.masks), 20.0)
        got = [conversions.stamp_ns(m) for m in probe.masks]
        # the worker may have taken one frame (the first, or a later one when its thread woke
        # late) before the lock stopped it; every other frame but the newest was replaced
        assert got[-1] == stamps[-1] and len(got) <= 2 and got == sorted(set(got)), got
        assert node.worker.skipped == len(frames) - len(got)
        probe.diag_where(10.0, frames=len(got), skipped_frames=len(frames) - len(got), errors=0)
    finally:
        probe.close()
        node.destroy_node()
    assert node.worker is None  # stopped with the node
