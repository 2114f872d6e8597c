"""ROS-free streaming around the RobotSeg tracker: when to forget, overlays, device fallback.

The robotseg node is a thin shell over `RobotSegStream`: it hands over each camera frame with
its stamp and publishes what comes back. Memory is reset
- on request (the node's Trigger service),
- on a scene cut: the frame differs from the previous one by more than `scene_cut_threshold`
  (mean absolute difference of small, brightness-normalised grey thumbnails, in [0, 1]): the
  memory describes another view and would only mislead the prompts and memory attention;
- when the stamps jump backwards (a bag looping, a clock reset): the stream started again.
On CUDA failure the tracker moves to the CPU once and the frame is retried.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field

import cv2
import numpy as np

from rmseg_ros.inference.device import is_cuda_failure

log = logging.getLogger(__name__)

RESET_REASONS = ('manual', 'scene_cut', 'stamp_jump')


class SceneCutDetector:
    """Flags a frame whose thumbnail differs strongly from the previous frame's."""

    def __init__(self, threshold: float = 0.3, size: tuple[int, int] = (32, 24)) -> None:
        self.threshold = float(threshold)
        self.size = size
        self._prev: np.ndarray | None = None
        self.last_score = 0.0

    def thumbnail(self, rgb: np.ndarray) -> np.ndarray:
        grey = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)
        small = cv2.resize(grey, self.size, interpolation=cv2.INTER_AREA).astype(np.float32)
        mean = float(small.mean())
        return small / (2.0 * mean) if mean > 1.0 else small / 255.0  # light-level invariant

    def reset(self) -> None:
        self._prev = None

    def update(self, rgb: np.ndarray) -> bool:
        """True when `rgb` starts a new scene (never for the first frame; 0 disables)."""
        thumb = self.thumbnail(rgb)
        prev, self._prev = self._prev, thumb
        if prev is None or prev.shape != thumb.shape:
            self.last_score = 0.0
            return False
        self.last_score = float(np.clip(np.abs(thumb - prev).mean(), 0.0, 1.0))
        return self.threshold > 0 and self.last_score > self.threshold


class StampJumpDetector:
    """Flags a stamp older than the previous one by more than `tolerance_ns`."""

    def __init__(self, tolerance_ns: int = 0) -> None:
        self.tolerance_ns = int(tolerance_ns)
        self._last: int | None = None

    def reset(self) -> None:
        self._last = None

    def update(self, stamp_ns: int) -> bool:
        last, self._last = self._last, int(stamp_ns)
        return last is not None and stamp_ns < last - self.tolerance_ns


def overlay(rgb: np.ndarray, mask: np.ndarray, color: tuple[int, int, int] = (255, 64, 0),
            alpha: float = 0.5) -> np.ndarray:
    """RGB image with the mask's pixels blended towards `color` (alpha in [0, 1])."""
    out = np.ascontiguousarray(rgb).copy()
    sel = mask.astype(bool)
    if sel.any():
        blend = out[sel].astype(np.float32) * (1 - alpha) + np.float32(alpha) * np.asarray(
            color, np.float32)
        out[sel] = np.clip(blend + 0.5, 0, 255).astype(np.uint8)
    return out


@dataclass
class StreamResult:
    mask: np.ndarray  # (H, W) uint8 {0, 1}
    prob: np.ndarray  # (H, W) float32
    reset_reason: str | None  # why the memory was cleared before this frame
    latency_ms: float
    memory_frames: int


@dataclass
class StreamStats:
    frames: int = 0
    resets: dict[str, int] = field(default_factory=lambda: dict.fromkeys(RESET_REASONS, 0))
    latencies_ms: deque = field(default_factory=lambda: deque(maxlen=100))
    fallbacks: int = 0
    last_scene_score: float = 0.0

    def latency_summary(self) -> tuple[float, float]:
        """(median, max) of the recent latencies in ms (0 before the first frame)."""
        recent = tuple(self.latencies_ms)  # one C-level copy: the node's worker may append
        if not recent:
            return 0.0, 0.0
        arr = np.asarray(recent)
        return float(np.median(arr)), float(arr.max())


class RobotSegStream:
    """Frames with stamps in, masks out; resets the tracker's memory when it should."""

    def __init__(self, tracker, scene_cut_threshold: float = 0.3,
                 stamp_jump_tolerance_ns: int = 0, reset_on_stamp_jump: bool = True) -> None:
        self.tracker = tracker
        self.scene_cut = SceneCutDetector(scene_cut_threshold)
        self.stamp_jump = StampJumpDetector(stamp_jump_tolerance_ns)
        self.reset_on_stamp_jump = bool(reset_on_stamp_jump)
        self.stats = StreamStats()

    @property
    def device(self) -> str:
        return self.tracker.device

    @property
    def memory_frames(self) -> int:
        return len(self.tracker.memory)

    def reset(self, reason: str = 'manual') -> int:
        """Clear the memory; returns how many frames it held."""
        if reason not in RESET_REASONS:
            raise ValueError(f'unknown reset reason {reason!r}; known: {RESET_REASONS}')
        held = len(self.tracker.memory)
        self.tracker.reset()
        self.stats.resets[reason] += 1
        return held

    def _step(self, rgb: np.ndarray) -> np.ndarray:
        try:
            return self.tracker.step_prob(rgb)
        except (RuntimeError, AssertionError) as exc:
            if self.tracker.device == 'cpu' or not is_cuda_failure(exc):
                raise
            log.warning('RobotSeg failed on %s (%s); falling back to the CPU',
                        self.tracker.device, exc)
            self.stats.fallbacks += 1
            self.tracker.to('cpu')
            return self.tracker.step_prob(rgb)

    def process(self, rgb: np.ndarray, stamp_ns: int) -> StreamResult:
        t0 = time.perf_counter()
        reason = None
        jumped = self.stamp_jump.update(stamp_ns)
        cut = self.scene_cut.update(rgb)
        self.stats.last_scene_score = self.scene_cut.last_score
        if jumped and self.reset_on_stamp_jump:
            reason = 'stamp_jump'
        elif cut:
            reason = 'scene_cut'
        if reason is not None and len(self.tracker.memory):
            self.reset(reason)
        prob = self._step(rgb)
        mask = (prob > self.tracker.threshold).astype(np.uint8)
        latency = (time.perf_counter() - t0) * 1e3
        self.stats.frames += 1
        self.stats.latencies_ms.append(latency)
        return StreamResult(mask, prob, reason, latency, len(self.tracker.memory))
