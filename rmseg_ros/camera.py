"""Pinhole camera intrinsics as plain numpy (ROS-free), shared by conversions and projection.

CameraInfo semantics (sensor_msgs/CameraInfo): K is the raw camera matrix, D the distortion of
`distortion_model` ('plumb_bob', 'rational_polynomial', 'equidistant' or '' for none), R the
rectification rotation, P the projection matrix of the rectified image.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np


@dataclass(frozen=True)
class CameraIntrinsics:
    width: int
    height: int
    K: np.ndarray  # (3, 3) float64
    D: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (n,) float64
    R: np.ndarray = field(default_factory=lambda: np.eye(3))  # (3, 3) float64
    P: np.ndarray | None = None  # (3, 4) float64, None when not given (all zeros in the msg)
    distortion_model: str = ''

    @classmethod
    def from_fov(cls, width: int, height: int, hfov_deg: float) -> CameraIntrinsics:
        """An undistorted camera with square pixels and the principal point at the centre."""
        f = 0.5 * width / np.tan(np.deg2rad(hfov_deg) / 2.0)
        K = np.array([[f, 0.0, (width - 1) / 2.0], [0.0, f, (height - 1) / 2.0], [0, 0, 1.0]])
        P = np.hstack([K, np.zeros((3, 1))])
        return cls(width=width, height=height, K=K, P=P)

    def scaled(self, width: int, height: int) -> CameraIntrinsics:
        """The same camera seen at another resolution (pixel-corner convention, like
        image_pipeline's resize: u' = (u + 0.5) * sx - 0.5)."""
        sx, sy = width / self.width, height / self.height
        S = np.array([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5], [0.0, 0.0, 1.0]])
        P = None if self.P is None else S @ self.P
        return replace(self, width=width, height=height, K=S @ self.K, P=P)
