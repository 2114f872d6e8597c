"""Configuration of the RobotSeg pipeline (training/configs/robotseg.yaml).

One file holds the shared sections and a `variants:` table; a variant (robotseg, supervised and
the ablations) is a set of overrides merged over the shared sections, so every row of the
results table differs from the default only where its entry says, with the same step budget.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rmseg_ros.config import from_dict, load_yaml, merge_config, section, to_dict
from rmseg_ros.models.robotseg.config import RobotSegConfig
from training.engine import OptimConfig, RunConfig

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / 'configs' / 'robotseg.yaml'
LABEL_MODES = ('first_frame', 'all')


@dataclass
class AugmentConfig:
    flip: bool = True  # horizontal flip of the whole window
    # brightness factor range, one per window, drawn log-uniformly; reaching 0.2 makes a lit
    # training scene as dim as the darkest light a robot works in (and the held-out videos)
    gain: tuple[float, float] = (0.2, 1.3)
    gamma: tuple[float, float] = (0.8, 1.25)
    tint: tuple[float, float] = (0.8, 1.2)  # per-channel gain range (colour cast)
    channel_shuffle: float = 0.5  # probability of permuting R, G, B (robots come in colours)


@dataclass
class DataConfig:
    train: list[str] = field(default_factory=lambda: ['data/robotseg/train/*/scene_*'])
    test: list[str] = field(default_factory=lambda: ['data/robotseg/test/*/scene_*'])
    cache_dir: str = 'data/robotseg/cache'  # decoded frames + masks per bag (npz)
    rgb_topic: str = 'camera/image'
    robot_topic: str = 'labels/robot'
    # '': masks from robot_topic; a name: the PNGs of <bag>/<name>/robot/<stamp_ns>.png
    # (kinematic masks from `rmseg-train robot-masks --label-dir <name>`)
    robot_masks: str = ''
    height: int = 120  # training / evaluation resolution
    width: int = 160
    clip_length: int = 10  # training videos are cut into clips of this many frames
    window: int = 6  # frames per training sample: the clip's first frame + window-1 later ones
    labels: str = 'first_frame'  # first_frame: only frame 0 of each clip | all: every frame
    max_train_videos: int = 0  # 0: all
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    @property
    def hw(self) -> tuple[int, int]:
        return self.height, self.width


@dataclass
class LossConfig:
    supervised_weight: float = 1.0  # BCE + dice on labelled frames
    dice_weight: float = 1.0  # dice term inside the mask loss
    cycle_weight: float = 1.0  # forward to frame T-1, backward to frame 0, vs frame 0's mask
    semantic_weight: float = 0.5  # masked embeddings of later frames agree with frame 0's
    semantic_temperature: float = 0.1
    patch_weight: float = 0.5  # pseudo-labels from patch similarity to frame 0's robot patches
    patch_margin: float = 0.05  # |sim_robot - sim_background| needed for a pseudo-label


@dataclass
class EvalConfig:
    checkpoint: str | None = None  # null: <out_root>/<variant>/model.safetensors
    device: str = 'cpu'
    threshold: float = 0.5
    skip_first: bool = True  # frame 0 is the flow baseline's given mask: score frames 1..T-1
    boundary_tolerance: float = 0.008  # DAVIS: fraction of the image diagonal
    max_videos: int = 0  # 0: all
    seed: int = 0  # for the random tokens of the without-RPG ablation


@dataclass
class FlowConfig:
    """cv2.calcOpticalFlowFarneback parameters of the flow baseline."""

    pyr_scale: float = 0.5
    levels: int = 3
    winsize: int = 15
    iterations: int = 3
    poly_n: int = 5
    poly_sigma: float = 1.2
    soft: bool = False  # carry the warped soft mask (True) or re-threshold every frame (False)


@dataclass
class ExperimentConfig:
    variants: list[str] = field(default_factory=lambda: [
        'robotseg', 'kinematic', 'kinematic_all', 'supervised'])
    sim_config: str = 'training/configs/robotseg_sim.yaml'  # held-out data sets to render
    data_root: str = 'data/robotseg'
    # sets of sim_config scored: the robot trained for (mean and s.e. over sets) / one never seen
    deployment_sets: list[str] = field(default_factory=lambda: [
        'deploy_dark', 'deploy_lit', 'deploy_bright'])
    stress_sets: list[str] = field(default_factory=lambda: ['stress'])
    # sets whose bags are training data: they get exact kinematic masks (the others: masks
    # with the calibration error below, a test-time baseline)
    training_sets: list[str] = field(default_factory=lambda: ['train'])
    kinematic_masks: str = 'labels_kin'  # rendered into the training bags, exact calibration
    calib_masks: str = 'labels_kin_calib'  # rendered into the test bags with the error below
    calib_error_deg: float = 1.0
    calib_error_cm: float = 1.0

    def set_bags(self, name: str) -> list[str]:
        """The bag globs of a rendered set."""
        return [f'{self.data_root}/{name}/*/scene_*']


@dataclass
class RobotSegTrainConfig:
    variant: str = 'robotseg'
    out_root: str = 'runs/robotseg'
    data: DataConfig = field(default_factory=DataConfig)
    # RobotSegConfig overrides; a section: variants merge into it
    model: dict[str, Any] = field(default_factory=dict, metadata=section(RobotSegConfig))
    run: RunConfig = field(default_factory=RunConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    evaluate: EvalConfig = field(default_factory=EvalConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)
    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)

    def run_dir(self, variant: str | None = None) -> Path:
        return Path(self.out_root) / (variant or self.variant)


def load_config(path: str | Path | None = None, variant: str | None = None, smoke: bool = False,
                overrides: dict | None = None) -> tuple[RobotSegTrainConfig, dict]:
    """(typed config, resolved plain dict) of one variant; the dict is what the run stores."""
    raw = load_yaml(path or DEFAULT_CONFIG)
    variants = raw.pop('variants', {}) or {}
    smoke_raw = raw.pop('smoke', {}) or {}
    name = variant or raw.get('variant', 'robotseg')
    if name not in variants and name != 'robotseg':
        raise ValueError(f'unknown variant {name!r}; known: {sorted(variants)}')
    resolved = merge_config(raw, variants.get(name), RobotSegTrainConfig)
    if smoke:
        resolved = merge_config(resolved, smoke_raw, RobotSegTrainConfig)
    resolved = merge_config(resolved, overrides, RobotSegTrainConfig)
    resolved['variant'] = name
    cfg = from_dict(RobotSegTrainConfig, resolved, 'robotseg')
    if cfg.data.labels not in LABEL_MODES:
        raise ValueError(f'data.labels must be one of {LABEL_MODES}, got {cfg.data.labels!r}')
    if cfg.data.window < 2 or cfg.data.window > cfg.data.clip_length:
        raise ValueError('data.window must be in 2..data.clip_length')
    return cfg, to_dict(cfg)


def variant_names(path: str | Path | None = None) -> list[str]:
    raw = load_yaml(path or DEFAULT_CONFIG)
    return sorted(set(raw.get('variants') or {}) | {'robotseg'})
