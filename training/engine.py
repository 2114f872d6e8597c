"""Run infrastructure shared by every training pipeline (RMMSS, Robult, RSS, RobotSeg).

A run directory holds what is needed to trust and continue a run:
- `config.yaml`: the resolved configuration (a resumed run must be given the same one);
- `metrics.jsonl`: one JSON object per line (training logs and validation results);
- `checkpoints/step_XXXXXXXX.safetensors`: model weights, the optimizer state flattened into
  tensors, and the step / epoch / position in the epoch / RNG states as JSON metadata. No pickle
  anywhere: a checkpoint is untrusted input. Each file is written to a temporary name and renamed
  into place (`rmseg_ros.atomic_files`), so an interrupted write never leaves a partial checkpoint
  under a real name; the temporary files a killed run leaves are removed when a run starts.

A resumed run continues from its newest readable checkpoint, and `metrics.jsonl` is cut back to
what that checkpoint had seen, so each step is logged once however often the run was killed.

`Trainer` knows nothing about any particular method: it takes a model, a loss function
`loss_fn(model, batch, ctx) -> (loss, logs)`, a dataset and optimiser/run configs. Data order is a
pure function of (seed, epoch): a resumed run skips the batches already seen in the interrupted
epoch and continues with the same order, and per-step randomness comes from `ctx.generator`,
seeded by (seed, rank, step), so a resumed run takes the same steps as an uninterrupted one.

Multi-process: start with `torchrun --nproc_per_node N`; `distributed()` reads the torchrun
environment and picks gloo on CPU and nccl on CUDA. Only rank 0 writes files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import random
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import yaml
from torch import nn
from torch.nn import functional as F  # noqa: N812
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm import tqdm

from rmseg_ros.atomic_files import atomic_write, remove_stale_temp_files
from rmseg_ros.config import merge_config  # the one merge rule of every config (re-exported)
from rmseg_ros.device import resolve_device as device_name
from training.run import machine

log = logging.getLogger('rmseg-train')

CHECKPOINT_KIND = 'rmseg-train-checkpoint'
CHECKPOINT_RE = re.compile(r'^step_(\d{8})\.safetensors$')
MODEL_PREFIX = 'model/'
OPTIM_PREFIX = 'optim/'
RNG_PREFIX = 'rng/'
# config keys (or sections) that may change when a run is resumed: they do not change what is
# trained, only how long, where and how it is observed
RESUME_IGNORE = ('run.steps', 'run.device', 'run.num_workers', 'run.progress', 'run.log_every',
                 'run.ckpt_every', 'run.keep_checkpoints', 'run.val_every', 'run.threads',
                 'run.interop_threads', 'run.channels_last', 'validate', 'evaluate')


# ----------------------------------------------------------------------------- configs

@dataclass
class OptimConfig:
    name: str = 'adamw'  # adamw | sgd
    lr: float = 6e-4
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    momentum: float = 0.9  # sgd only
    schedule: str = 'poly'  # poly | cosine | constant (after warm-up)
    poly_power: float = 0.9
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0  # floor of the schedule, as a fraction of lr
    grad_clip: float = 0.0  # max global gradient norm; 0 disables clipping


@dataclass
class RunConfig:
    steps: int = 1000  # optimiser steps of the whole run
    batch_size: int = 4  # per process
    # data-loader worker processes; -1 = one when a core is left beside the torch threads
    # (training.run.machine), else 0 (loading in the training process)
    num_workers: int = -1
    # torch intra-op threads per process; 0 = tuned while the run goes between 1 and all cores
    # over the ranks (training.run.machine.ThreadTuner; a fixed count is bit-reproducible)
    threads: int = 0
    interop_threads: int = 1
    channels_last: bool = False  # model and 4-D inputs in NHWC (faster convolutions on CPU)
    amp: str = 'off'  # auto (bf16 where the CPU has it) | bf16 | off
    # optional low-resolution phase: the first `lowres_steps` steps see every 2-D map of the
    # batch (inputs and labels) scaled by `lowres_scale` (nearest neighbour)
    lowres_steps: int = 0
    lowres_scale: float = 0.5
    log_every: int = 10
    ckpt_every: int = 200
    keep_checkpoints: int = 2  # newest checkpoints kept on disk
    val_every: int = 0  # 0: validate only at the end (when a validation function is given)
    seed: int = 0
    device: str = 'auto'  # auto | cpu | cuda | cuda:N
    find_unused_parameters: bool = True  # DDP: modalities absent from a batch leave stems unused
    progress: bool = True  # tqdm bar on rank 0


# ----------------------------------------------------------------------------- config files

def parse_set(assignments: list[str]) -> dict:
    """`--set` values: ['a.b=1', 'c=[x, y]'] -> {'a': {'b': 1}, 'c': ['x', 'y']} (values parsed
    as YAML). Each assignment sets its dotted path; a later one for the same path (or a parent
    of it) wins. The result is an override like any other: `merge_config` with the run's schema
    applies it, so `--set scene.robots.xarm6=1` makes `robots` exactly {xarm6: 1}."""
    out: dict = {}
    for item in assignments:
        key, sep, value = item.partition('=')
        if not sep or not key.strip():
            raise ValueError(f'--set expects KEY=VALUE, got {item!r}')
        parts = key.strip().split('.')
        leaf = out
        for p in parts[:-1]:
            if not isinstance(leaf.get(p), dict):
                leaf[p] = {}
            leaf = leaf[p]
        leaf[parts[-1]] = yaml.safe_load(value)
    return out


def resolve_stage_config(raw: dict, stage: str, smoke: bool = False, *, schema: type) -> dict:
    """One pipeline file -> the config of one stage, for dataclass `schema`.

    The file's top-level sections are shared; `stages: {name: {...}}` overrides them for one
    stage, and `smoke: {...}` (top level, then inside the stage) shrinks a run to seconds. Each
    override is applied with `merge_config` (sections merge, other values replace).
    """
    base = {k: v for k, v in raw.items() if k not in ('stages', 'smoke')}
    stage_raw = dict((raw.get('stages') or {}).get(stage) or {})
    stage_smoke = stage_raw.pop('smoke', None) or {}
    out = merge_config(base, stage_raw, schema)
    if smoke:
        out = merge_config(out, raw.get('smoke') or {}, schema)
        out = merge_config(out, stage_smoke, schema)
    return out


def config_hash(config: dict) -> str:
    """Short, stable hash of a resolved config (goes into exported checkpoints)."""
    text = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _flatten(d: Any, prefix: str = '') -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flatten(v, f'{prefix}.{k}' if prefix else str(k)))
    return out


def config_differences(a: dict, b: dict, ignore: tuple[str, ...] = ()) -> list[str]:
    """Dotted keys whose values differ between two configs (`ignore`: keys or sections)."""
    fa, fb = _flatten(a), _flatten(b)
    keys = sorted(set(fa) | set(fb))
    skip = tuple(ignore)
    return [k for k in keys if fa.get(k) != fb.get(k)
            and not any(k == i or k.startswith(i + '.') for i in skip)]


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, text)


# ----------------------------------------------------------------------------- distributed

@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device('cpu'))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """rmseg_ros.device policy for training: 'auto' -> CUDA when available (one GPU per process
    under torchrun), else CPU; CUDA asked for but missing is an error, not a slow CPU run."""
    return torch.device(device_name(name, fallback=False, local_rank=local_rank))


@contextlib.contextmanager
def distributed(device: str = 'auto') -> Iterator[DistContext]:
    """Process-group context from torchrun's environment (single process when absent)."""
    world = int(os.environ.get('WORLD_SIZE', '1'))
    rank = int(os.environ.get('RANK', '0'))
    local_rank = int(os.environ.get('LOCAL_RANK', '0'))
    dev = resolve_device(device, local_rank)
    started = False
    if world > 1 and not dist.is_initialized():
        if dev.type == 'cuda':
            torch.cuda.set_device(dev)
        dist.init_process_group('nccl' if dev.type == 'cuda' else 'gloo')
        started = True
    try:
        yield DistContext(rank, world, local_rank, dev)
    finally:
        if started and dist.is_initialized():
            dist.destroy_process_group()


# ----------------------------------------------------------------------------- data order

class ResumableSampler(DistributedSampler):
    """DistributedSampler that can start inside an epoch (to resume after an interruption)."""

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, seed: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed,
                         drop_last=len(dataset) >= num_replicas)
        self.start = 0

    def __iter__(self) -> Iterator[int]:
        return iter(list(super().__iter__())[self.start:])

    def __len__(self) -> int:
        return max(0, self.num_samples - self.start)


def move_to(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: move_to(v, device) for k, v in batch.items()}
    if isinstance(batch, list | tuple):
        return type(batch)(move_to(v, device) for v in batch)
    return batch


def scale_maps(batch: Any, scale: float) -> Any:
    """Every 3-D / 4-D tensor of a batch whose last two dims are the batch's image size,
    resized by `scale` with nearest neighbour (inputs, validity masks and labels alike: no
    value is blended across an edge)."""
    hw = _image_size(batch)
    if hw is None:
        return batch
    size = (max(1, round(hw[0] * scale)), max(1, round(hw[1] * scale)))

    def one(x: Any) -> Any:
        if isinstance(x, torch.Tensor) and x.dim() in (3, 4) and tuple(x.shape[-2:]) == hw:
            y = x[:, None] if x.dim() == 3 else x
            y = F.interpolate(y.float() if not y.is_floating_point() else y, size=size,
                              mode='nearest')
            y = y[:, 0] if x.dim() == 3 else y
            return y.to(x.dtype)
        if isinstance(x, dict):
            return {k: one(v) for k, v in x.items()}
        if isinstance(x, list | tuple):
            return type(x)(one(v) for v in x)
        return x

    return one(batch)


def _image_size(batch: Any) -> tuple[int, int] | None:
    if isinstance(batch, torch.Tensor):
        return tuple(batch.shape[-2:]) if batch.dim() == 4 else None
    values = batch.values() if isinstance(batch, dict) else batch \
        if isinstance(batch, list | tuple) else ()
    for v in values:
        hw = _image_size(v)
        if hw is not None:
            return hw
    return None


# ----------------------------------------------------------------------------- checkpoints

def _ckpt_io():  # imported lazily: the model package is developed alongside
    from rmseg_ros.models import checkpoint

    return checkpoint


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / 'checkpoints' / f'step_{step:08d}.safetensors'


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of the run's checkpoints, newest first (temporary files are ignored)."""
    folder = Path(run_dir) / 'checkpoints'
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := CHECKPOINT_RE.match(p.name))]
    return sorted(found, reverse=True)


def load_training_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, meta = _ckpt_io().load_checkpoint(path)
    if meta.get('kind') != CHECKPOINT_KIND:
        raise ValueError(f'{path}: not a training checkpoint (kind {meta.get("kind")!r})')
    return tensors, meta


def model_weights(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The model's state dict inside a training checkpoint."""
    n = len(MODEL_PREFIX)
    return {k[n:]: v for k, v in tensors.items() if k.startswith(MODEL_PREFIX)}


def latest_checkpoint(run_dir: str | Path) -> tuple[Path, dict[str, torch.Tensor], dict] | None:
    """Newest checkpoint of a run that loads; an unreadable one is skipped with a warning."""
    for _, path in list_checkpoints(run_dir):
        try:
            tensors, meta = load_training_checkpoint(path)
        except Exception as exc:  # corrupt or foreign file: fall back to the previous one
            log.warning('%s: unreadable checkpoint skipped: %s', path, exc)
            continue
        return path, tensors, meta
    return None


def _jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.item()
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, np.generic):
        return value.item()
    return value


def flatten_optimizer(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """optimizer.state_dict() -> (tensors keyed optim/<param>/<key>, JSON-able rest)."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, entries in state['state'].items():
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f'{OPTIM_PREFIX}{pid}/{key}'] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(pid), {})[key] = _jsonable(value)
    return tensors, {'param_groups': _jsonable(state['param_groups']), 'scalars': scalars}


def unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith(OPTIM_PREFIX):
            pid, key = name[len(OPTIM_PREFIX):].split('/', 1)
            state.setdefault(int(pid), {})[key] = value
    for pid, entries in meta.get('scalars', {}).items():
        state.setdefault(int(pid), {}).update(entries)
    groups = meta['param_groups']
    for g in groups:
        if 'betas' in g:
            g['betas'] = tuple(g['betas'])
    return {'state': state, 'param_groups': groups}


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        'torch': torch.get_rng_state(),
        'cuda': [s for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else [],
        'numpy': [np_state[0], np_state[1].tolist(), *map(_jsonable, np_state[2:])],
        'python': [py_state[0], list(py_state[1]), py_state[2]],
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state['torch'])
    if state['cuda'] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])
    n = state['numpy']
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), *n[2:]))
    p = state['python']
    random.setstate((p[0], tuple(p[1]), p[2]))


def save_training_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                             progress: dict, rng_states: list[dict], extra_meta: dict) -> None:
    """Write one checkpoint (atomically, as rmseg_ros.models.checkpoint writes every file)."""
    tensors = {MODEL_PREFIX + k: v.detach().cpu().contiguous().clone()
               for k, v in model.state_dict().items()}
    opt_tensors, opt_meta = flatten_optimizer(optimizer.state_dict())
    tensors.update(opt_tensors)
    rng_meta = []
    for rank, st in enumerate(rng_states):
        tensors[f'{RNG_PREFIX}{rank}/torch'] = st['torch'].cpu()
        for i, s in enumerate(st['cuda']):
            tensors[f'{RNG_PREFIX}{rank}/cuda{i}'] = s.cpu()
        rng_meta.append({'cuda': len(st['cuda']), 'numpy': st['numpy'], 'python': st['python']})
    meta = {**extra_meta, 'kind': CHECKPOINT_KIND, **progress, 'optimizer': opt_meta,
            'rng': rng_meta}
    path.parent.mkdir(parents=True, exist_ok=True)
    _ckpt_io().save_checkpoint(path, tensors, meta)  # atomic: temporary file + os.replace


def truncate_metrics(path: Path, step: int, rerun_val: bool = False) -> int:
    """Cut a run's metrics file back to what was logged up to `step` (the checkpoint a run
    resumes from), so the steps it trains again are not logged twice; a line torn by a kill is
    dropped too. Validation lines of `step` itself go when `rerun_val` (the final validation
    will run again). Returns how many lines were removed."""
    if not path.is_file():
        return 0
    lines = path.read_text(encoding='utf-8', errors='replace').splitlines()
    kept = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        at = record.get('step') if isinstance(record, dict) else None
        if isinstance(at, int | float) and (
                at > step or (rerun_val and at == step and record.get('split') == 'val')):
            continue
        kept.append(line)
    if len(kept) != len(lines):
        atomic_write(path, ''.join(x + '\n' for x in kept))
    return len(lines) - len(kept)


def _rng_from_checkpoint(tensors: dict[str, torch.Tensor], meta: dict, rank: int) -> dict | None:
    entries = meta.get('rng') or []
    if rank >= len(entries):
        return None
    e = entries[rank]
    return {'torch': tensors[f'{RNG_PREFIX}{rank}/torch'],
            'cuda': [tensors[f'{RNG_PREFIX}{rank}/cuda{i}'] for i in range(e['cuda'])],
            'numpy': e['numpy'], 'python': e['python']}


# ----------------------------------------------------------------------------- the loop

@dataclass
class StepContext:
    """What a loss function may need besides the model and the batch."""

    step: int  # 1-based index of the step being taken
    epoch: int
    generator: torch.Generator  # seeded by (seed, rank, step): reproducible after a resume
    device: torch.device
    module: nn.Module  # the model without its DDP wrapper


LossFn = Callable[[nn.Module, dict, StepContext], tuple[torch.Tensor, dict[str, Any]]]
ValFn = Callable[[nn.Module, int], dict[str, float]]


def lr_factor(step: int, total: int, cfg: OptimConfig) -> float:
    """Multiplier of the base learning rate for 0-based `step` (linear warm-up, then decay)."""
    if cfg.warmup_steps > 0 and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    span = max(1, total - cfg.warmup_steps)
    t = min(1.0, (step - cfg.warmup_steps) / span)
    if cfg.schedule == 'poly':
        f = (1.0 - t) ** cfg.poly_power
    elif cfg.schedule == 'cosine':
        f = 0.5 * (1.0 + math.cos(math.pi * t))
    elif cfg.schedule == 'constant':
        f = 1.0
    else:
        raise ValueError(f'unknown schedule {cfg.schedule!r} (poly, cosine, constant)')
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * f


def build_optimizer(param_groups: list[dict], cfg: OptimConfig) -> torch.optim.Optimizer:
    """Groups may carry `lr_scale` (e.g. a larger learning rate for a last layer)."""
    groups = []
    for g in param_groups:
        params = [p for p in g['params'] if p.requires_grad]
        if params:
            groups.append({'params': params, 'lr_scale': float(g.get('lr_scale', 1.0)),
                           'lr': cfg.lr * float(g.get('lr_scale', 1.0))})
    if not groups:
        raise ValueError('the model has no trainable parameters')
    if cfg.name == 'adamw':
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas),
                                 weight_decay=cfg.weight_decay)
    if cfg.name == 'sgd':
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum,
                               weight_decay=cfg.weight_decay)
    raise ValueError(f'unknown optimizer {cfg.name!r} (adamw, sgd)')


def _step_seed(seed: int, rank: int, step: int) -> int:
    return int.from_bytes(hashlib.sha256(f'{seed}:{rank}:{step}'.encode()).digest()[:8],
                          'little') & ((1 << 63) - 1)


@dataclass
class TrainResult:
    step: int
    checkpoint: Path | None
    resumed_from: int | None
    last_logs: dict[str, float]
    last_val: dict[str, float]


class Trainer:
    """A generic, resumable, optionally distributed training loop."""

    def __init__(self, model: nn.Module, loss_fn: LossFn, train_set: Dataset, run: RunConfig,
                 optim: OptimConfig, out_dir: str | Path, config: dict, *,
                 ctx: DistContext | None = None, param_groups: list[dict] | None = None,
                 val_fn: ValFn | None = None, checkpoint_meta: dict | None = None,
                 collate_fn: Callable | None = None,
                 on_checkpoint: Callable[[nn.Module, int], None] | None = None,
                 resume_ignore: tuple[str, ...] = RESUME_IGNORE) -> None:
        self.ctx = ctx or DistContext(device=resolve_device(run.device))
        self.threads = machine.apply_thread_policy(run.threads, run.interop_threads,
                                                   run.num_workers, self.ctx.world_size)
        # threads: 0 on CPU: the count is chosen by timing this run's own steps
        self.tuner = machine.ThreadTuner([1, self.threads.intra_op]) \
            if self.threads.tuned and self.ctx.device.type == 'cpu' else None
        self.amp_dtype = machine.autocast_dtype(run.amp, self.ctx.device)
        self.model = model.to(self.ctx.device)
        if run.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.loss_fn = loss_fn
        self.train_set = train_set
        self.run = run
        self.optim_cfg = optim
        self.out = Path(out_dir)
        self.config = config
        self.val_fn = val_fn
        self.checkpoint_meta = dict(checkpoint_meta or {})
        self.collate_fn = collate_fn
        self.on_checkpoint = on_checkpoint
        self.resume_ignore = resume_ignore
        groups = param_groups or [{'params': list(self.model.parameters())}]
        self.optimizer = build_optimizer(groups, optim)
        self.trainable = [p for g in self.optimizer.param_groups for p in g['params']]
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.resumed_from: int | None = None
        self.last_checkpoint: Path | None = None
        self._saved_step = -1
        if self.ctx.distributed:
            self.ddp = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.ctx.device.index] if self.ctx.device.type == 'cuda'
                else None, find_unused_parameters=run.find_unused_parameters)
        else:
            self.ddp = self.model

    def _prepare_batch(self, batch: Any, step: int) -> Any:
        """Device, the low-resolution phase, memory format."""
        batch = move_to(batch, self.ctx.device)
        if step <= self.run.lowres_steps and self.run.lowres_scale != 1.0:
            batch = scale_maps(batch, self.run.lowres_scale)
        if self.run.channels_last:
            batch = machine.to_channels_last(batch)
        return batch

    def _loss(self, batch: Any, sctx: StepContext) -> tuple[torch.Tensor, dict[str, Any]]:
        if self.amp_dtype is None:
            return self.loss_fn(self.ddp, batch, sctx)
        with torch.autocast(self.ctx.device.type, dtype=self.amp_dtype):
            loss, logs = self.loss_fn(self.ddp, batch, sctx)
        return loss.float(), logs

    def train_step(self, batch: Any, sctx: StepContext) -> tuple[torch.Tensor, dict[str, Any]]:
        """One optimiser step on one batch (device, memory format, autocast, clipping): what
        `fit` does per batch, and what bench/train.py times without the data loading."""
        batch = self._prepare_batch(batch, sctx.step)
        loss, logs = self._loss(batch, sctx)
        if not torch.isfinite(loss):
            raise FloatingPointError(f'loss is {loss.item()} at step {sctx.step}')
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.optim_cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.trainable, self.optim_cfg.grad_clip)
        self.optimizer.step()
        return loss, logs

    # -- run directory
    def _prepare_run_dir(self) -> None:
        """Write config.yaml (or check it against a run being resumed); clear stale temp files."""
        cfg_file = self.out / 'config.yaml'
        if cfg_file.exists() and list_checkpoints(self.out):  # every rank checks: all fail alike
            old = yaml.safe_load(cfg_file.read_text()) or {}
            diff = config_differences(old, self.config, self.resume_ignore)
            if diff:
                raise ValueError(
                    f'{self.out} holds a run with another config (differs in {diff}); '
                    f'resume it with the same config or choose another --out')
        self.ctx.barrier()
        if self.ctx.is_main:
            (self.out / 'checkpoints').mkdir(parents=True, exist_ok=True)
            for stale in remove_stale_temp_files(self.out, self.out / 'checkpoints'):
                log.info('removed %s (left by an interrupted write)', stale)
            atomic_write_text(cfg_file, yaml.safe_dump(self.config, sort_keys=False))
        self.ctx.barrier()

    def log_metrics(self, record: dict) -> None:
        if not self.ctx.is_main:
            return
        line = json.dumps(_jsonable(record), allow_nan=True)
        with open(self.out / 'metrics.jsonl', 'a', encoding='utf-8') as f:
            f.write(line + '\n')

    def _truncate_metrics(self) -> None:
        """Steps after the resumed one will be trained (and logged) again: forget them."""
        if not self.ctx.is_main:
            return
        rerun_val = self.val_fn is not None and self.step >= self.run.steps
        removed = truncate_metrics(self.out / 'metrics.jsonl', self.step, rerun_val)
        if removed:
            log.info('metrics.jsonl: %d lines after step %d removed (they are logged again)',
                     removed, self.step)

    def _resume(self) -> None:
        found = latest_checkpoint(self.out)
        if found is None:
            torch.manual_seed(self.run.seed + self.ctx.rank)
            self._truncate_metrics()
            return
        path, tensors, meta = found
        self.model.load_state_dict(model_weights(tensors))
        self.optimizer.load_state_dict(unflatten_optimizer(tensors, meta['optimizer']))
        self.step, self.epoch = int(meta['step']), int(meta['epoch'])
        self.batch_in_epoch = int(meta['batch_in_epoch'])
        if int(meta.get('world_size', 1)) != self.ctx.world_size:
            log.warning('resuming a %s-process run with %s processes: the data order differs',
                        meta.get('world_size'), self.ctx.world_size)
            self.batch_in_epoch = 0
            self.epoch += 1
        rng = _rng_from_checkpoint(tensors, meta, self.ctx.rank)
        if rng is not None:
            _set_rng_state(rng)
        else:
            torch.manual_seed(self.run.seed + self.ctx.rank + self.step)
        self.resumed_from = self.step
        self.last_checkpoint = path
        self._saved_step = self.step
        self._truncate_metrics()
        if self.ctx.is_main:
            log.info('resumed from %s (step %d)', path, self.step)

    def save(self) -> Path:
        """Checkpoint the current state (collective: every rank must call it)."""
        states = [_rng_state()]
        if self.ctx.distributed:  # every rank's RNG state, so each resumes its own stream
            gathered: list[Any] = [None] * self.ctx.world_size
            dist.all_gather_object(gathered, states[0])
            states = gathered
        path = checkpoint_path(self.out, self.step)
        if self.ctx.is_main:
            if self.on_checkpoint is not None:  # e.g. invariants: raise before anything is written
                self.on_checkpoint(self.model, self.step)
            progress = {'step': self.step, 'epoch': self.epoch,
                        'batch_in_epoch': self.batch_in_epoch,
                        'world_size': self.ctx.world_size, 'seed': self.run.seed,
                        'config_hash': config_hash(self.config)}
            save_training_checkpoint(path, self.model, self.optimizer, progress, states,
                                     self.checkpoint_meta)
            for _, old in list_checkpoints(self.out)[max(1, self.run.keep_checkpoints):]:
                old.unlink(missing_ok=True)
        self.last_checkpoint = path
        self._saved_step = self.step
        self.ctx.barrier()
        return path

    def _loader(self, sampler: ResumableSampler) -> DataLoader:
        gen = torch.Generator().manual_seed(_step_seed(self.run.seed, -1, self.epoch))
        workers = self.threads.loader_workers
        return DataLoader(self.train_set, batch_size=self.run.batch_size, sampler=sampler,
                          num_workers=workers, collate_fn=self.collate_fn,
                          pin_memory=self.ctx.device.type == 'cuda', generator=gen,
                          drop_last=False, persistent_workers=False,
                          worker_init_fn=machine.loader_worker_init if workers else None,
                          prefetch_factor=2 if workers else None)

    def _validate(self) -> dict[str, float]:
        result: dict[str, float] = {}
        if self.val_fn is not None and self.ctx.is_main:
            was_training = self.model.training
            self.model.eval()
            with torch.no_grad():
                result = dict(self.val_fn(self.model, self.step))
            self.model.train(was_training)
            self.log_metrics({'split': 'val', 'step': self.step, 'epoch': self.epoch, **result})
        self.ctx.barrier()
        return result

    def _reduce_logs(self, sums: dict[str, float], count: int) -> dict[str, float]:
        keys = sorted(sums)
        values = torch.tensor([sums[k] for k in keys] + [float(count)], dtype=torch.float64)
        if self.ctx.distributed:
            values = values.to(self.ctx.device)
            dist.all_reduce(values)
            values = values.cpu()
        n = max(values[-1].item(), 1.0)
        return {k: values[i].item() / n for i, k in enumerate(keys)}

    def machine_record(self) -> dict[str, Any]:
        """How this process runs (written to <run>/machine.json at every start)."""
        return {'intra_op_threads': torch.get_num_threads(),
                'inter_op_threads': torch.get_num_interop_threads(),
                'loader_workers': self.threads.loader_workers,
                'policy': dataclasses.asdict(self.threads),
                'channels_last': self.run.channels_last,
                'amp': str(self.amp_dtype).replace('torch.', '') if self.amp_dtype else 'off',
                'device': str(self.ctx.device), 'world_size': self.ctx.world_size,
                'cpu_capability': torch.backends.cpu.get_cpu_capability(),
                'usable_cores': machine.usable_cores()}

    def fit(self) -> TrainResult:
        run = self.run
        self._prepare_run_dir()
        if self.ctx.is_main:
            atomic_write_text(self.out / 'machine.json',
                              json.dumps(self.machine_record(), indent=1))
        self._resume()
        sampler = ResumableSampler(self.train_set, self.ctx.world_size, self.ctx.rank, run.seed)
        if len(self.train_set) == 0 or sampler.num_samples == 0:
            raise ValueError('the training set is empty')
        self.model.train()
        bar = tqdm(total=run.steps, initial=self.step, desc=str(self.out.name), unit='step',
                   disable=not (run.progress and self.ctx.is_main), dynamic_ncols=True)
        sums: dict[str, float] = {}
        count, samples, t0 = 0, 0, time.perf_counter()
        last_logs: dict[str, float] = {}
        last_val: dict[str, float] = {}
        while self.step < run.steps:
            sampler.set_epoch(self.epoch)
            sampler.start = self.batch_in_epoch * run.batch_size
            if hasattr(self.train_set, 'set_epoch'):
                self.train_set.set_epoch(self.epoch)
            loader = self._loader(sampler)
            batches_in_epoch = self.batch_in_epoch + len(loader)
            for batch in loader:
                step = self.step + 1
                lr_f = lr_factor(self.step, run.steps, self.optim_cfg)
                for g in self.optimizer.param_groups:
                    g['lr'] = self.optim_cfg.lr * g.get('lr_scale', 1.0) * lr_f
                gen = torch.Generator(device='cpu').manual_seed(
                    _step_seed(run.seed, self.ctx.rank, step))
                sctx = StepContext(step, self.epoch, gen, self.ctx.device, self.model)
                if self.tuner is not None:
                    self.tuner.before_step(step)
                loss, logs = self.train_step(batch, sctx)
                if self.tuner is not None:
                    self.tuner.after_step(step)
                self.step = step
                self.batch_in_epoch += 1
                if self.batch_in_epoch >= batches_in_epoch:
                    self.epoch += 1
                    self.batch_in_epoch = 0
                for k, v in {'loss': loss, **logs}.items():
                    v = v.detach() if isinstance(v, torch.Tensor) else v
                    sums[k] = sums.get(k, 0.0) + float(v)
                count += 1
                samples += len(batch['index']) if isinstance(batch, dict) and 'index' in batch \
                    else run.batch_size
                bar.update(1)
                if step % run.log_every == 0 or step == run.steps:
                    last_logs = self._reduce_logs(sums, count)
                    dt = time.perf_counter() - t0
                    self.log_metrics({'split': 'train', 'step': step, 'epoch': self.epoch,
                                      'lr': self.optim_cfg.lr * lr_f, **last_logs,
                                      'samples_per_s': samples * self.ctx.world_size / dt,
                                      'threads': torch.get_num_threads(),
                                      'time': time.time()})
                    bar.set_postfix(loss=f'{last_logs["loss"]:.4f}')
                    sums, count, samples, t0 = {}, 0, 0, time.perf_counter()
                if run.val_every and step % run.val_every == 0 and step != run.steps:
                    last_val = self._validate()
                if step % run.ckpt_every == 0 or step == run.steps:
                    self.save()
                if self.step >= run.steps:
                    break
        bar.close()
        if self.val_fn is not None:
            last_val = self._validate()
        if self._saved_step != self.step:
            self.save()
        return TrainResult(self.step, self.last_checkpoint, self.resumed_from, last_logs,
                           last_val)
