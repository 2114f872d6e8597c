"""The training loop shared by every pipeline (RMMSS, Robult, RSS, RobotSeg) and the end of a run.

Why one long module: the Trainer's resume, checkpoint, thread-tuning and logging steps share
its per-run state; its independent parts already live in training/run/.

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

The loop's parts live with their concept in training/run/ (config: run and optimiser sections,
`--set`, resume checks; distributed: context, device, sampler; checkpoints: checkpoint and RNG
I/O, metrics truncation; machine: threads and precision); their public names are re-exported
here, where the pipelines and tests have always imported them.
"""


from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import yaml
from torch import nn
from torch.nn import functional as F  # noqa: N812
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from rmseg_ros.atomic_files import atomic_write, remove_stale_temp_files
from rmseg_ros.config import merge_config  # the one merge rule of every config (re-exported)
from training.run import machine
from training.run.checkpoints import (
    CHECKPOINT_KIND,
    checkpoint_path,
    jsonable,
    latest_checkpoint,
    list_checkpoints,
    load_training_checkpoint,
    model_weights,
    rng_from_checkpoint,
    rng_state,
    save_training_checkpoint,
    set_rng_state,
    truncate_metrics,
    unflatten_optimizer,
)
from training.run.config import (
    RESUME_IGNORE,
    OptimConfig,
    RunConfig,
    config_differences,
    config_hash,
    parse_set,
    resolve_stage_config,
)
from training.run.distributed import DistContext, ResumableSampler, distributed, resolve_device

__all__ = [
    'CHECKPOINT_KIND', 'RESUME_IGNORE', 'DistContext', 'OptimConfig', 'RunConfig',
    'StepContext', 'TrainResult', 'Trainer', 'checkpoint_path', 'config_differences',
    'config_hash', 'distributed', 'finish_run', 'latest_checkpoint', 'list_checkpoints',
    'load_training_checkpoint', 'merge_config', 'model_weights', 'move_to', 'parse_set',
    'resolve_device', 'resolve_stage_config', 'scale_maps', 'truncate_metrics',
]

log = logging.getLogger('rmseg-train')


# ----------------------------------------------------------------------------- batches

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
            atomic_write(cfg_file, yaml.safe_dump(self.config, sort_keys=False))
        self.ctx.barrier()

    def log_metrics(self, record: dict) -> None:
        if not self.ctx.is_main:
            return
        line = json.dumps(jsonable(record), allow_nan=True)
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
        rng = rng_from_checkpoint(tensors, meta, self.ctx.rank)
        if rng is not None:
            set_rng_state(rng)
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
        states = [rng_state()]
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
            atomic_write(self.out / 'machine.json',
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


def finish_run(ctx: DistContext, result: TrainResult, out: Path,
               export: Callable[[Path, Path], Any], summary: dict[str, Any], *,
               on_main: Callable[[Path, dict[str, Any]], None] | None = None,
               summary_file: str | None = None) -> dict[str, Any]:
    """The end of every training run: on rank 0 export the deployable model to
    out/model.safetensors (`export(checkpoint, path)`), let `on_main(model_path, summary)` add
    its evaluation, then write the summary to `summary_file` in `out` (or print it as JSON);
    every rank waits for rank 0 before it returns the summary."""
    summary = {'step': result.step, 'resumed_from': result.resumed_from,
               'train': result.last_logs, **summary}
    if ctx.is_main:
        deployable = out / 'model.safetensors'
        export(result.checkpoint, deployable)
        summary['model'] = str(deployable)
        if on_main is not None:
            on_main(deployable, summary)
        text = json.dumps(summary, indent=1, default=str)
        if summary_file:
            atomic_write(out / summary_file, text + '\n')
        else:
            print(text)
    ctx.barrier()
    return summary
