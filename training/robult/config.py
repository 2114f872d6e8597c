"""Configuration of the Robult objectives and of the `rmseg-train robult` stage.

`RobultLossConfig` is the block both pipelines share: training/configs/robult.yaml (this stage)
and the `robult:` block of training/configs/rmmss.yaml (an auxiliary objective of the RMMSS
robust stage, off by default). The rest describes the semi-supervised stage itself and the
experiment that compares it with supervised-only training.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from rmseg_ros.config import from_dict, load_yaml, merge_config, section, to_dict
from rmseg_ros.frontend.preprocess import FrontendConfig
from rmseg_ros.models.fusion import FusionConfig
from training.data.bag_samples import DatasetConfig
from training.data.dataset import AugmentConfig
from training.engine import OptimConfig, RunConfig, resolve_stage_config
from training.rmmss.config import DropoutConfig, LossConfig, ValidateConfig

from .loss_config import PUConfig, ReconConfig, RobultLossConfig

__all__ = ['PUConfig', 'ReconConfig', 'RobultConfig', 'RobultLossConfig', 'load_config']

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / 'configs' / 'robult.yaml'


@dataclass
class DataConfig:
    train_shards: list[str] = field(default_factory=lambda: ['data/cache/train/*'])
    val_shards: list[str] = field(default_factory=lambda: ['data/cache/val/*'])
    dataset_config: str | None = None  # the cache's dataset config (front-end); null: default
    classes: str | None = None  # null: config/classes.yaml
    # labelled frames: a seeded selection of this fraction of the frames the recording labelled;
    # every other frame is unlabelled (its labels are never read by a supervised loss)
    label_fraction: float = 0.1
    label_seed: int = 0
    # 'frame': the fraction of the frames, spread over every recording; 'recording': that
    # fraction of the recordings, each labelled in full (a few bags labelled, the rest not)
    label_unit: str = 'frame'
    unlabelled_per_labelled: int = 1  # unlabelled frames drawn with each labelled one (0: none)
    downscale: int = 1  # integer factor applied on load (2: 240x320 shards -> 120x160)
    max_val_samples: int = 30
    augment: AugmentConfig = field(default_factory=lambda: AugmentConfig(
        flip=True, scale_range=(1.0, 1.5)))


@dataclass
class RMMSSBaseConfig:
    """The RMMSS robust stage as the base objective (pixel KL + HPDM against a frozen teacher)."""

    teacher_checkpoint: str | None = None  # null: plain supervised base objective
    init_from_teacher: bool = True
    distill: bool = True


@dataclass
class EvalConfig:
    enabled: bool = False  # evaluate the 15 subsets on `shards` after training (eval.json)
    shards: list[str] = field(default_factory=lambda: ['data/cache/test/*'])
    max_samples: int = 60  # evenly spaced (0: all)
    batch_size: int = 8


@dataclass
class ExperimentConfig:
    """supervised-only vs Robult at several label fractions, plus Robult in the RMMSS robust
    stage; every row gets `steps` optimiser steps (python -m training.robult.experiment)."""

    out_root: str = 'runs/robult'
    steps: int = 250
    batch_size: int = 4  # labelled frames per step (Robult and RMMSS rows: + as many unlabelled)
    downscale: int = 2
    fractions: list[float] = field(default_factory=lambda: [0.1, 0.5])
    label_unit: str = 'frame'  # what a fraction counts in every row: 'frame' or 'recording'
    rmmss_fraction: float = 0.1  # label fraction of the RMMSS rows (teacher, robust +- Robult)
    # teacher of the RMMSS rows: 'teacher' trains an all-modality teacher row; 'sup' reuses the
    # supervised-only row of that fraction (trained with dropout): one row less to train
    rmmss_teacher: str = 'teacher'
    eval_samples: int = 60
    eval_shards: list[str] = field(default_factory=lambda: ['data/cache/test/*'])
    parallel: int = 2  # rows trained at once (each with OMP_NUM_THREADS=1)
    rows: list[str] = field(default_factory=list)  # empty: all
    # every row once per seed (<out_root>/seed<s>/<row>): the run seed and the seed of the
    # labelled selection, so a seed's rows share their labelled frames (paired comparison)
    seeds: list[int] = field(default_factory=lambda: [0])
    threads: int = 1  # torch intra-op threads of each row (parallel rows: 1 each on 2 cores)
    num_workers: int = 0  # loader workers of each row (0: parallel rows leave no core spare)


@dataclass
class RobultConfig:
    stage: str = 'robult'
    out_root: str = 'runs/robult'
    data: DataConfig = field(default_factory=DataConfig)
    # FusionConfig without num_classes / event_bins (derived); a section: overrides merge into it
    model: dict[str, Any] = field(default_factory=dict, metadata=section(FusionConfig))
    run: RunConfig = field(default_factory=RunConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    dropout: DropoutConfig = field(default_factory=DropoutConfig)
    robult: RobultLossConfig = field(default_factory=lambda: RobultLossConfig(enabled=True))
    rmmss: RMMSSBaseConfig = field(default_factory=RMMSSBaseConfig)
    validate: ValidateConfig = field(default_factory=ValidateConfig)
    evaluate: EvalConfig = field(default_factory=EvalConfig)
    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)

    def run_dir(self, stage: str | None = None) -> Path:
        return Path(self.out_root) / (stage or self.stage)


def load_config(path: str | Path | None, smoke: bool = False, overrides: dict | None = None
                ) -> tuple[RobultConfig, dict]:
    """(typed config, resolved plain dict); the dict is what the run stores."""
    raw = load_yaml(path or DEFAULT_CONFIG)
    resolved = merge_config(resolve_stage_config(raw, 'robult', smoke, schema=RobultConfig),
                            overrides, RobultConfig)
    resolved['stage'] = 'robult'
    cfg = from_dict(RobultConfig, resolved, 'robult')
    plain = to_dict(cfg)
    plain.pop('experiment')  # how an experiment schedules its rows does not change a row
    return cfg, plain


def frontend_of(data: DataConfig) -> tuple[FrontendConfig, FrontendConfig]:
    """(front-end of the cached shards, front-end the model is trained at after `downscale`)."""
    cached = DatasetConfig.load(data.dataset_config).frontend()
    k = int(data.downscale)
    if k < 1 or cached.height % k or cached.width % k:
        raise ValueError(f'data.downscale {k} must divide the cache size '
                         f'{cached.width}x{cached.height}')
    return cached, replace(cached, height=cached.height // k, width=cached.width // k)


def parse_override(text: str) -> dict[str, Any]:
    """'a.b=value' (value parsed as YAML) -> {'a': {'b': value}}."""
    from training.engine import parse_set

    return parse_set([text])
