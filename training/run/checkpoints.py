"""Training checkpoints: model weights, the optimiser state flattened into tensors and the RNG
states as JSON metadata (no pickle: a checkpoint is untrusted input), written atomically; and
the metrics file cut back to the step a run resumes from.
"""

from __future__ import annotations

import json
import logging
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from rmseg_ros.atomic_files import atomic_write

log = logging.getLogger('rmseg-train')

CHECKPOINT_KIND = 'rmseg-train-checkpoint'
CHECKPOINT_RE = re.compile(r'^step_(\d{8})\.safetensors$')
MODEL_PREFIX = 'model/'
OPTIM_PREFIX = 'optim/'
RNG_PREFIX = 'rng/'


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


def jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.item()
    if isinstance(value, tuple | list):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
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
                scalars.setdefault(str(pid), {})[key] = jsonable(value)
    return tensors, {'param_groups': jsonable(state['param_groups']), 'scalars': scalars}


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


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        'torch': torch.get_rng_state(),
        'cuda': [s for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else [],
        'numpy': [np_state[0], np_state[1].tolist(), *map(jsonable, np_state[2:])],
        'python': [py_state[0], list(py_state[1]), py_state[2]],
    }


def set_rng_state(state: dict[str, Any]) -> None:
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


def rng_from_checkpoint(tensors: dict[str, torch.Tensor], meta: dict, rank: int) -> dict | None:
    entries = meta.get('rng') or []
    if rank >= len(entries):
        return None
    e = entries[rank]
    return {'torch': tensors[f'{RNG_PREFIX}{rank}/torch'],
            'cuda': [tensors[f'{RNG_PREFIX}{rank}/cuda{i}'] for i in range(e['cuda'])],
            'numpy': e['numpy'], 'python': e['python']}
