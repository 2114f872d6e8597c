"""The simulator: pybullet scenes -> rosbag2 recordings with RGB, depth, LiDAR, events and
ground truth (semantic labels, robot masks, joint states). Entry point: `rmseg-train sim`."""
