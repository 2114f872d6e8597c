"""Configuration of RSS (training/configs/rss.yaml): data, model, cold start, the method.

The data section is RMMSS's (`training.rmmss.config.DataConfig`): the same cached shards, front
end and class table. `resolution` trains and rewards at a smaller size than the cache (the
model is fully convolutional); evaluation resizes the inputs the same way and scores the
upsampled prediction against the full-resolution labels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rmseg_ros.config import from_dict, load_yaml, merge_config, section, to_dict
from rmseg_ros.models.fusion import FusionConfig
from training.engine import OptimConfig, RunConfig, resolve_stage_config
from training.rmmss.config import DataConfig

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / 'configs' / 'rss.yaml'
LEVELS = ('supervised', 'pixel', 'image')
GROUPS = ('image', 'batch')


@dataclass
class PSRConfig:
    """Progressive scale rewards: the scales (fractions of the training resolution) at which
    action maps are sampled and rewarded. `schedule`: [{start: fraction of training, scales:
    [...]}, ...] switches the set during training (e.g. coarse first); empty: `scales` all along.
    [1.0] alone is the naive pipeline at the training resolution; a scale > 1 samples maps from
    upsampled logits (e.g. 4.0 with resolution 60x80: the camera's 240x320), scored against the
    full-resolution labels."""

    scales: list[float] = field(default_factory=lambda: [1.0])
    schedule: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class MethodConfig:
    level: str = 'image'  # supervised (cross-entropy, the PSL baseline) | pixel | image
    samples: int = 8  # pixel: N actions per pixel; image: G action maps per image (and scale)
    sync_an: bool = True  # all-reduce the normalisation statistics over processes
    # SyncAN off measured on one process: the batch is split into this many parts, each
    # normalised on its own, as that many unsynchronised processes would (1: no split)
    virtual_processes: int = 1
    group: str = 'image'  # image level without PSD: GRPO group = the G maps of one image | batch
    reward: str = 'miou'  # image-level reward: miou | accuracy | bag
    feedback_topic: str = 'feedback/score'  # reward 'bag': Float32 topic in each source bag
    feedback_tolerance_ms: float = 50.0
    psr: PSRConfig = field(default_factory=PSRConfig)
    psd: bool = False  # pair-wise spatial difference advantages
    psd_normalize: bool = True  # PSD on rewards divided by their group's std (scale-free)
    kl_weight: float = 0.0  # KL to the frozen reference (the initial model); 0: none
    eps: float = 1e-6

    def check(self) -> None:
        if self.level not in LEVELS:
            raise ValueError(f'method.level must be one of {LEVELS}, got {self.level!r}')
        if self.group not in GROUPS:
            raise ValueError(f'method.group must be one of {GROUPS}, got {self.group!r}')
        if self.samples < 1 or self.virtual_processes < 1:
            raise ValueError('method.samples and method.virtual_processes must be >= 1')
        if not self.psr.scales or any(not s > 0.0 for s in self.psr.scales):
            raise ValueError(f'method.psr.scales must be > 0, got {self.psr.scales}')


@dataclass
class EvalConfig:
    shards: list[str] = field(default_factory=lambda: ['data/cache/test/*'])
    max_samples: int = 0  # 0: all (evenly spaced otherwise)
    batch_size: int = 8


@dataclass
class RSSConfig:
    out_root: str = 'runs/rss'
    name: str = 'rss'  # run directory: <out_root>/<name>
    data: DataConfig = field(default_factory=DataConfig)
    resolution: tuple[int, int] | None = (120, 160)  # (H, W) of training; null: the cache's
    # FusionConfig without num_classes / event_bins (derived); a section: overrides merge into it
    model: dict[str, Any] = field(default_factory=dict, metadata=section(FusionConfig))
    # cold start: a deployable checkpoint (fusion or fsm_student) to start from; null: random
    init_checkpoint: str | None = None
    last_layer_lr_factor: float = 1.0  # learning-rate factor of the last layer (`classifier`)
    method: MethodConfig = field(default_factory=MethodConfig)
    run: RunConfig = field(default_factory=RunConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    evaluate: EvalConfig = field(default_factory=EvalConfig)

    def run_dir(self) -> Path:
        return Path(self.out_root) / self.name


def load_config(path: str | Path | None, smoke: bool = False, overrides: dict | None = None
                ) -> tuple[RSSConfig, dict]:
    """(typed config, resolved plain dict); `overrides` are merged last (ablation rows, CLI)."""
    raw = load_yaml(path or DEFAULT_CONFIG)
    resolved = merge_config(resolve_stage_config(raw, 'rss', smoke, schema=RSSConfig),
                            overrides, RSSConfig)
    cfg = from_dict(RSSConfig, resolved, 'rss')
    cfg.method.check()
    return cfg, to_dict(cfg)
