"""rmseg_ros: robust multi-modal semantic segmentation for ROS 2.

The package is a ROS-free numpy/torch core (conversions, sync, projection, models, inference)
with a thin rclpy shell in `rmseg_ros.nodes`, `graph.py` and `bringup.py`.
"""

__version__ = '0.1.0'
