"""The perception node's work without ROS: the latest-only worker and its freshness policy, the
pipeline from a synchronised set to outputs, its settings (`config`, light enough for the launch
process), diagnostics, visualisation and the RobotSeg stream."""
