"""A static transform tree (the part of tf2 this package needs), ROS-free.

tf2 cannot be installed here, and the perception front-end only needs static extrinsics (camera
<- LiDAR): they come from /tf_static (live or in a bag) or from parameters. Frames form a tree of
4x4 homogeneous transforms T_parent_child (child coordinates -> parent coordinates).
"""

from __future__ import annotations

from collections import deque

import numpy as np


def transform_from_translation_quaternion(xyz, quat_xyzw) -> np.ndarray:
    """4x4 T from a translation and a unit quaternion (x, y, z, w), as in geometry_msgs."""
    x, y, z, w = (float(v) for v in quat_xyzw)
    n = x * x + y * y + z * z + w * w
    if n < 1e-12:
        raise ValueError('zero-length quaternion')
    s = 2.0 / n
    T = np.eye(4)
    T[:3, :3] = [
        [1 - s * (y * y + z * z), s * (x * y - z * w), s * (x * z + y * w)],
        [s * (x * y + z * w), 1 - s * (x * x + z * z), s * (y * z - x * w)],
        [s * (x * z - y * w), s * (y * z + x * w), 1 - s * (x * x + y * y)],
    ]
    T[:3, 3] = [float(v) for v in xyz]
    return T


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
            T = transform_from_translation_quaternion((t.x, t.y, t.z), (q.x, q.y, q.z, q.w))
            self.add(stamped.header.frame_id, stamped.child_frame_id, T)
            count += 1
        return count

    @property
    def frames(self) -> set[str]:
        return set(self._edges)

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
