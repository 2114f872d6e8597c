"""Configuration of the RMMSS pipeline (training/configs/rmmss.yaml) and what every stage
derives from it: shard lists, the model input front-end, the class table, model configs."""

from __future__ import annotations

import glob
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rmseg_ros.classes import ClassTable
from rmseg_ros.config import from_dict, load_yaml, merge_config, section, to_dict
from rmseg_ros.frontend.preprocess import FrontendConfig
from rmseg_ros.models.fsm import FSMConfig
from rmseg_ros.models.fusion import FusionConfig
from training.data.bag_samples import DatasetConfig
from training.data.class_balance import class_weights, label_histogram
from training.data.dataset import AugmentConfig, ShardDataset
from training.data.shards import Shard
from training.engine import OptimConfig, RunConfig, resolve_stage_config
from training.robult.loss_config import RobultLossConfig

from .losses import HPDMWeights

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / 'configs' / 'rmmss.yaml'


@dataclass
class DataConfig:
    train_shards: list[str] = field(default_factory=lambda: ['data/cache/*'])
    val_shards: list[str] = field(default_factory=list)
    # dataset config of the cache (gives the front-end: resolution, normalisation, event bins);
    # null: training/configs/dataset.yaml
    dataset_config: str | None = None
    classes: str | None = None  # class table; null: config/classes.yaml
    labelled_only: bool = True
    # read the training shards into memory once when they take at most this fraction of the
    # memory available at start (else memory-mapped); 0 = always memory-mapped
    in_memory_fraction: float = 0.4
    max_train_samples: int = 0  # 0: all
    max_val_samples: int = 0
    # geometric augmentation of the training set; modality dropout is done in the training loop
    # (the teacher must see the full view of the same sample), so keep modality_dropout at 0
    augment: AugmentConfig = field(default_factory=lambda: AugmentConfig(
        flip=True, scale_range=(1.0, 1.5)))


@dataclass
class DropoutConfig:
    """Random modality dropout. Default: a sample keeps k of its present modalities, k uniform
    in [min_keep, min(max_keep, present)] (AnySeg-style 1..M; the full set then gets 1/4 of the
    samples and each single modality 1/16). With `subsets` (short names such as `R`, `RD`), a
    sample gets one of those, uniformly, restricted to what it has: ['R'] trains an RGB-only
    model, all 15 names weigh every subset as the 15-subset mean does."""

    probability: float = 1.0  # fraction of samples that get a random subset (others keep all)
    min_keep: int = 1
    max_keep: int = 4
    subsets: tuple[str, ...] = ()  # empty: k-uniform as above

    def __post_init__(self) -> None:
        self.subsets = tuple(str(s).upper() for s in self.subsets)
        letters = set('RDLE')
        for name in self.subsets:
            if not name or set(name) - letters or len(set(name)) != len(name):
                raise ValueError(f'dropout.subsets: {name!r} is not a subset name '
                                 '(letters of R, D, L, E, each once)')


@dataclass
class LossConfig:
    ohem_thresh: float = 0.7  # hard pixels: true-class probability below this
    ohem_min_kept_fraction: float = 0.0625  # at least this fraction of valid pixels is kept
    # cross-entropy class weights from the training split's pixel frequencies
    # (training.data.class_balance: none | enet_log | inverse_sqrt | median_frequency)
    class_weighting: str = 'none'
    class_weight_max_ratio: float = 50.0  # largest / smallest weight
    pixel_kl_weight: float = 50.0
    kl_temperature: float = 1.0
    proto_weight: float = 100.0
    proto_temperature: float = 1.0
    proto_stages: list[int] = field(default_factory=lambda: [0, 1, 2, 3])
    hpdm: HPDMWeights = field(default_factory=HPDMWeights)


@dataclass
class ValidateConfig:
    # subsets (short names, e.g. RDLE, R, DL) scored during training; mean over them is logged
    subsets: list[str] = field(default_factory=lambda: ['RDLE', 'R', 'D', 'L', 'E'])
    batch_size: int = 4


@dataclass
class EvalConfig:
    checkpoint: str | None = None  # null: <out_root>/fsm/model.safetensors
    shards: list[str] = field(default_factory=list)  # empty: data.val_shards
    batch_size: int = 4
    max_samples: int = 0
    device: str = 'auto'
    missing: list[str] = field(default_factory=lambda: ['remove', 'zero'])
    failures: list[str] = field(default_factory=lambda: [
        'motion_blur', 'over_exposure', 'under_exposure', 'lidar_jitter', 'low_res_events'])
    rmm_fraction: float = 0.5  # RMM: fraction of a missing modality's pixels zeroed
    nm_sigma: float = 0.1  # NM: Gaussian noise std (in the modality's tensor units; RGB: /255)
    nm_salt_pepper: float = 0.05  # NM: fraction of pixels set to the min or max value
    seed: int = 0


@dataclass
class RMMSSConfig:
    stage: str = 'teacher'
    out_root: str = 'runs/rmmss'  # run directories: <out_root>/<stage>
    data: DataConfig = field(default_factory=DataConfig)
    # FusionConfig without num_classes / event_bins (derived); a section: overrides merge into it
    model: dict[str, Any] = field(default_factory=dict, metadata=section(FusionConfig))
    fsm: dict[str, Any] = field(default_factory=dict, metadata=section(FSMConfig))
    run: RunConfig = field(default_factory=RunConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    dropout: DropoutConfig = field(default_factory=DropoutConfig)
    validate: ValidateConfig = field(default_factory=ValidateConfig)
    evaluate: EvalConfig = field(default_factory=EvalConfig)
    distill: bool = True  # robust stage: False = dropout-only baseline (AnySeg-style reference)
    init_from_teacher: bool = True  # robust stage starts from the teacher's weights
    teacher_checkpoint: str | None = None  # null: <out_root>/teacher/model.safetensors
    robust_checkpoint: str | None = None  # null: <out_root>/robust/model.safetensors
    # robust stage: the Robult losses (soft-PU contrastive + latent reconstruction) added to its
    # loss when robult.enabled (training.robult.config.RobultLossConfig; off by default)
    robult: RobultLossConfig = field(default_factory=RobultLossConfig)

    def run_dir(self, stage: str | None = None) -> Path:
        return Path(self.out_root) / (stage or self.stage)

    def predecessor(self, which: str) -> Path:
        """Deployable checkpoint of an earlier stage (config value, else its default run dir)."""
        given = getattr(self, f'{which}_checkpoint')
        return Path(given) if given else self.run_dir(which) / 'model.safetensors'


def load_config(path: str | Path | None, stage: str, smoke: bool = False,
                overrides: dict | None = None) -> tuple[RMMSSConfig, dict]:
    """(typed config, resolved plain dict) of one stage; the dict is what the run stores."""
    raw = load_yaml(path or DEFAULT_CONFIG)
    resolved = resolve_stage_config(raw, stage, smoke, schema=RMMSSConfig)
    resolved['stage'] = stage
    resolved = merge_config(resolved, overrides, RMMSSConfig)
    cfg = from_dict(RMMSSConfig, resolved, 'rmmss')
    plain = to_dict(cfg)
    if not cfg.robult.enabled:  # off: stored configs (and their hashes) stay as before Robult
        plain.pop('robult')
    return cfg, plain


def frontend_of(data: DataConfig) -> FrontendConfig:
    return DatasetConfig.load(data.dataset_config).frontend()


def class_table(data: DataConfig) -> ClassTable:
    return ClassTable.load(data.classes)


def shard_dirs(patterns: list[str]) -> list[Path]:
    """Shard directories (holding meta.json) matched by glob patterns, sorted, deduplicated."""
    found: set[Path] = set()
    for pattern in patterns:
        for p in glob.glob(str(pattern), recursive=True):
            if (Path(p) / 'meta.json').exists():
                found.add(Path(p))
    return sorted(found)


def split_class_weights(dataset: ShardDataset, loss: LossConfig, num_classes: int
                        ) -> np.ndarray | None:
    """The loss's class weights for `dataset` (its labelled rows), None when unweighted."""
    if loss.class_weighting == 'none':
        return None
    counts = label_histogram(dataset.label_rows(), num_classes)
    return class_weights(counts, loss.class_weighting, loss.class_weight_max_ratio)


def available_memory() -> int:
    """Bytes of memory available to new allocations (Linux MemAvailable; 0 when unknown)."""
    try:
        for line in Path('/proc/meminfo').read_text().splitlines():
            if line.startswith('MemAvailable:'):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def fits_in_memory(dirs: list[Path], fraction: float) -> bool:
    """Whether shards of this total size take at most `fraction` of the available memory."""
    if fraction <= 0:
        return False
    return sum(Shard.disk_bytes(d) for d in dirs) <= fraction * available_memory()


def make_dataset(patterns: list[str], frontend: FrontendConfig, *, augment: AugmentConfig | None,
                 labelled_only: bool, max_samples: int = 0, seed: int = 0,
                 in_memory_fraction: float = 0.0) -> ShardDataset:
    if augment is not None and augment.modality_dropout > 0:
        raise ValueError('data.augment.modality_dropout must be 0 for RMMSS: the teacher needs '
                         'the full view of each sample; set the `dropout:` section instead')
    matched = {p: shard_dirs([p]) for p in patterns}
    empty = [p for p, found in matched.items() if not found]
    if empty:  # a forgotten cache (e.g. `make data-extra`) must not silently shrink a split
        raise FileNotFoundError(f'no shards (directories with meta.json) match {empty}; '
                                'build them with `rmseg-train dataset` (or `make data`)')
    dirs = sorted(set().union(*matched.values()))
    if not dirs:
        raise FileNotFoundError('no shard patterns given')
    ds = ShardDataset(dirs, frontend, augment, seed=seed, labelled_only=labelled_only,
                      in_memory=fits_in_memory(dirs, in_memory_fraction))
    for shard in ds.shards:  # ShardDataset checks the size; the event tensor must match too
        if int(shard.meta.get('event_bins', frontend.event_bins)) != frontend.event_bins:
            raise ValueError(f'{shard.path}: {shard.meta["event_bins"]} event bins, the '
                             f'front-end config says {frontend.event_bins}')
    if 0 < max_samples < len(ds.index):  # evenly spaced: every scene keeps its share
        keep = np.linspace(0, len(ds.index) - 1, max_samples).round().astype(int)
        ds.index = [ds.index[i] for i in keep]
    if len(ds) == 0:
        raise ValueError(f'the shards {[str(d) for d in dirs]} hold no usable samples '
                         f'(labelled_only={labelled_only})')
    return ds
