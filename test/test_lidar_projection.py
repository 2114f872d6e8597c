"""LiDAR -> camera projection against analytic geometry and OpenCV's camera models."""

from __future__ import annotations

import warnings
from dataclasses import replace

import cv2
import numpy as np
import pytest

from rmseg_ros.camera import CameraIntrinsics
from rmseg_ros.frontend.lidar_projection import (
    _nearest_per_pixel,
    _zbuffer,
    labels_to_points,
    lidar_to_image,
    project_points,
)
from rmseg_ros.transforms import transform_from_xyz_quat, transform_from_xyz_rpy

CAM = CameraIntrinsics.from_fov(640, 480, 60.0)
NATIVE_HW = (CAM.height, CAM.width)

# REP 103/105: an optical frame (z forward, x right, y down) sits in a body frame (x forward,
# y left, z up) at roll = yaw = -90 degrees. The LiDAR (x forward, z up) is mounted behind, left
# of and above the camera, yawed and pitched a little: a non-trivial extrinsic.
T_BODY_OPTICAL = transform_from_xyz_rpy([0.0, 0.0, 0.0], [-np.pi / 2, 0.0, -np.pi / 2])
T_BODY_LIDAR = transform_from_xyz_rpy([-0.05, 0.08, 0.12], [0.01, np.deg2rad(2.0), np.deg2rad(4.0)])
T_CAM_LIDAR = np.linalg.inv(T_BODY_OPTICAL) @ T_BODY_LIDAR
T_LIDAR_CAM = np.linalg.inv(T_CAM_LIDAR)

# Scene in the camera optical frame: a slightly tilted wall z = 4 + 0.1 x + 0.05 y and, in front
# of it, the tilted face of a box z = 2.5 - 0.05 x + 0.08 y over x in [-0.4, 0.3], y in [-0.3, 0.2].
# (Tilts make every depth distinct, so the nearest point per pixel is unique.)
WALL = (4.0, 0.1, 0.05)
BOX = (2.5, -0.05, 0.08)
BOX_X, BOX_Y = (-0.4, 0.3), (-0.3, 0.2)
STEP = 3  # sample every 3rd native pixel centre


def _on_plane(a: np.ndarray, b: np.ndarray, plane: tuple[float, float, float]) -> np.ndarray:
    """Points where the rays (a, b, 1) meet z = z0 + sx x + sy y (analytic)."""
    z0, sx, sy = plane
    t = z0 / (1.0 - sx * a - sy * b)
    return np.stack([a * t, b * t, t], axis=-1)


def _to_lidar(p_cam: np.ndarray) -> np.ndarray:
    return p_cam @ T_LIDAR_CAM[:3, :3].T + T_LIDAR_CAM[:3, 3]


def _scene() -> dict[str, np.ndarray]:
    """Rays through native pixel centres; a wall point on every ray, a box point on the rays
    that hit the box. Everything expected is computed here from the geometry."""
    uu, vv = np.meshgrid(np.arange(1, CAM.width, STEP), np.arange(1, CAM.height, STEP))
    u, v = uu.ravel(), vv.ravel()
    K = CAM.K
    a = (u - K[0, 2]) / K[0, 0]
    b = (v - K[1, 2]) / K[1, 1]
    wall = _on_plane(a, b, WALL)
    box = _on_plane(a, b, BOX)
    on_box = (
        (box[:, 0] >= BOX_X[0])
        & (box[:, 0] <= BOX_X[1])
        & (box[:, 1] >= BOX_Y[0])
        & (box[:, 1] <= BOX_Y[1])
    )
    assert 200 < on_box.sum() < on_box.size // 2  # the box covers part of the view
    return {'u': u, 'v': v, 'wall': wall, 'box': box[on_box], 'on_box': on_box}


def _cloud(scene: dict[str, np.ndarray], seed: int = 0) -> dict[str, np.ndarray]:
    """Shuffled LiDAR-frame cloud (float32, as drivers publish) with per-point truth."""
    on_box = scene['on_box']
    cam = np.concatenate([scene['wall'], scene['box']])
    u = np.concatenate([scene['u'], scene['u'][on_box]])
    v = np.concatenate([scene['v'], scene['v'][on_box]])
    is_box = np.r_[np.zeros(len(scene['wall']), bool), np.ones(len(scene['box']), bool)]
    order = np.random.default_rng(seed).permutation(len(cam))
    cam, u, v, is_box = cam[order], u[order], v[order], is_box[order]
    lidar = _to_lidar(cam)
    return {
        'xyz': lidar.astype(np.float32),
        'cam': cam,
        'u': u,
        'v': v,
        'is_box': is_box,
        'range': np.linalg.norm(lidar, axis=1),
        'intensity': np.where(is_box, 200.0, 50.0).astype(np.float32),
    }


@pytest.fixture(scope='module')
def cloud() -> dict[str, np.ndarray]:
    return _cloud(_scene())


# ---------------------------------------------------------------------------------------------
# extrinsics helpers


def test_rpy_matches_ros_optical_frame_convention():
    # Optical z (forward) is body x; optical x (right) is body -y; optical y (down) is body -z.
    R = T_BODY_OPTICAL[:3, :3]
    np.testing.assert_allclose(R @ [0, 0, 1], [1, 0, 0], atol=1e-12)
    np.testing.assert_allclose(R @ [1, 0, 0], [0, -1, 0], atol=1e-12)
    np.testing.assert_allclose(R @ [0, 1, 0], [0, 0, -1], atol=1e-12)
    # the quaternion static_transform_publisher users write for the same rotation
    Tq = transform_from_xyz_quat([0, 0, 0], [-0.5, 0.5, -0.5, 0.5])
    np.testing.assert_allclose(Tq, T_BODY_OPTICAL, atol=1e-12)


def test_rpy_is_fixed_axis_xyz():
    roll, pitch, yaw = 0.3, -0.7, 1.9

    def rot(axis: int, angle: float) -> np.ndarray:
        rvec = np.zeros(3)
        rvec[axis] = angle
        return cv2.Rodrigues(rvec)[0]

    T = transform_from_xyz_rpy([1.0, -2.0, 0.5], [roll, pitch, yaw])
    np.testing.assert_allclose(T[:3, :3], rot(2, yaw) @ rot(1, pitch) @ rot(0, roll), atol=1e-12)
    np.testing.assert_allclose(T[:3, 3], [1.0, -2.0, 0.5])
    np.testing.assert_allclose(T[3], [0, 0, 0, 1])


def test_quaternion_matches_axis_angle_and_is_normalised():
    axis = np.array([0.2, -0.5, 0.8])
    axis /= np.linalg.norm(axis)
    angle = 2.2
    q = np.r_[axis * np.sin(angle / 2), np.cos(angle / 2)]
    T = transform_from_xyz_quat([0.1, 0.2, 0.3], 3.0 * q)  # unnormalised on purpose
    np.testing.assert_allclose(T[:3, :3], cv2.Rodrigues(axis * angle)[0], atol=1e-12)
    np.testing.assert_allclose(T[:3, 3], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError):
        transform_from_xyz_quat([0, 0, 0], [0, 0, 0, 0])


# ---------------------------------------------------------------------------------------------
# geometry of the synthetic scene


def test_depth_range_intensity_match_analytic_scene_at_native_resolution(cloud):
    li = lidar_to_image(cloud['xyz'], cloud['intensity'], T_CAM_LIDAR, CAM, NATIVE_HW)
    assert li.range.shape == li.depth.shape == li.intensity.shape == li.mask.shape == NATIVE_HW
    assert li.range.dtype == li.depth.dtype == li.intensity.dtype == np.float32
    assert li.mask.dtype == bool

    expected_mask = np.zeros(NATIVE_HW, bool)
    expected_mask[cloud['v'], cloud['u']] = True
    np.testing.assert_array_equal(li.mask, expected_mask)

    # On every ray the box (if hit) is in front of the wall: the camera sees the box.
    nearest = cloud['is_box'] | ~np.isin(
        cloud['v'] * CAM.width + cloud['u'],
        (cloud['v'] * CAM.width + cloud['u'])[cloud['is_box']],
    )
    v, u = cloud['v'][nearest], cloud['u'][nearest]
    assert len(np.unique(v * CAM.width + u)) == nearest.sum() == expected_mask.sum()
    np.testing.assert_allclose(li.depth[v, u], cloud['cam'][nearest, 2], atol=0.01)
    np.testing.assert_allclose(li.range[v, u], cloud['range'][nearest], atol=0.01)
    np.testing.assert_array_equal(li.intensity[v, u], cloud['intensity'][nearest])
    # range (from the LiDAR origin) and depth (camera z) really differ in this set-up
    assert np.abs(li.range[v, u] - li.depth[v, u]).max() > 0.05
    # the z-buffer kept the box, not the wall behind it
    box_px = cloud['is_box']
    assert (li.intensity[cloud['v'][box_px], cloud['u'][box_px]] == 200.0).all()
    assert np.all(li.depth[cloud['v'][box_px], cloud['u'][box_px]] < 3.0)
    assert np.all(li.depth[~li.mask] == 0) and np.all(li.range[~li.mask] == 0)


def test_nearest_point_wins_after_downscaling(cloud):
    """At 1/4 resolution several rays share a pixel; the expected image is built here with a
    plain per-pixel minimum over the analytic depths."""
    out_hw = (120, 160)
    li = lidar_to_image(cloud['xyz'], cloud['intensity'], T_CAM_LIDAR, CAM, out_hw)
    # CameraIntrinsics.scaled: u' = (u + 0.5) / 4 - 0.5, so pixel u lands on u // 4
    flat = (cloud['v'] // 4) * out_hw[1] + cloud['u'] // 4
    z = cloud['cam'][:, 2]
    zmin = np.full(out_hw[0] * out_hw[1], np.inf)
    np.minimum.at(zmin, flat, z)
    hit = np.isfinite(zmin)
    np.testing.assert_array_equal(li.mask.ravel(), hit)
    np.testing.assert_allclose(li.depth.ravel()[hit], zmin[hit], atol=0.01)
    winner = np.flatnonzero(z == zmin[flat])
    assert len(winner) == hit.sum()  # tilted surfaces: no ties
    np.testing.assert_allclose(li.range.ravel()[flat[winner]], cloud['range'][winner], atol=0.01)
    # mixed box / wall pixels exist at this scale and show the box
    mixed = np.zeros(zmin.size, bool)
    mixed[flat[cloud['is_box']]] = True
    mixed &= np.isin(np.arange(zmin.size), flat[~cloud['is_box']])
    assert mixed.sum() > 100
    assert (li.intensity.ravel()[mixed] == 200.0).all()


def test_result_does_not_depend_on_point_order():
    scene = _scene()
    a = lidar_to_image(_cloud(scene, 1)['xyz'], None, T_CAM_LIDAR, CAM, (120, 160))
    b = lidar_to_image(_cloud(scene, 2)['xyz'], None, T_CAM_LIDAR, CAM, (120, 160))
    np.testing.assert_array_equal(a.depth, b.depth)
    np.testing.assert_array_equal(a.range, b.range)
    assert not a.intensity.any()  # intensity None -> zeros


def test_points_behind_camera_and_outside_view_are_dropped(cloud):
    cam = cloud['cam'][:500]
    behind = -cam  # z < 0, but the pinhole formula would put them on the same pixels
    on_plane = cam.copy()
    on_plane[:, 2] = 0.0
    outside = cam + np.array([10.0, 0.0, 0.0])  # far right of the image
    extra = _to_lidar(np.concatenate([behind, on_plane, outside])).astype(np.float32)
    pts = np.concatenate([cloud['xyz'], extra])
    proj = project_points(pts, T_CAM_LIDAR, CAM, NATIVE_HW)
    assert proj.index.max() < len(cloud['xyz'])
    assert len(proj.index) == len(cloud['xyz'])
    assert (proj.depth > 0).all()
    np.testing.assert_array_equal(proj.u, cloud['u'][proj.index])
    np.testing.assert_array_equal(proj.v, cloud['v'][proj.index])
    base = lidar_to_image(cloud['xyz'], None, T_CAM_LIDAR, CAM, NATIVE_HW)
    more = lidar_to_image(pts, None, T_CAM_LIDAR, CAM, NATIVE_HW)
    np.testing.assert_array_equal(base.depth, more.depth)
    np.testing.assert_array_equal(base.mask, more.mask)


def test_empty_and_non_finite_clouds():
    for empty in (np.zeros((0, 3), np.float32), np.zeros((0, 3))):
        li = lidar_to_image(empty, np.zeros(0), T_CAM_LIDAR, CAM, (60, 80))
        assert li.depth.shape == (60, 80) and not li.mask.any() and not li.range.any()
        assert labels_to_points(np.zeros((60, 80), np.uint8), empty, T_CAM_LIDAR, CAM).shape == (0,)
    nan = np.full((10, 3), np.nan)
    assert not lidar_to_image(nan, None, T_CAM_LIDAR, CAM, (60, 80)).mask.any()


def test_nan_and_inf_points_are_ignored(cloud):
    pts = cloud['xyz'].copy()
    inten = cloud['intensity'].copy()
    bad = np.arange(0, len(pts), 7)
    pts[bad[0::3], 0] = np.nan
    pts[bad[1::3], 1] = np.inf
    pts[bad[2::3], 2] = -np.inf
    good = np.setdiff1d(np.arange(len(pts)), bad)
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # no RuntimeWarning from NaN/inf arithmetic
        li = lidar_to_image(pts, inten, T_CAM_LIDAR, CAM, (120, 160))
        labels = labels_to_points(np.ones((120, 160), np.uint8), pts, T_CAM_LIDAR, CAM)
    ref = lidar_to_image(cloud['xyz'][good], inten[good], T_CAM_LIDAR, CAM, (120, 160))
    np.testing.assert_array_equal(li.mask, ref.mask)
    np.testing.assert_array_equal(li.range, ref.range)
    assert (labels[bad] == 255).all()


# ---------------------------------------------------------------------------------------------
# camera models against OpenCV


def _fov_points(n: int, half_angle: float, seed: int) -> np.ndarray:
    """Camera-frame points inside a cone around the optical axis, 1-20 m away."""
    rng = np.random.default_rng(seed)
    a = rng.uniform(-half_angle, half_angle, (n, 2))
    z = rng.uniform(1.0, 20.0, n)
    return np.stack([a[:, 0] * z, a[:, 1] * z, z], axis=1)


def _compare_with_opencv(camera, p_lidar, cv_uv, scale: int = 10):
    """project_points at `scale` x the native resolution returns integer pixels of 1/scale of a
    native pixel; they must be the bins of OpenCV's sub-pixel projections."""
    out_hw = (camera.height * scale, camera.width * scale)
    proj = project_points(p_lidar, T_CAM_LIDAR, camera, out_hw)
    fu = (cv_uv[:, 0] + 0.5) * scale  # scaled(): u' = (u + 0.5) * s - 0.5; bin = floor(u' + 0.5)
    fv = (cv_uv[:, 1] + 0.5) * scale
    inside = (fu >= 0) & (fu < out_hw[1]) & (fv >= 0) & (fv < out_hw[0])
    # leave out points within 1e-6 bins of a bin edge (rounding may go either way)
    clear = (np.abs(fu - np.round(fu)) > 1e-6) & (np.abs(fv - np.round(fv)) > 1e-6)
    sel = np.isin(np.arange(len(p_lidar)), proj.index)
    assert ((sel == inside) | ~clear).all()
    assert inside.sum() > 0.1 * len(p_lidar)
    pos = np.searchsorted(proj.index, np.flatnonzero(inside & clear))
    idx = proj.index[pos]
    np.testing.assert_array_equal(proj.u[pos], np.floor(fu[idx]).astype(int))
    np.testing.assert_array_equal(proj.v[pos], np.floor(fv[idx]).astype(int))


def _rvec_tvec(T: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return cv2.Rodrigues(T[:3, :3])[0], T[:3, 3].copy()


@pytest.mark.parametrize(
    ('model', 'D'),
    [
        ('', []),
        ('plumb_bob', [-0.28, 0.09, 0.0012, -0.0007, -0.012]),
        ('rational_polynomial', [0.6, -0.2, 0.001, 0.0008, 0.05, 0.95, 0.02, 0.01]),
    ],
)
def test_radial_models_match_cv2_project_points(model, D):
    camera = replace(CAM, D=np.asarray(D, float), distortion_model=model)
    p_cam = _fov_points(3000, 0.75, seed=3)
    p_lidar = _to_lidar(p_cam)
    rvec, tvec = _rvec_tvec(T_CAM_LIDAR)
    cv_uv = cv2.projectPoints(p_lidar, rvec, tvec, camera.K, np.asarray(D, float))[0][:, 0]
    _compare_with_opencv(camera, p_lidar, cv_uv)


def test_equidistant_matches_cv2_fisheye_project_points():
    D = np.array([0.06, -0.012, 0.003, -0.0006])
    camera = replace(CAM, D=D, distortion_model='equidistant')
    p_cam = _fov_points(3000, 1.5, seed=4)  # wide: up to ~56 degrees off-axis
    p_lidar = _to_lidar(p_cam)
    rvec, tvec = _rvec_tvec(T_CAM_LIDAR)
    cv_uv = cv2.fisheye.projectPoints(p_lidar[:, None, :], rvec, tvec, camera.K, D)[0][:, 0]
    _compare_with_opencv(camera, p_lidar, cv_uv)


def test_rectified_projection_uses_r_and_p_with_baseline():
    R_rect = cv2.Rodrigues(np.array([0.0, np.deg2rad(2.0), 0.01]))[0]
    K2 = CAM.K.copy()
    K2[0, 2] += 7.0
    Tx = -K2[0, 0] * 0.12  # right camera of a 12 cm stereo pair
    P = np.hstack([K2, [[Tx], [0.0], [0.0]]])
    camera = replace(
        CAM, R=R_rect, P=P, D=np.array([-0.3, 0.1, 0, 0, 0]), distortion_model='plumb_bob'
    )
    p_lidar = _to_lidar(_fov_points(3000, 0.6, seed=5))
    # P @ [R X; 1] == K2 @ (R X + [Tx / fx, 0, 0]): a pinhole with a shifted centre
    T = np.eye(4)
    T[:3, :3] = R_rect @ T_CAM_LIDAR[:3, :3]
    T[:3, 3] = R_rect @ T_CAM_LIDAR[:3, 3] + [Tx / K2[0, 0], 0.0, 0.0]
    rvec, tvec = _rvec_tvec(T)
    cv_uv = cv2.projectPoints(p_lidar, rvec, tvec, K2, np.zeros(5))[0][:, 0]
    out_hw = (CAM.height * 10, CAM.width * 10)
    proj = project_points(p_lidar, T_CAM_LIDAR, camera, out_hw, use_rectified=True)
    fu, fv = (cv_uv[:, 0] + 0.5) * 10, (cv_uv[:, 1] + 0.5) * 10
    inside = (fu >= 0) & (fu < out_hw[1]) & (fv >= 0) & (fv < out_hw[0])
    assert inside.sum() > 1000
    np.testing.assert_array_equal(proj.index, np.flatnonzero(inside))
    np.testing.assert_array_equal(proj.u, np.floor(fu[inside]).astype(int))
    np.testing.assert_array_equal(proj.v, np.floor(fv[inside]).astype(int))
    z_rect = (p_lidar @ T[:3, :3].T + T[:3, 3])[inside, 2]
    np.testing.assert_allclose(proj.depth, z_rect, atol=1e-6)
    with pytest.raises(ValueError, match='P'):
        project_points(p_lidar, T_CAM_LIDAR, replace(CAM, P=None), (48, 64), use_rectified=True)


@pytest.mark.parametrize('model', ['plumb_bob', 'equidistant'])
def test_distortion_fold_over_is_not_projected_into_the_image(model):
    """Strong barrel distortion folds back (r (1 - 0.4 r^2) turns at r = 0.91; the fisheye
    theta (1 - 0.5 theta^2) at 47 degrees): a point far beyond is mapped by the polynomial near
    the image centre although no lens can see it there."""
    if model == 'plumb_bob':
        D = np.array([-0.4, 0.0, 0.0, 0.0, 0.0])
        far = 1.6  # x / z
    else:
        D = np.array([-0.5, 0.0, 0.0, 0.0])
        far = np.tan(np.deg2rad(80.0))
    camera = replace(CAM, D=D, distortion_model=model)
    p_cam = np.array([[far * 5.0, 0.0, 5.0], [0.4 * 5.0, 0.0, 5.0]])
    if model == 'plumb_bob':
        cv_uv = cv2.projectPoints(p_cam, np.zeros(3), np.zeros(3), camera.K, D)[0][:, 0]
    else:
        cv_uv = cv2.fisheye.projectPoints(p_cam[:, None], np.zeros(3), np.zeros(3), camera.K, D)
        cv_uv = cv_uv[0][:, 0]
    assert 0 <= cv_uv[0, 0] < CAM.width  # OpenCV puts the far point inside the image
    proj = project_points(p_cam, np.eye(4), camera, NATIVE_HW)
    np.testing.assert_array_equal(proj.index, [1])


def test_unsupported_distortion_is_rejected():
    with pytest.raises(ValueError, match='plumb_bob'):
        project_points(
            np.ones((1, 3)), np.eye(4), replace(CAM, D=np.ones(5), distortion_model='x'), (48, 64)
        )
    thin_prism = np.r_[np.zeros(8), 0.01, 0, 0, 0]
    with pytest.raises(ValueError, match='thin-prism'):
        project_points(
            np.ones((1, 3)),
            np.eye(4),
            replace(CAM, D=thin_prism, distortion_model='rational_polynomial'),
            (48, 64),
        )


# ---------------------------------------------------------------------------------------------
# labels -> points


def _label_image(h: int, w: int) -> np.ndarray:
    vv, uu = np.mgrid[0:h, 0:w]
    return ((uu * 7 + vv * 13) % 200).astype(np.uint8)


def test_labels_to_points_native_resolution(cloud):
    labels = _label_image(*NATIVE_HW)
    cam = cloud['cam']
    # a point 0.1 m behind each of the first box points on the same ray (within the tolerance)
    # and one 0.3 m behind (occluded)
    box_idx = np.flatnonzero(cloud['is_box'])[:50]
    ray = cam[box_idx] / np.linalg.norm(cam[box_idx], axis=1, keepdims=True)
    near_behind = cam[box_idx] + ray * 0.1 / ray[:, 2:3]
    far_behind = cam[box_idx] + ray * 0.3 / ray[:, 2:3]
    outside = cam[:20] + np.array([10.0, 0.0, 0.0])
    behind_camera = -cam[:20]
    extra = np.concatenate([near_behind, far_behind, outside, behind_camera])
    pts = np.concatenate([cloud['xyz'], _to_lidar(extra).astype(np.float32)])
    out = labels_to_points(labels, pts, T_CAM_LIDAR, CAM, occlusion_tolerance_m=0.2)
    assert out.dtype == np.uint8 and out.shape == (len(pts),)

    n = len(cloud['xyz'])
    px = cloud['v'] * CAM.width + cloud['u']
    occluded = ~cloud['is_box'] & np.isin(px, px[cloud['is_box']])
    own = labels[cloud['v'], cloud['u']]
    np.testing.assert_array_equal(out[:n][~occluded], own[~occluded])
    assert (out[:n][occluded] == 255).all() and occluded.sum() > 200
    bu, bv = cloud['u'][box_idx], cloud['v'][box_idx]
    np.testing.assert_array_equal(out[n : n + 50], labels[bv, bu])
    assert (out[n + 50 :] == 255).all()


def test_labels_to_points_low_resolution_label_image(cloud):
    out_hw = (120, 160)
    labels = _label_image(*out_hw)
    out = labels_to_points(labels, cloud['xyz'], T_CAM_LIDAR, CAM, occlusion_tolerance_m=0.2)
    flat = (cloud['v'] // 4) * out_hw[1] + cloud['u'] // 4
    z = cloud['cam'][:, 2]
    zmin = np.full(out_hw[0] * out_hw[1], np.inf)
    np.minimum.at(zmin, flat, z)
    visible = z <= zmin[flat] + 0.2
    np.testing.assert_array_equal(out[visible], labels.ravel()[flat[visible]])
    assert (out[~visible] == 255).all()
    assert (~visible).sum() > 100


def test_nearest_point_wins_with_exact_ties():
    """Each hit pixel gets exactly one point, the nearest; an exact depth tie keeps one."""
    flat = np.array([3, 1, 3, 3, 1, 0, 7])
    depth = np.array([2.0, 1.0, 1.5, 1.5, 0.5, 9.0, 4.0])
    zbuf = _zbuffer(flat, depth, 8)
    np.testing.assert_array_equal(zbuf, [9.0, 0.5, np.inf, 1.5, np.inf, np.inf, np.inf, 4.0])
    win = _nearest_per_pixel(flat, depth, zbuf)
    assert sorted(flat[win].tolist()) == [0, 1, 3, 7]  # one winner per hit pixel
    assert np.array_equal(depth[win], zbuf[flat[win]])  # each the nearest of its pixel
    assert set(win.tolist()) & {2, 3} and not {2, 3} <= set(win.tolist())
