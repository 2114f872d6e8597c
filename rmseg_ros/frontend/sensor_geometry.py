"""The sensor rig one frame is decoded with: camera intrinsics, LiDAR extrinsic, event sensor size.

These three travel together from the node (CameraInfo, TF or a parameter, the event sensor
parameter) to every decoding step, and a LiDAR or event tensor built on arrival stays valid only
while they are unchanged. So they are one immutable value with a version: `GeometryTracker`
hands out the same object while the values stay equal and a new version when one changes, and
the prepared-input cache compares versions instead of the values.
"""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass, field
from typing import cast

import numpy as np

from rmseg_ros.camera import CameraIntrinsics

__all__ = ['GeometryTracker', 'SensorGeometry']

_versions = itertools.count(1)


@dataclass(frozen=True, eq=False)
class SensorGeometry:
    camera: CameraIntrinsics
    T_cam_lidar: np.ndarray | None = None  # (4, 4) LiDAR -> camera; None: not known (yet)
    event_sensor_hw: tuple[int, int] | None = None  # None: the camera's size
    # unique per object; GeometryTracker reuses an object while the values stay equal
    version: int = field(default_factory=lambda: next(_versions))

    def same_values(self, other: SensorGeometry) -> bool:
        """Equal camera, extrinsic and event size (a new CameraIntrinsics per CameraInfo
        message: compare values, not identity)."""
        return _value_key(self) == _value_key(other)


def _value_key(g: SensorGeometry) -> tuple:
    cam = g.camera
    p = b'' if cam.P is None else np.asarray(cam.P, float).tobytes()
    t = b'' if g.T_cam_lidar is None else np.asarray(g.T_cam_lidar, float).tobytes()
    return (cam.width, cam.height, np.asarray(cam.K, float).tobytes(),
            np.asarray(cam.D, float).tobytes(), np.asarray(cam.R, float).tobytes(), p,
            cam.distortion_model, t, g.event_sensor_hw)


_KEEP = object()


class GeometryTracker:
    """The current geometry of a node, updated piece by piece from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._camera: CameraIntrinsics | None = None
        self._T_cam_lidar: np.ndarray | None = None
        self._event_sensor_hw: tuple[int, int] | None = None
        self._current: SensorGeometry | None = None

    @property
    def current(self) -> SensorGeometry | None:
        """None until a camera is known."""
        return self._current

    def update(self, camera: object = _KEEP, T_cam_lidar: object = _KEEP,
               event_sensor_hw: object = _KEEP) -> SensorGeometry | None:
        """Set the given pieces; the current geometry (the same object when nothing changed in
        value), None while no camera is known."""
        with self._lock:
            if camera is not _KEEP:
                self._camera = camera  # type: ignore[assignment]
            if T_cam_lidar is not _KEEP:
                self._T_cam_lidar = (None if T_cam_lidar is None
                                     else np.asarray(T_cam_lidar, np.float64))
            if event_sensor_hw is not _KEEP:
                hw = cast('tuple[int, int] | None', event_sensor_hw)
                self._event_sensor_hw = None if hw is None else (int(hw[0]), int(hw[1]))
            if self._camera is None:
                self._current = None
                return None
            fresh = SensorGeometry(self._camera, self._T_cam_lidar, self._event_sensor_hw)
            if self._current is None or not self._current.same_values(fresh):
                self._current = fresh
            return self._current
