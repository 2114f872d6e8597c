"""LiDAR points -> camera-aligned range / depth / intensity images, and image labels -> points.

ROS-free numpy so that training (bags) and the perception node build exactly the same inputs.

Conventions:
- `T_cam_lidar` (4x4) maps homogeneous points from the LiDAR frame into the camera's *optical*
  frame (z forward, x right, y down): p_cam = T_cam_lidar @ p_lidar. It is the TF transform with
  parent = camera optical frame and child = LiDAR frame.
- Projection happens with the camera's native intrinsics (raw K + distortion, or the rectified
  P after R) and is then mapped to the output resolution with the same affine map as
  `CameraIntrinsics.scaled` (pixel-centre convention), so a point lands on the pixel whose area
  contains it at either resolution.
- Polynomial distortion models fold over outside their fitted range (a point far off-axis can be
  mapped back into the image). Points beyond the radius where the radial map stops increasing
  are therefore dropped, as they cannot be seen by the real camera.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from rmseg_ros.camera import CameraIntrinsics

#: Points with camera z at or below this (metres) are treated as behind the camera.
MIN_DEPTH_M = 1e-3

_NO_DISTORTION = ('', 'none')
_RADIAL_MODELS = ('plumb_bob', 'rational_polynomial')
_FISHEYE_MODELS = ('equidistant', 'fisheye')


@dataclass(frozen=True)
class Projection:
    """The points that fall inside the image: pixel coordinates at the output resolution, camera
    z, and their positions in the input array (so attributes can be gathered)."""

    u: np.ndarray  # (M,) int32 column
    v: np.ndarray  # (M,) int32 row
    depth: np.ndarray  # (M,) float64 camera (optical-frame) z in metres
    index: np.ndarray  # (M,) intp index into the original points


@dataclass(frozen=True)
class LidarHits:
    """The visible point of each hit pixel (the nearest one): a sparse LiDAR image."""

    pixel: np.ndarray  # (K,) int64 flat pixel id, row * W + column, each at most once
    range: np.ndarray  # (K,) float64 Euclidean distance from the LiDAR origin, metres
    depth: np.ndarray  # (K,) float64 camera z, metres
    intensity: np.ndarray | None  # (K,) float32 (non-finite -> 0), None without intensities


@dataclass(frozen=True)
class LidarImage:
    """Camera-aligned LiDAR channels at the model resolution (0 where no point hits)."""

    range: np.ndarray  # (H, W) float32 Euclidean distance from the LiDAR origin, metres
    depth: np.ndarray  # (H, W) float32 camera z of the same point, metres
    intensity: np.ndarray  # (H, W) float32
    mask: np.ndarray  # (H, W) bool, a point hit this pixel


# ---------------------------------------------------------------------------------------------
# Projection


def _output_matrix(
    camera: CameraIntrinsics, out_hw: tuple[int, int], rectified: bool
) -> np.ndarray:
    """K (3x3, raw) or P (3x4, rectified) of the camera already mapped to the output resolution."""
    out_h, out_w = int(out_hw[0]), int(out_hw[1])
    if out_h <= 0 or out_w <= 0:
        raise ValueError(f'out_hw must be positive, got {out_hw}')
    scaled = camera.scaled(out_w, out_h)
    if rectified:
        if scaled.P is None:
            raise ValueError('use_rectified=True needs a camera with a projection matrix P')
        return np.asarray(scaled.P, dtype=np.float64)
    return np.asarray(scaled.K, dtype=np.float64)


def _distortion(camera: CameraIntrinsics) -> tuple[str, np.ndarray | None]:
    """('radial' | 'fisheye' | 'none', coefficients) with coefficients padded to a fixed length."""
    model = (camera.distortion_model or '').strip().lower()
    dist = np.asarray(camera.D, dtype=np.float64).ravel()
    if model in _NO_DISTORTION or not np.any(dist):
        return 'none', None  # all-zero coefficients mean no distortion whatever the name
    if model in _RADIAL_MODELS:
        if dist.size > 8 and np.any(dist[8:]):
            raise ValueError(
                f'{model}: only k1 k2 p1 p2 k3 k4 k5 k6 are supported; thin-prism / tilt terms '
                f'are non-zero in D={dist.tolist()}'
            )
        coeffs = np.zeros(8)
        coeffs[: min(dist.size, 8)] = dist[:8]
        return 'radial', coeffs
    if model in _FISHEYE_MODELS:
        if dist.size > 4 and np.any(dist[4:]):
            raise ValueError(f'equidistant expects k1..k4, got D={dist.tolist()}')
        coeffs = np.zeros(4)
        coeffs[: min(dist.size, 4)] = dist[:4]
        return 'fisheye', coeffs
    raise ValueError(
        f'unsupported distortion model {camera.distortion_model!r}; supported: plumb_bob, '
        'rational_polynomial, equidistant, or none'
    )


@lru_cache(maxsize=64)
def _monotonic_limit(kind: str, coeffs: tuple[float, ...]) -> float:
    """Largest undistorted radius r (radial models) or angle theta (fisheye) up to which the
    distortion keeps increasing; beyond it the model folds back and projections are spurious."""
    if kind == 'radial':
        r = np.linspace(0.0, 20.0, 20001)  # up to ~87 degrees off-axis
        rd = r * _radial_factor(r * r, np.asarray(coeffs))
    else:
        r = np.linspace(0.0, np.pi / 2, 20001)
        rd = _fisheye_theta_d(r, np.asarray(coeffs))
    bad = np.flatnonzero(~(np.diff(rd) > 0))
    return float(r[bad[0]]) if bad.size else float(r[-1])


def _radial_factor(r2: np.ndarray, c: np.ndarray) -> np.ndarray:
    k1, k2, _, _, k3, k4, k5, k6 = c
    num = 1.0 + r2 * (k1 + r2 * (k2 + r2 * k3))
    if k4 == 0.0 and k5 == 0.0 and k6 == 0.0:
        return num
    return num / (1.0 + r2 * (k4 + r2 * (k5 + r2 * k6)))


def _fisheye_theta_d(theta: np.ndarray, c: np.ndarray) -> np.ndarray:
    t2 = theta * theta
    return theta * (1.0 + t2 * (c[0] + t2 * (c[1] + t2 * (c[2] + t2 * c[3]))))


def _distort(
    x: np.ndarray, y: np.ndarray, kind: str, c: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distorted normalised coordinates and a mask of points inside the model's valid range."""
    r2 = x * x + y * y
    if kind == 'radial':
        limit = _monotonic_limit(kind, tuple(c.tolist()))
        ok = r2 < limit * limit
        radial = _radial_factor(r2, c)
        p1, p2 = c[2], c[3]
        xy2 = 2.0 * x * y
        xd = x * radial + p1 * xy2 + p2 * (r2 + 2.0 * x * x)
        yd = y * radial + p1 * (r2 + 2.0 * y * y) + p2 * xy2
        return xd, yd, ok
    # equidistant (OpenCV fisheye): theta_d = theta (1 + k1 theta^2 + ... + k4 theta^8)
    r = np.sqrt(r2)
    theta = np.arctan(r)
    limit = _monotonic_limit(kind, tuple(c.tolist()))
    ok = theta < limit
    theta_d = _fisheye_theta_d(theta, c)
    scale = np.ones_like(r)
    nz = r > 1e-12
    scale[nz] = theta_d[nz] / r[nz]
    return x * scale, y * scale, ok


def _as_points(points_xyz: np.ndarray) -> np.ndarray:
    """(N, 3) view of the input; organised clouds (H, W, 3) are flattened row-major."""
    pts = np.asarray(points_xyz)
    if pts.size == 0:
        return np.zeros((0, 3), dtype=np.float64)
    if pts.shape[-1] != 3:
        raise ValueError(f'points_xyz must have shape (N, 3), got {pts.shape}')
    return pts.reshape(-1, 3)


def project_points(
    points_xyz: np.ndarray,
    T_cam_lidar: np.ndarray,
    camera: CameraIntrinsics,
    out_hw: tuple[int, int],
    use_rectified: bool = False,
    min_depth: float = MIN_DEPTH_M,
) -> Projection:
    """Project LiDAR-frame points to integer pixels of an `out_hw` image of `camera`.

    With use_rectified the point is rotated by R and projected with P (rectified image, no
    distortion); otherwise K and the camera's distortion model are used (raw image). Points that
    are not finite, at or behind `min_depth`, outside the distortion model's valid range or
    outside the image are dropped; `index` says which input rows survived."""
    pts = _as_points(points_xyz)
    out_h, out_w = int(out_hw[0]), int(out_hw[1])
    mat = _output_matrix(camera, out_hw, use_rectified)
    tf = np.asarray(T_cam_lidar, dtype=np.float64)
    if tf.shape != (4, 4):
        raise ValueError(f'T_cam_lidar must be 4x4, got {tf.shape}')
    rot, trans = tf[:3, :3], tf[:3, 3]
    if use_rectified:
        r_rect = np.asarray(camera.R, dtype=np.float64).reshape(3, 3)
        rot, trans = r_rect @ rot, r_rect @ trans
    kind, coeffs = ('none', None) if use_rectified else _distortion(camera)

    empty = Projection(
        u=np.zeros(0, np.int32),
        v=np.zeros(0, np.int32),
        depth=np.zeros(0, np.float64),
        index=np.zeros(0, np.intp),
    )
    if pts.shape[0] == 0:
        return empty

    # z first: much of a 360-degree scan is behind the camera. Cull in the input precision
    # (float32 clouds stay float32: no full-size cast), then do the geometry in float64 on the
    # survivors only. NaN / inf fail the comparison.
    if pts.dtype not in (np.float32, np.float64):
        pts = pts.astype(np.float64)
    z_all = pts @ rot[2].astype(pts.dtype) + pts.dtype.type(trans[2])
    index = np.flatnonzero(z_all > min_depth)
    if index.size == 0:
        return empty
    # np.take is much faster than pts[index] for (N, 3) rows
    sel = np.take(pts, index, axis=0).astype(np.float64, copy=False)
    xc = sel @ np.ascontiguousarray(rot[0]) + trans[0]
    yc = sel @ np.ascontiguousarray(rot[1]) + trans[1]
    z = sel @ np.ascontiguousarray(rot[2]) + trans[2]
    finite = (z > min_depth) & np.isfinite(xc) & np.isfinite(yc)
    if not finite.all():  # rare: rounding at the threshold, or inf in x / y
        ok = np.flatnonzero(finite)
        index, xc, yc, z, finite = index[ok], xc[ok], yc[ok], z[ok], finite[ok]
    inv_z = 1.0 / z
    x, y = xc * inv_z, yc * inv_z

    if use_rectified:
        # P may carry a stereo baseline in its 4th column; w is the homogeneous scale.
        w = mat[2, 0] * xc + mat[2, 1] * yc + mat[2, 2] * z + mat[2, 3]
        finite &= w > min_depth
        w = np.where(finite, w, 1.0)
        u = (mat[0, 0] * xc + mat[0, 1] * yc + mat[0, 2] * z + mat[0, 3]) / w
        v = (mat[1, 0] * xc + mat[1, 1] * yc + mat[1, 2] * z + mat[1, 3]) / w
    else:
        if coeffs is not None:  # kind != 'none'
            x, y, ok = _distort(x, y, kind, coeffs)
            finite &= ok
        u = mat[0, 0] * x + mat[0, 1] * y + mat[0, 2]
        v = mat[1, 0] * x + mat[1, 1] * y + mat[1, 2]

    # Pixel i covers [i - 0.5, i + 0.5): keep what lies inside the image, then round.
    inside = finite & (u >= -0.5) & (u < out_w - 0.5) & (v >= -0.5) & (v < out_h - 0.5)
    keep = np.flatnonzero(inside)
    return Projection(
        u=(u[keep] + 0.5).astype(np.int32),
        v=(v[keep] + 0.5).astype(np.int32),
        depth=z[keep],
        index=index[keep],
    )


def _zbuffer(flat: np.ndarray, depth: np.ndarray, size: int) -> np.ndarray:
    """Nearest depth per pixel (float64, +inf where no point lands) of points at pixel ids
    `flat` in an image of `size` pixels.

    np.minimum.at (fast in numpy 2) is ~4x faster than sorting (pixel, depth) keys, and unlike
    fancy assignment it is defined for repeated pixel ids."""
    zbuf = np.full(size, np.inf, dtype=np.float64)
    np.minimum.at(zbuf, flat, depth)
    return zbuf


def _nearest_per_pixel(flat: np.ndarray, depth: np.ndarray, zbuf: np.ndarray) -> np.ndarray:
    """Positions (into flat / depth) of the points that are the nearest of their pixel.

    A pixel whose nearest depth is shared by several points (exactly equal) keeps the last of
    them, so every pixel has exactly one winner."""
    win = np.flatnonzero(zbuf[flat] == depth)
    if win.size != np.count_nonzero(zbuf < np.inf):  # exact ties (rare): keep the last
        pix = flat[win][::-1]
        _, last = np.unique(pix, return_index=True)
        win = win[pix.size - 1 - last]
    return win


def lidar_hits(
    points_xyz: np.ndarray,
    intensity: np.ndarray | None,
    T_cam_lidar: np.ndarray,
    camera: CameraIntrinsics,
    out_hw: tuple[int, int],
    use_rectified: bool = False,
    min_depth: float = MIN_DEPTH_M,
) -> LidarHits:
    """The nearest point (smallest camera z) of each pixel it hits, as the camera would see it.

    Sparse: a few thousand hits, so consumers fill their own dense images without passes over
    full-size intermediate ones (the model-input path writes scaled channels directly)."""
    out_w = int(out_hw[1])
    pts = _as_points(points_xyz)
    inten = None
    if intensity is not None:
        inten = np.asarray(intensity).reshape(-1)
        if inten.shape[0] != pts.shape[0]:
            raise ValueError(f'intensity has {inten.shape[0]} values for {pts.shape[0]} points')
    proj = project_points(pts, T_cam_lidar, camera, out_hw, use_rectified, min_depth)
    if not proj.index.size:
        empty = np.zeros(0)
        return LidarHits(np.zeros(0, np.int64), empty, empty,
                         None if inten is None else np.zeros(0, np.float32))
    flat = proj.v.astype(np.int64) * out_w + proj.u
    win = _nearest_per_pixel(flat, proj.depth, _zbuffer(flat, proj.depth, out_hw[0] * out_w))
    src = proj.index[win]
    p = np.take(pts, src, axis=0).astype(np.float64, copy=False)
    vals = None
    if inten is not None:
        vals = inten[src].astype(np.float32)
        vals[~np.isfinite(vals)] = 0.0
    return LidarHits(flat[win], np.sqrt(np.einsum('ij,ij->i', p, p)), proj.depth[win], vals)


def lidar_to_image(
    points_xyz: np.ndarray,
    intensity: np.ndarray | None,
    T_cam_lidar: np.ndarray,
    camera: CameraIntrinsics,
    out_hw: tuple[int, int],
    use_rectified: bool = False,
    min_depth: float = MIN_DEPTH_M,
) -> LidarImage:
    """Camera-aligned range / depth / intensity / mask images of `lidar_hits` (0 elsewhere)."""
    out_h, out_w = int(out_hw[0]), int(out_hw[1])
    hits = lidar_hits(points_xyz, intensity, T_cam_lidar, camera, out_hw, use_rectified,
                      min_depth)
    images = np.zeros((3, out_h * out_w), dtype=np.float32)
    mask = np.zeros(out_h * out_w, dtype=bool)
    images[0, hits.pixel] = hits.range
    images[1, hits.pixel] = hits.depth
    if hits.intensity is not None:
        images[2, hits.pixel] = hits.intensity
    mask[hits.pixel] = True
    shape = (out_h, out_w)
    return LidarImage(range=images[0].reshape(shape), depth=images[1].reshape(shape),
                      intensity=images[2].reshape(shape), mask=mask.reshape(shape))


def labels_to_points(
    labels: np.ndarray,
    points_xyz: np.ndarray,
    T_cam_lidar: np.ndarray,
    camera: CameraIntrinsics,
    occlusion_tolerance_m: float = 0.2,
    use_rectified: bool = False,
    ignore_label: int = 255,
) -> np.ndarray:
    """One label per point from a label image aligned with `camera` (any resolution).

    A point gets `ignore_label` when it is outside the field of view, behind the camera, not
    finite, or occluded: more than `occlusion_tolerance_m` behind the nearest point that
    projects to the same pixel (the camera saw that nearer surface, not this point)."""
    lab = np.asarray(labels)
    if lab.ndim != 2:
        raise ValueError(f'labels must be (H, W), got {lab.shape}')
    out_h, out_w = lab.shape
    pts = _as_points(points_xyz)
    out = np.full(pts.shape[0], ignore_label, dtype=np.uint8)
    proj = project_points(pts, T_cam_lidar, camera, (out_h, out_w), use_rectified)
    if proj.index.size == 0:
        return out
    flat = proj.v.astype(np.int64) * out_w + proj.u
    zmin = _zbuffer(flat, proj.depth, out_h * out_w)
    visible = proj.depth <= zmin[flat] + occlusion_tolerance_m
    out[proj.index[visible]] = lab.reshape(-1)[flat[visible]]
    return out
