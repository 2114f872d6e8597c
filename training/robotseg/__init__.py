"""RobotSeg training from first-frame masks (`rmseg-train robotseg`), evaluation and report."""
