"""The perception node's settings as dataclasses, without the code that uses them.

Kept apart from rmseg_ros.pipeline.perception and rmseg_ros.frontend.preprocess so that
rmseg_ros.graph (imported by the launch process) reads them without pulling in OpenCV, the front
end or torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rmseg_ros.pipeline.freshness import FreshnessConfig
from rmseg_ros.sync.core import SyncConfig

DROP, FEED = 'drop', 'feed'  # what DegradedConfig.policy does with a degraded modality


@dataclass
class DegradedConfig:
    """Thresholds that mark a modality 'degraded', and whether a degraded one is fed or dropped."""

    rgb_dark_mean: float = 0.04  # mean intensity in [0, 1] below which RGB is under-exposed
    rgb_saturated_fraction: float = 0.85  # fraction of pixels >= 250 making RGB over-exposed
    rgb_min_std: float = 0.01  # a (nearly) uniform frame carries no information
    depth_min_valid_fraction: float = 0.02
    lidar_min_points_in_view: int = 20
    event_max_rate_per_pixel: float = 50.0  # events per pixel per window: a hot-pixel storm
    policy: dict[str, str] = field(
        default_factory=lambda: {'rgb': DROP, 'depth': DROP, 'lidar': DROP, 'event': DROP})


@dataclass
class OutputConfig:
    size: str = 'camera'  # 'camera': outputs at the camera's resolution; 'model': model's
    overlay_alpha: float = 0.5
    min_confidence: float = 0.0  # labels below this softmax probability become 255 (unknown)
    robot_class: str = 'robot'  # class given to pixels under the RobotSeg mask
    robot_mask_max_age_s: float = 0.2  # a mask further than this from the frame is not used
    occlusion_tolerance_m: float = 0.2  # a point further behind the nearest one is occluded

    def __post_init__(self) -> None:
        if self.size not in ('camera', 'model'):
            raise ValueError(f"output size must be 'camera' or 'model', got {self.size!r}")
        if not 0.0 <= self.overlay_alpha <= 1.0:
            raise ValueError(f'overlay_alpha must be in [0, 1], got {self.overlay_alpha}')


@dataclass
class InputCheckConfig:
    """Stamp plausibility against the node's clock (a stamp is the sync key: a bad one poisons
    every set it could join)."""

    max_future_s: float = 2.0  # stamps further ahead of the clock are rejected (0: no check)
    max_age_s: float = 0.0  # older stamps are rejected; 0 = off, since replayed bags are old


@dataclass
class PerceptionConfig:
    sync: SyncConfig = field(default_factory=SyncConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    checks: InputCheckConfig = field(default_factory=InputCheckConfig)
    worker: FreshnessConfig = field(default_factory=FreshnessConfig)  # the node's scheduling
    degraded: DegradedConfig | None = None  # None: the checkpoint's thresholds
