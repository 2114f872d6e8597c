"""rclpy nodes: the only place (with graph.py and bringup.py) that imports ROS."""
