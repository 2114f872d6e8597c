"""Training configuration: the run and optimiser sections every pipeline shares, `--set`
overrides, stage resolution, and the hash and differences that decide whether a run may resume.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import yaml

from rmseg_ros.config import merge_config

# config keys (or sections) that may change when a run is resumed: they do not change what is
# trained, only how long, where and how it is observed
RESUME_IGNORE = ('run.steps', 'run.device', 'run.num_workers', 'run.progress', 'run.log_every',
                 'run.ckpt_every', 'run.keep_checkpoints', 'run.val_every', 'run.threads',
                 'run.interop_threads', 'run.channels_last', 'validate', 'evaluate')



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
