"""A small rosbag2 recording of the synthetic rig, written with rosbags from rclpy messages
(imported by the bringup and demo tests; pytest puts this directory on sys.path)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from rmseg_ros import conversions
from rmseg_ros.synthetic import SyntheticRig, cloud_array

T0_NS = 1_700_000_000 * 10**9
PERIOD_NS = 100_000_000  # 10 Hz


def write_rig_bag(path: Path, frames: int = 6, width: int = 160, height: int = 120,
                  storage: str = 'mcap', lidar: bool = False, labels: bool = False) -> list[int]:
    """camera/image (rgb8), depth/image (32FC1), camera/camera_info, with `lidar`
    lidar/points (x y z intensity, same stamps) and with `labels` labels/semantic (mono8 class
    ids, as the simulator records them) at 10 Hz; returns the camera frames' header stamps
    (ns)."""
    from rclpy.serialization import serialize_message
    from sensor_msgs.msg import CameraInfo
    from std_msgs.msg import Header

    store = get_typestore(Stores.ROS2_KILTED)
    rig = SyntheticRig(width=width, height=height)
    cam = rig.camera
    stamps = []
    topics = [('/camera/image', 'sensor_msgs/msg/Image'), ('/depth/image', 'sensor_msgs/msg/Image'),
              ('/camera/camera_info', 'sensor_msgs/msg/CameraInfo')]
    if lidar:
        topics.append(('/lidar/points', 'sensor_msgs/msg/PointCloud2'))
    if labels:
        topics.append(('/labels/semantic', 'sensor_msgs/msg/Image'))
    with Writer(path, version=9, storage_plugin=StoragePlugin[storage.upper()]) as writer:
        conns = {topic: writer.add_connection(topic, msgtype, typestore=store)
                 for topic, msgtype in topics}
        for i in range(frames):
            stamp = T0_NS + i * PERIOD_NS
            header = Header(frame_id='camera_optical_frame')
            header.stamp.sec, header.stamp.nanosec = divmod(stamp, 10**9)
            t = i * PERIOD_NS / 1e9
            info = CameraInfo(header=header, width=cam.width, height=cam.height,
                              distortion_model='plumb_bob', d=[0.0] * 5,
                              k=cam.K.reshape(-1).tolist(),
                              r=[1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
                              p=np.hstack([cam.K, np.zeros((3, 1))]).reshape(-1).tolist())
            msgs = {'/camera/camera_info': info,
                    '/camera/image': conversions.numpy_to_image(rig.rgb(t), 'rgb8', header),
                    '/depth/image': conversions.numpy_to_image(rig.depth_m(t), '32FC1', header)}
            if lidar:
                xyz, intensity = rig.lidar(t)
                lidar_header = Header(frame_id='lidar', stamp=header.stamp)
                msgs['/lidar/points'] = conversions.array_to_pointcloud2(
                    cloud_array(xyz, intensity), lidar_header)
            if labels:
                msgs['/labels/semantic'] = conversions.numpy_to_image(rig.labels(t), 'mono8',
                                                                       header)
            for topic, msg in msgs.items():
                writer.write(conns[topic], stamp, serialize_message(msg))
            stamps.append(stamp)
    return stamps
