"""Pinhole camera rendering with pybullet's TinyRenderer: RGB, metric depth, class ids, robot mask.

The OpenGL projection matrix is built from the intrinsics K (not from a field of view), so the
published CameraInfo is exactly the camera that rendered the image. TinyRenderer samples pixel
(column i, row j) at integer window coordinates (x_w = i, y_w = H - 1 - j from the bottom), not at
pixel centres; the matrix below absorbs that, so the pixel with index (u, v) sees the ray through
u = fx * X / Z + cx, v = fy * Y / Z + cy in the optical frame (z forward, x right, y down) —
the CameraInfo convention, checked in test/test_sim.py with independent ray tests.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pybullet as p

from rmseg_ros.camera import CameraIntrinsics
from training.sim.config import CameraConfig
from training.sim.scene import Light, Scene

# GL eye frame (x right, y up, z backward) from the optical frame (x right, y down, z forward).
_GL_FROM_OPTICAL = np.diag([1.0, -1.0, -1.0, 1.0])


@dataclass
class CameraFrame:
    rgb: np.ndarray  # (H, W, 3) uint8
    depth: np.ndarray  # (H, W) float32 optical-frame z in metres, NaN where nothing was hit
    labels: np.ndarray  # (H, W) uint8 class ids, ignore index where nothing was hit
    robot_mask: np.ndarray  # (H, W) uint8, 1 on robot pixels
    segmentation: np.ndarray  # (H, W) int32 pybullet body ids (-1 background)


def gl_projection(intr: CameraIntrinsics, near: float, far: float) -> np.ndarray:
    """4x4 OpenGL projection (row-major) for TinyRenderer's pixel sampling (see module doc)."""
    K, w, h = intr.K, intr.width, intr.height
    P = np.zeros((4, 4))
    P[0, 0] = 2.0 * K[0, 0] / w
    P[0, 1] = -2.0 * K[0, 1] / w
    P[0, 2] = 1.0 - 2.0 * K[0, 2] / w
    P[1, 1] = 2.0 * K[1, 1] / h
    P[1, 2] = 2.0 * (K[1, 2] + 1.0) / h - 1.0
    P[2, 2] = -(far + near) / (far - near)
    P[2, 3] = -2.0 * far * near / (far - near)
    P[3, 2] = -1.0
    return P


def depth_from_buffer(buffer: np.ndarray, near: float, far: float) -> np.ndarray:
    """Optical-frame z (metres) from the [0, 1] OpenGL depth buffer; NaN at the far plane."""
    d = np.asarray(buffer, dtype=np.float64)
    z = far * near / (far - (far - near) * d)
    return np.where(d < 1.0 - 1e-7, z, np.nan).astype(np.float32)


class Camera:
    def __init__(self, cfg: CameraConfig) -> None:
        self.cfg = cfg
        self.intrinsics = cfg.intrinsics()
        self._proj = gl_projection(self.intrinsics, cfg.near_m, cfg.far_m).T.flatten().tolist()

    def render(self, scene: Scene, T_world_cam: np.ndarray,
               light: Light | None = None) -> CameraFrame:
        """Render the scene from an optical-frame pose (T_world_cam: camera -> world)."""
        light = light or scene.light
        w, h = self.intrinsics.width, self.intrinsics.height
        view = (_GL_FROM_OPTICAL @ np.linalg.inv(T_world_cam)).T.flatten().tolist()
        _, _, rgba, buf, seg = p.getCameraImage(
            w, h, view, self._proj, renderer=p.ER_TINY_RENDERER,
            lightDirection=list(light.direction), lightColor=list(light.color),
            lightAmbientCoeff=light.ambient, lightDiffuseCoeff=light.diffuse,
            lightSpecularCoeff=light.specular, shadow=int(light.shadows),
            physicsClientId=scene.client)
        rgb = np.ascontiguousarray(np.asarray(rgba, dtype=np.uint8).reshape(h, w, 4)[..., :3])
        depth = depth_from_buffer(np.asarray(buf).reshape(h, w), self.cfg.near_m, self.cfg.far_m)
        seg = np.asarray(seg, dtype=np.int32).reshape(h, w)
        index = np.clip(seg + 1, 0, None)
        class_lut, robot_lut = scene.class_lut(), scene.robot_lut()
        index = np.where(index < class_lut.size, index, 0)
        labels = class_lut[index]
        robot = robot_lut[index]
        return CameraFrame(rgb, depth, labels, robot, seg)

    def pixel_rays(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Unit ray directions (N, 3) in the optical frame through pixel coordinates (u, v)."""
        K = self.intrinsics.K
        y = (np.asarray(v, dtype=np.float64) - K[1, 2]) / K[1, 1]
        x = (np.asarray(u, dtype=np.float64) - K[0, 2] - K[0, 1] * y) / K[0, 0]
        d = np.stack([x, y, np.ones_like(x)], axis=-1)
        return d / np.linalg.norm(d, axis=-1, keepdims=True)
