"""The perception node's work, without ROS: synchronised set -> labels, overlays, labelled points.

The node only turns messages into calls of `PerceptionPipeline.run` and results back into
messages, so everything here is unit-tested with plain numpy. One broken modality costs only
itself: its decoding error is reported in the result and the others still produce labels.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from rmseg_ros.classes import ClassTable, check_same_classes
from rmseg_ros.frontend.lidar_projection import labels_to_points
from rmseg_ros.frontend.prepared import PreparedInputCache
from rmseg_ros.frontend.preprocess import build_model_input, frame_from_messages
from rmseg_ros.frontend.sensor_geometry import SensorGeometry
from rmseg_ros.pipeline import visualization
from rmseg_ros.pipeline.config import (
    InputCheckConfig,
    PerceptionConfig,
)
from rmseg_ros.sync.core import NS_PER_S, SyncedSet

OUTPUTS = ('labels', 'color_mask', 'overlay', 'confidence', 'points')


class NoUsableInputError(ValueError):
    """Nothing in the set could be fed to the model (every modality broken or degraded)."""

    def __init__(self, text: str, errors: dict[str, str], degraded: dict[str, str]) -> None:
        super().__init__(text)
        self.errors = errors
        self.degraded = degraded


@dataclass
class PerceptionResult:
    stamp_ns: int
    labels: np.ndarray  # (H, W) uint8 at the output size
    confidence: np.ndarray | None  # (H, W) float32 at the model size; None: not needed
    used: tuple[str, ...]  # modalities fed to the model
    missing: frozenset[str]  # left out by the synchroniser (stale, never seen, none in slop)
    degraded: dict[str, str]  # modality -> why it was judged degraded
    errors: dict[str, str]  # modality -> why its message could not be decoded
    color_mask: np.ndarray | None = None
    overlay: np.ndarray | None = None
    confidence_image: np.ndarray | None = None  # (H, W) uint8 0..255 at the output size
    point_xyz: np.ndarray | None = None  # (N, 3) float32 in the LiDAR frame
    point_labels: np.ndarray | None = None  # (N,) uint8, 255 outside the view or occluded
    point_robot: np.ndarray | None = None  # (N,) uint8, 1 on points under the robot mask
    robot_pixels: int = 0
    timings_ms: dict[str, float] = field(default_factory=dict)


def stamp_problem(stamp_ns: int, now_ns: int, cfg: InputCheckConfig) -> tuple[str, str] | None:
    """(kind, words) of why a header stamp is implausible, or None. The kind names the reason
    exactly in diagnostics (`rejected.<modality>.<kind>`)."""
    if stamp_ns < 0:
        return 'stamp_negative', f'stamp negative ({stamp_ns / NS_PER_S:.3f} s)'
    if stamp_ns == 0:
        return 'stamp_zero', 'stamp zero (unset header)'
    if cfg.max_future_s > 0 and stamp_ns - now_ns > cfg.max_future_s * NS_PER_S:
        return 'stamp_in_future', f'stamp {(stamp_ns - now_ns) / NS_PER_S:.2f} s in the future'
    if cfg.max_age_s > 0 and now_ns - stamp_ns > cfg.max_age_s * NS_PER_S:
        return 'stamp_too_old', f'stamp {(now_ns - stamp_ns) / NS_PER_S:.2f} s in the past'
    return None


def check_stamp(stamp_ns: int, now_ns: int, cfg: InputCheckConfig) -> str | None:
    """Why a header stamp is implausible, in words, or None."""
    problem = stamp_problem(stamp_ns, now_ns, cfg)
    return None if problem is None else problem[1]


def _resize_nearest(image: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    if image.shape[:2] == hw:
        return image
    return cv2.resize(image, (hw[1], hw[0]), interpolation=cv2.INTER_NEAREST)


class PerceptionPipeline:
    """Segmenter + class table + config; `run` does one synchronised set."""

    def __init__(self, segmenter, classes: ClassTable, cfg: PerceptionConfig) -> None:
        check_same_classes(segmenter.classes, classes.names)
        self.segmenter = segmenter
        self.classes = classes
        self.cfg = cfg
        self.frontend = segmenter.frontend
        if cfg.degraded is not None:
            self.frontend.degraded = cfg.degraded
        self.palette = classes.palette()
        names = list(classes.names)
        self.robot_id = (names.index(cfg.output.robot_class)
                         if cfg.output.robot_class in names else None)
        self.prepared = PreparedInputCache(self.frontend)

    def prepare(self, modality: str, msg: Any, geometry: SensorGeometry | None) -> bool:
        """Build a LiDAR scan's or event packet's tensor as it arrives, for the set that will
        use it (rmseg_ros.frontend.prepared); False when it is left to the set."""
        return self.prepared.put(modality, msg, geometry)

    def run(self, synced: SyncedSet, geometry: SensorGeometry,
            robot_mask: np.ndarray | None = None, want: frozenset[str] = frozenset(OUTPUTS)
            ) -> PerceptionResult:
        """One set -> outputs. Only the outputs in `want` are computed (nobody subscribed to the
        others). Raises NoUsableInputError when no modality can be fed to the model."""
        t0 = time.perf_counter()
        errors: dict[str, str] = {}
        camera, T_cam_lidar = geometry.camera, geometry.T_cam_lidar
        messages = dict(synced.messages)
        if 'lidar' in messages and T_cam_lidar is None:
            errors['lidar'] = 'no LiDAR -> camera extrinsic'
            messages.pop('lidar')
        prepared = self.prepared.take(messages, geometry)
        frame = frame_from_messages(
            synced.stamp_ns, {m: msg for m, msg in messages.items() if m not in prepared},
            geometry, errors=errors)
        if 'lidar' in prepared:
            frame.lidar_xyz = prepared['lidar'].lidar_xyz
            frame.lidar_intensity = prepared['lidar'].lidar_intensity
        model_input = build_model_input(
            frame, self.frontend, errors=errors,
            prepared={m: (p.tensor, p.reason) for m, p in prepared.items()})
        used = model_input.present
        if not used:
            why = {**{m: f'degraded: {r}' for m, r in model_input.degraded.items()}, **errors}
            raise NoUsableInputError(
                f'no usable modality in set {synced.stamp_ns}: {why or "empty"}', errors,
                model_input.degraded)
        t1 = time.perf_counter()
        # the softmax is skipped when neither the threshold nor a subscriber needs it
        need_confidence = 'confidence' in want or self.cfg.output.min_confidence > 0
        labels, confidence = self.segmenter.predict(model_input.tensors, model_input.presence,
                                                    confidence=need_confidence)
        t2 = time.perf_counter()
        if self.cfg.output.min_confidence > 0:
            labels = labels.copy()
            labels[confidence < self.cfg.output.min_confidence] = self.classes.ignore_index
        out_hw = ((camera.height, camera.width) if self.cfg.output.size == 'camera'
                  else labels.shape)
        labels = _resize_nearest(labels, out_hw)
        robot_pixels = 0
        robot = None
        if robot_mask is not None and self.robot_id is not None:
            robot = _resize_nearest(robot_mask, out_hw) > 0
            robot_pixels = int(np.count_nonzero(robot))
            labels[robot] = self.robot_id
        result = PerceptionResult(
            stamp_ns=synced.stamp_ns, labels=labels, confidence=confidence, used=used,
            missing=synced.missing, degraded=model_input.degraded, errors=errors,
            robot_pixels=robot_pixels)
        if 'color_mask' in want:
            result.color_mask = visualization.color_mask(labels, self.palette)
        if 'overlay' in want:
            result.overlay = visualization.overlay(
                visualization.base_image(model_input), labels, self.palette,
                self.cfg.output.overlay_alpha, self.classes.ignore_index)
        if 'confidence' in want:
            result.confidence_image = visualization.confidence_image(confidence, out_hw)
            if robot is not None:  # those labels come from the robot mask, not the model
                result.confidence_image[robot] = 255
        if 'points' in want and frame.lidar_xyz is not None and 'lidar' not in errors \
                and T_cam_lidar is not None:  # a frame has lidar_xyz only with an extrinsic
            xyz = frame.lidar_xyz.astype(np.float32, copy=False)
            result.point_xyz = xyz
            result.point_labels = labels_to_points(
                labels, xyz, T_cam_lidar, camera, self.cfg.output.occlusion_tolerance_m,
                ignore_label=self.classes.ignore_index)
            if robot is not None:
                on_robot = labels_to_points(robot.astype(np.uint8), xyz, T_cam_lidar, camera,
                                            self.cfg.output.occlusion_tolerance_m, ignore_label=0)
                result.point_robot = (on_robot == 1).astype(np.uint8)
        t3 = time.perf_counter()
        result.timings_ms = {'preprocess_ms': (t1 - t0) * 1e3, 'forward_ms': (t2 - t1) * 1e3,
                             'postprocess_ms': (t3 - t2) * 1e3}
        return result
