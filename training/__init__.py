"""Offline training pipelines (import rmseg_ros; never imported by it)."""
