"""The simulator's configuration (training/configs/sim.yaml) as typed dataclasses.

Every default lives here and in the YAML file; a misspelt key is an error (rmseg_ros.config).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rmseg_ros.camera import CameraIntrinsics
from rmseg_ros.config import from_dict, load_yaml, merge_config
from training.topics import Topics

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / 'configs' / 'sim.yaml'


@dataclass
class CameraConfig:
    width: int = 320
    height: int = 240
    hfov_deg: float = 70.0
    near_m: float = 0.05
    far_m: float = 20.0
    rate_hz: float = 10.0

    def intrinsics(self) -> CameraIntrinsics:
        return CameraIntrinsics.from_fov(self.width, self.height, self.hfov_deg)


@dataclass
class LidarConfig:
    beams: int = 16
    columns: int = 512
    vfov_deg: tuple[float, float] = (-25.0, 15.0)
    min_range_m: float = 0.2
    max_range_m: float = 30.0
    every_n_frames: int = 1
    threads: int = 1  # rayTestBatch threads (0 = all cores)
    xyz: tuple[float, float, float] = (0.0, 0.0, 0.1)
    rpy: tuple[float, float, float] = (0.0, 0.0, 0.0)
    reflectivity_jitter: float = 0.2
    reflectivity: dict[str, float] = field(default_factory=dict)


@dataclass
class EventConfig:
    contrast_pos: float = 0.2
    contrast_neg: float = 0.2
    contrast_sigma: float = 0.03
    min_contrast: float = 0.05
    log_eps: float = 0.01
    refractory_s: float = 0.0
    max_events_per_pixel: int = 10
    noise_rate_hz: float = 0.0
    substeps: int = 1


@dataclass
class SceneConfig:
    room_size_m: tuple[float, float] = (4.0, 7.0)
    wall_height_m: float = 2.5
    robots: dict[str, float] = field(
        default_factory=lambda: {'franka_panda': 1.0, 'kuka_iiwa': 1.0, 'xarm6': 1.0})
    husky_probability: float = 0.35
    objects: tuple[int, int] = (3, 8)
    object_classes: dict[str, float] = field(default_factory=lambda: {
        'box': 1.0, 'cylinder': 1.0, 'mug': 1.0, 'duck': 1.0, 'clutter': 1.0})
    floor_object_fraction: float = 0.3
    texture_probability: float = 0.6
    robot_tint_probability: float = 0.3
    brightness: tuple[float, float] = (0.12, 1.0)
    shadows: bool = False
    robot_motion: bool = True
    camera_motion: str = 'random'  # random (moving_camera_probability) | static | moving
    moving_camera_probability: float = 0.6
    camera_distance_m: tuple[float, float] = (1.1, 2.2)
    camera_elevation_deg: tuple[float, float] = (15.0, 45.0)
    joint_amplitude: float = 0.9
    segment_s: tuple[float, float] = (1.0, 2.5)


@dataclass
class FrameConfig:
    world: str = 'world'
    base: str = 'base_link'
    camera: str = 'camera_optical_frame'
    lidar: str = 'lidar'


@dataclass
class SplitConfig:
    val_fraction: float = 0.1
    test_fraction: float = 0.1


@dataclass
class SimConfig:
    start_time_s: float = 1.7e9
    storage: str = 'mcap'
    compression: str = 'none'  # none | zstd
    camera: CameraConfig = field(default_factory=CameraConfig)
    lidar: LidarConfig = field(default_factory=LidarConfig)
    events: EventConfig = field(default_factory=EventConfig)
    scene: SceneConfig = field(default_factory=SceneConfig)
    topics: Topics = field(default_factory=Topics)
    frames: FrameConfig = field(default_factory=FrameConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    failures: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def start_time_ns(self) -> int:
        return round(self.start_time_s * 1e9)


def load_config(path: str | Path | None = None) -> SimConfig:
    """SimConfig from a YAML file merged over the packaged training/configs/sim.yaml, so a
    variant (e.g. configs/demo_sim.yaml) only states what it changes: sections merge, other
    values replace (`scene.robots: {xarm6: 1.0}` is a scene with only xarm6)."""
    data = load_yaml(DEFAULT_CONFIG)
    if path is not None:
        data = merge_config(data, load_yaml(path), SimConfig)
    return from_dict(SimConfig, data, 'sim')
