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
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f'camera size {self.width}x{self.height} must be positive '
                             '(an invalid CameraInfo)')
        sx, sy = width / self.width, height / self.height
        S = np.array([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5], [0.0, 0.0, 1.0]])
        P = None if self.P is None else S @ self.P
        return replace(self, width=width, height=height, K=S @ self.K, P=P)


@dataclass(frozen=True)
class SizeLimits:
    """Largest image / sensor a message may announce. A size arrives in untrusted messages
    (CameraInfo, Image headers) and decides allocations (label images, voxel index tables), so
    it is checked against these before anything is allocated (node parameters `limits.*`)."""

    max_side: int = 8192  # pixels along either axis
    max_pixels: int = 4096 * 4096  # width x height

    def check(self, what: str, width: int, height: int) -> None:
        """ValueError naming `what` unless 0 < width, height <= max_side and the area fits."""
        w, h = int(width), int(height)
        if w <= 0 or h <= 0:
            raise ValueError(f'{what}: size {w}x{h} must be positive (width {w}, height {h})')
        if w > self.max_side:
            raise ValueError(f'{what}: width {w} exceeds the limit {self.max_side} '
                             '(parameter limits.max_side)')
        if h > self.max_side:
            raise ValueError(f'{what}: height {h} exceeds the limit {self.max_side} '
                             '(parameter limits.max_side)')
        if w * h > self.max_pixels:
            raise ValueError(f'{what}: {w}x{h} = {w * h} pixels exceeds the limit '
                             f'{self.max_pixels} (parameter limits.max_pixels)')


#: Accepted D lengths per distortion model ('' / 'none': no distortion, D empty or all zero).
D_LENGTHS: dict[str, tuple[int, ...]] = {
    'plumb_bob': (4, 5, 8, 12, 14), 'rational_polynomial': (8, 12, 14),
    'equidistant': (4,), 'fisheye': (4,),
}
_MAX_D = 14


def validate_intrinsics(camera: CameraIntrinsics, limits: SizeLimits) -> None:
    """ValueError naming the field unless the intrinsics can be used to align modalities:
    size within `limits`, finite K with fx, fy > 0, D consistent with the distortion model,
    finite R and P. Every later stage (scaling, projection, output size) trusts these."""
    limits.check('CameraInfo', camera.width, camera.height)
    K = np.asarray(camera.K, dtype=np.float64)
    if K.shape != (3, 3) or not np.isfinite(K).all():
        raise ValueError(f'CameraInfo K must be 9 finite values, got {K.ravel().tolist()}')
    if not (K[0, 0] > 0 and K[1, 1] > 0):
        raise ValueError(f'CameraInfo K needs fx, fy > 0, got fx={K[0, 0]} fy={K[1, 1]}')
    D = np.asarray(camera.D, dtype=np.float64).ravel()
    if D.size > _MAX_D:
        raise ValueError(f'CameraInfo D has {D.size} values; no distortion model takes more '
                         f'than {_MAX_D}')
    if not np.isfinite(D).all():
        raise ValueError('CameraInfo D has non-finite values')
    model = (camera.distortion_model or '').strip().lower()
    if model in ('', 'none'):
        if np.any(D):
            raise ValueError('CameraInfo D is non-zero but distortion_model is empty')
    elif model not in D_LENGTHS:
        if np.any(D):
            raise ValueError(f'CameraInfo distortion_model {camera.distortion_model!r} is '
                             f'not supported (supported: {", ".join(D_LENGTHS)} or none)')
    elif D.size and D.size not in D_LENGTHS[model]:
        raise ValueError(f'CameraInfo D has {D.size} values; {model} takes '
                         f'{" or ".join(map(str, D_LENGTHS[model]))}')
    R = np.asarray(camera.R, dtype=np.float64)
    if R.shape != (3, 3) or not np.isfinite(R).all():
        raise ValueError('CameraInfo R must be 9 finite values')
    if camera.P is not None:
        P = np.asarray(camera.P, dtype=np.float64)
        if P.shape != (3, 4) or not np.isfinite(P).all():
            raise ValueError('CameraInfo P must be 12 finite values')
