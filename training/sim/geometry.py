"""Small rigid-transform helpers shared by the simulator modules (numpy, 4x4 T_parent_child).

Frames used by the simulator (all right-handed):
- world: z up (pybullet's frame);
- base_link: the sensor rig, x forward, y left, z up;
- camera_optical_frame: z forward, x right, y down (REP 103 optical convention);
- lidar: x forward, y left, z up.
"""

from __future__ import annotations

import numpy as np

#: R_base_optical: columns are the optical axes expressed in base_link (x right = -y_base,
#: y down = -z_base, z forward = x_base).
R_BASE_OPTICAL = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])


def make_transform(rotation: np.ndarray, translation) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = rotation
    T[:3, 3] = np.asarray(translation, dtype=np.float64).reshape(3)
    return T


def quaternion_from_matrix(R: np.ndarray) -> np.ndarray:
    """Unit quaternion (x, y, z, w) of a 3x3 rotation, w >= 0 (as geometry_msgs stores it)."""
    m = np.asarray(R, dtype=np.float64)[:3, :3]
    tr = m[0, 0] + m[1, 1] + m[2, 2]
    if tr > 0:
        s = 2.0 * np.sqrt(tr + 1.0)
        q = [(m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s, 0.25 * s]
    elif m[0, 0] > m[1, 1] and m[0, 0] > m[2, 2]:
        s = 2.0 * np.sqrt(1.0 + m[0, 0] - m[1, 1] - m[2, 2])
        q = [0.25 * s, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s, (m[2, 1] - m[1, 2]) / s]
    elif m[1, 1] > m[2, 2]:
        s = 2.0 * np.sqrt(1.0 + m[1, 1] - m[0, 0] - m[2, 2])
        q = [(m[0, 1] + m[1, 0]) / s, 0.25 * s, (m[1, 2] + m[2, 1]) / s, (m[0, 2] - m[2, 0]) / s]
    else:
        s = 2.0 * np.sqrt(1.0 + m[2, 2] - m[0, 0] - m[1, 1])
        q = [(m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, 0.25 * s, (m[1, 0] - m[0, 1]) / s]
    q = np.asarray(q)
    q /= np.linalg.norm(q)
    return -q if q[3] < 0 else q


def matrix_from_quaternion(q) -> np.ndarray:
    x, y, z, w = (float(v) for v in q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def look_at_base(eye, target) -> np.ndarray:
    """T_world_base of a rig at `eye` whose x axis points at `target`, with z as close to world
    up as possible (no roll)."""
    eye = np.asarray(eye, dtype=np.float64)
    x = np.asarray(target, dtype=np.float64) - eye
    x /= np.linalg.norm(x)
    y = np.cross([0.0, 0.0, 1.0], x)
    n = np.linalg.norm(y)
    y = np.array([0.0, 1.0, 0.0]) if n < 1e-9 else y / n
    z = np.cross(x, y)
    return make_transform(np.stack([x, y, z], axis=1), eye)


def transform_points(T: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply 4x4 T to (..., 3) points."""
    pts = np.asarray(points, dtype=np.float64)
    return pts @ T[:3, :3].T + T[:3, 3]
