"""One synchronised set of ROS messages from the synthetic rig (imported by the perception-core
tests; pytest puts this directory on sys.path)."""

from __future__ import annotations

from rmseg_ros import conversions
from rmseg_ros.synthetic import SyntheticRig, cloud_array, event_array


def set_messages(rig: SyntheticRig, t: float, stamp: int) -> dict:
    """rgb8 image, 32FC1 depth, LiDAR cloud and 50 ms of events at rig time `t`."""
    xyz, intensity = rig.lidar(t)
    return {
        'rgb': conversions.numpy_to_image(rig.rgb(t), 'rgb8'),
        'depth': conversions.numpy_to_image(rig.depth_m(t), '32FC1'),
        'lidar': conversions.array_to_pointcloud2(cloud_array(xyz, intensity)),
        'event': conversions.array_to_pointcloud2(event_array(rig.events(t, stamp, 50_000_000))),
    }
