"""Static transform tree: composition, inversion and quaternion conversion."""

import numpy as np
import pytest

from rmseg_ros.transforms import TransformTree, invert, transform_from_xyz_quat


def _rot_z(deg: float) -> np.ndarray:
    a = np.deg2rad(deg)
    T = np.eye(4)
    T[:2, :2] = [[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]
    return T


def test_quaternion_matches_rotation_about_z():
    half = np.deg2rad(90) / 2
    T = transform_from_xyz_quat((1, 2, 3), (0, 0, np.sin(half), np.cos(half)))
    np.testing.assert_allclose(T[:3, :3], _rot_z(90)[:3, :3], atol=1e-12)
    np.testing.assert_allclose(T @ [1, 0, 0, 1], [1, 3, 3, 1], atol=1e-12)


def test_lookup_chains_through_common_parent_and_inverts():
    tree = TransformTree()
    T_base_cam = _rot_z(30)
    T_base_cam[:3, 3] = [0.5, 0, 1.0]
    T_base_lidar = _rot_z(-45)
    T_base_lidar[:3, 3] = [0.1, 0.2, 1.5]
    tree.add('base_link', 'camera', T_base_cam)
    tree.add('/base_link', 'lidar', T_base_lidar)
    T_cam_lidar = tree.lookup('camera', 'lidar')
    p_lidar = np.array([2.0, -1.0, 0.3, 1.0])
    # The same point expressed through the base frame both ways.
    np.testing.assert_allclose(T_base_cam @ (T_cam_lidar @ p_lidar), T_base_lidar @ p_lidar)
    np.testing.assert_allclose(tree.lookup('lidar', 'camera'), invert(T_cam_lidar), atol=1e-12)
    np.testing.assert_allclose(tree.lookup('lidar', 'lidar'), np.eye(4))


def test_unknown_frame_and_zero_quaternion_raise():
    tree = TransformTree()
    tree.add('a', 'b', np.eye(4))
    with pytest.raises(LookupError, match='no transform'):
        tree.lookup('a', 'c')
    with pytest.raises(ValueError, match='invalid quaternion'):
        transform_from_xyz_quat((0, 0, 0), (0, 0, 0, 0))
