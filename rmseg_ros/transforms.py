"""A static transform tree (the part of tf2 this package needs), ROS-free.

tf2 cannot be installed here, and the perception front-end only needs static extrinsics (camera
<- LiDAR): they come from /tf_static (live or in a bag) or from parameters. Frames form a tree of
4x4 homogeneous transforms T_parent_child (child coordinates -> parent coordinates).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

import numpy as np


def transform_from_xyz_rpy(
    xyz: np.ndarray | list[float], rpy: np.ndarray | list[float]
) -> np.ndarray:
    """4x4 transform from a translation and roll/pitch/yaw (radians) in the ROS/URDF convention:
    fixed axes X, Y, Z, i.e. R = Rz(yaw) @ Ry(pitch) @ Rx(roll) (as tf2's setRPY)."""
    roll, pitch, yaw = (float(a) for a in rpy)
    cr, sr = np.cos(roll), np.sin(roll)
    cp, sp = np.cos(pitch), np.sin(pitch)
    cy, sy = np.cos(yaw), np.sin(yaw)
    rot = np.array(
        [
            [cy * cp, cy * sp * sr - sy * cr, cy * sp * cr + sy * sr],
            [sy * cp, sy * sp * sr + cy * cr, sy * sp * cr - cy * sr],
            [-sp, cp * sr, cp * cr],
        ]
    )
    return _compose(rot, xyz)


def transform_from_xyz_quat(
    xyz: np.ndarray | Sequence[float], quat_xyzw: np.ndarray | Sequence[float]
) -> np.ndarray:
    """4x4 transform from a translation and a quaternion in ROS order (x, y, z, w); the quaternion
    is normalised because values read from parameters are often rounded."""
    q = np.asarray(quat_xyzw, dtype=np.float64).reshape(4)
    norm = np.linalg.norm(q)
    if not np.isfinite(norm) or norm < 1e-12:
        raise ValueError(f'invalid quaternion {q.tolist()} (x, y, z, w)')
    x, y, z, w = q / norm
    rot = np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )
    return _compose(rot, xyz)


def _compose(rot: np.ndarray, xyz: np.ndarray | Sequence[float]) -> np.ndarray:
    tf = np.eye(4)
    tf[:3, :3] = rot
    tf[:3, 3] = np.asarray(xyz, dtype=np.float64).reshape(3)
    return tf



def invert(T: np.ndarray) -> np.ndarray:
    """Inverse of a rigid 4x4 transform."""
    inv = np.eye(4)
    inv[:3, :3] = T[:3, :3].T
    inv[:3, 3] = -T[:3, :3].T @ T[:3, 3]
    return inv


class TransformTree:
    """Static frames; `lookup(target, source)` returns T_target_source."""

    def __init__(self) -> None:
        self._edges: dict[str, dict[str, np.ndarray]] = {}

    @staticmethod
    def _norm(frame: str) -> str:
        return frame.lstrip('/')

    def add(self, parent: str, child: str, T_parent_child: np.ndarray) -> None:
        parent, child = self._norm(parent), self._norm(child)
        T = np.asarray(T_parent_child, dtype=np.float64)
        if T.shape != (4, 4):
            raise ValueError(f'transform {parent} <- {child} must be 4x4, got {T.shape}')
        self._edges.setdefault(parent, {})[child] = T
        self._edges.setdefault(child, {})[parent] = invert(T)

    def add_message(self, tf_message) -> int:
        """Add every transform of a TFMessage (rclpy or rosbags); returns how many were added."""
        count = 0
        for stamped in tf_message.transforms:
            t, q = stamped.transform.translation, stamped.transform.rotation
            T = transform_from_xyz_quat((t.x, t.y, t.z), (q.x, q.y, q.z, q.w))
            self.add(stamped.header.frame_id, stamped.child_frame_id, T)
            count += 1
        return count

    @property
    def frames(self) -> set[str]:
        return set(self._edges)

    def copy(self) -> TransformTree:
        """A tree with the same edges (adding to it leaves this one as it is)."""
        out = TransformTree()
        out._edges = {k: dict(v) for k, v in self._edges.items()}
        return out

    def lookup(self, target: str, source: str) -> np.ndarray:
        """T_target_source: maps points in `source` coordinates into `target` coordinates."""
        target, source = self._norm(target), self._norm(source)
        if target == source:
            return np.eye(4)
        # Breadth-first search from target; T accumulates T_target_frame.
        seen = {target: np.eye(4)}
        queue = deque([target])
        while queue:
            frame = queue.popleft()
            for nxt, T_frame_next in self._edges.get(frame, {}).items():
                if nxt not in seen:
                    seen[nxt] = seen[frame] @ T_frame_next
                    if nxt == source:
                        return seen[nxt]
                    queue.append(nxt)
        raise LookupError(f'no transform between {target!r} and {source!r}; '
                          f'known frames: {sorted(self._edges)}')
