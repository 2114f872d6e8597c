"""Topic names of a recording: what the simulator writes and what the dataset reads.

One definition, so a bag the simulator records is a bag the data path understands; users map
their own bags' topics onto these fields in YAML. Defaults follow DESIGN.md section 3.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Topics:
    rgb: str = 'camera/image'  # Image or CompressedImage
    camera_info: str = 'camera/camera_info'
    depth: str = 'depth/image'  # 32FC1 m or 16UC1 mm
    lidar: str = 'lidar/points'  # PointCloud2 x y z [intensity]
    event: str = 'events'  # PointCloud2 x y t p, an event Image, or EventPacket (evt3)
    semantic: str = 'labels/semantic'  # mono8 class ids, 255 = unlabelled
    robot: str = 'labels/robot'  # mono8 robot mask
    joint_states: str = 'joint_states'
    tf_static: str = '/tf_static'
    tf: str = '/tf'  # '' to leave out
