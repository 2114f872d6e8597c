"""A synthetic four-modality sensor rig (numpy only): a wall and a moving box seen by a camera,
a depth camera, a LiDAR and an event camera, all geometrically consistent.

It drives the perception node without real sensors or bags: integration tests, `bench/node.py`
and a robot-side smoke test of a new install (`python -m rmseg_ros.nodes.synthetic_sensors`).
It can also produce each kind of malformed message the node must survive (MALFORMATIONS).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rmseg_ros.camera import CameraIntrinsics

# LiDAR frame (x forward, y left, z up) -> camera optical frame (z forward, x right, y down),
# both at the same origin: the default extrinsic of the perception node.
T_CAM_LIDAR_DEFAULT = np.array([[0.0, -1.0, 0.0, 0.0], [0.0, 0.0, -1.0, 0.0],
                                [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])

MALFORMATIONS = ('wrong_encoding', 'size_mismatch', 'nan_depth', 'empty_cloud', 'stamp_future',
                 'stamp_past', 'bad_event_fields')


@dataclass
class SyntheticRig:
    width: int = 640
    height: int = 480
    hfov_deg: float = 70.0
    wall_m: float = 4.0
    box_m: float = 2.0
    lidar_beams: int = 16
    lidar_columns: int = 360
    events_per_frame: int = 4000

    def __post_init__(self) -> None:
        self.camera = CameraIntrinsics.from_fov(self.width, self.height, self.hfov_deg)
        self._rng = np.random.default_rng(0)

    def _box_rect(self, t: float) -> tuple[int, int, int, int]:
        """Pixel rectangle of the box at time t (it slides left and right)."""
        cx = self.width * (0.5 + 0.25 * np.sin(t))
        half = self.width * 0.12
        return (int(cx - half), int(self.height * 0.35), int(cx + half), int(self.height * 0.75))

    def rgb(self, t: float) -> np.ndarray:
        x = np.linspace(60, 200, self.width, dtype=np.float32)
        img = np.empty((self.height, self.width, 3), np.uint8)
        img[...] = x[None, :, None].astype(np.uint8)
        x0, y0, x1, y1 = self._box_rect(t)
        img[y0:y1, max(x0, 0):max(x1, 0)] = (200, 60, 40)
        return img

    def labels(self, t: float, wall: int = 1, box: int = 4) -> np.ndarray:
        """uint8 class ids (the wall and the box; ids of config/classes.yaml)."""
        lab = np.full((self.height, self.width), wall, np.uint8)
        x0, y0, x1, y1 = self._box_rect(t)
        lab[y0:y1, max(x0, 0):max(x1, 0)] = box
        return lab

    def depth_m(self, t: float) -> np.ndarray:
        d = np.full((self.height, self.width), self.wall_m, np.float32)
        x0, y0, x1, y1 = self._box_rect(t)
        d[y0:y1, max(x0, 0):max(x1, 0)] = self.box_m
        return d

    def lidar(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        """(N, 3) float32 points in the LiDAR frame + intensity, hitting wall or box."""
        az = np.linspace(-np.pi / 3, np.pi / 3, self.lidar_columns, dtype=np.float32)
        el = np.linspace(-0.2, 0.2, self.lidar_beams, dtype=np.float32)
        a, e = np.meshgrid(az, el)
        dirs = np.stack([np.cos(e) * np.cos(a), np.cos(e) * np.sin(a), np.sin(e)], -1)
        dirs = dirs.reshape(-1, 3)
        rng = np.full(len(dirs), self.wall_m, np.float32) / dirs[:, 0]
        pts = dirs * rng[:, None]
        cam = pts @ T_CAM_LIDAR_DEFAULT[:3, :3].T
        K = self.camera.K
        u = K[0, 0] * cam[:, 0] / cam[:, 2] + K[0, 2]
        v = K[1, 1] * cam[:, 1] / cam[:, 2] + K[1, 2]
        x0, y0, x1, y1 = self._box_rect(t)
        on_box = (u >= x0) & (u < x1) & (v >= y0) & (v < y1)
        pts[on_box] *= (self.box_m / self.wall_m)
        intensity = np.where(on_box, 200.0, 60.0).astype(np.float32)
        return pts.astype(np.float32), intensity

    def events(self, t: float, t_ns: int, window_ns: int) -> dict[str, np.ndarray]:
        """Events on the box's moving edges in the window ending at t_ns (x, y, t s, p)."""
        n = self.events_per_frame
        x0, y0, x1, y1 = self._box_rect(t)
        xs = np.where(self._rng.random(n) < 0.5, x0, x1) + self._rng.integers(-2, 3, n)
        ys = self._rng.integers(max(y0, 0), max(y1, 1), n)
        ts = np.sort(self._rng.integers(t_ns - window_ns, t_ns, n))
        return {'x': np.clip(xs, 0, self.width - 1).astype(np.uint16),
                'y': np.clip(ys, 0, self.height - 1).astype(np.uint16),
                't': (ts / 1e9).astype(np.float64),
                'p': np.where(xs < (x0 + x1) / 2, 1, -1).astype(np.int8)}


def event_array(ev: dict[str, np.ndarray]) -> np.ndarray:
    """Event dict -> structured array with fields x, y, t, p (the event PointCloud2 layout)."""
    out = np.empty(len(ev['x']), dtype=[('x', '<u2'), ('y', '<u2'), ('t', '<f8'), ('p', 'i1')])
    for k in ('x', 'y', 't', 'p'):
        out[k] = ev[k]
    return out


def cloud_array(xyz: np.ndarray, intensity: np.ndarray) -> np.ndarray:
    out = np.empty(len(xyz), dtype=[('x', '<f4'), ('y', '<f4'), ('z', '<f4'),
                                    ('intensity', '<f4')])
    out['x'], out['y'], out['z'] = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    out['intensity'] = intensity
    return out
