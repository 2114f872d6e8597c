"""Checkpoints: one `.safetensors` file, weights + JSON metadata in its header.

A checkpoint is untrusted input (downloaded, copied between robots), so nothing is unpickled:
safetensors holds raw tensors only, and the architecture is rebuilt from plain config dicts in
the metadata. Writes are atomic (temporary file in the same directory + fsync + os.replace), so
a crash mid-write never leaves a truncated checkpoint under the final name.
"""

from __future__ import annotations

import dataclasses
import json
import os
import uuid
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from rmseg_ros.modalities import check_names
from rmseg_ros.models.fsm import FSMStudent
from rmseg_ros.models.fusion import FusionSegNet

FORMAT = 1
ARCHS = ('fusion', 'fsm_student')
HEADER_KEY = 'rmseg'


def _plain(value: Any) -> Any:
    """Dataclasses / configs / tuples -> JSON-ready dicts and lists."""
    if hasattr(value, 'model_config'):
        return _plain(value.model_config())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _plain(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def save_checkpoint(path: str | os.PathLike, state_dict: dict[str, torch.Tensor],
                    metadata: dict) -> None:
    """Write weights + metadata atomically; the metadata must be JSON-serialisable."""
    path = Path(path)
    meta = dict(metadata)
    meta.setdefault('format', FORMAT)
    header = json.dumps(_plain(meta))
    # safetensors refuses shared or non-contiguous storage: store independent contiguous copies
    tensors = {k: v.detach().to('cpu').contiguous().clone() for k, v in state_dict.items()}
    tmp = path.with_name(f'.{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp')
    try:
        save_file(tensors, str(tmp), metadata={HEADER_KEY: header})
        os.chmod(tmp, 0o644)  # safetensors creates 0600: a shipped model must be readable
        with open(tmp, 'rb') as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_metadata(path: str | os.PathLike) -> dict:
    """The checkpoint's metadata without loading the weights; ValueError if not a checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'checkpoint not found: {path}')
    try:
        with safe_open(str(path), framework='pt') as f:
            header = f.metadata() or {}
    except Exception as exc:  # safetensors raises its own error type for any malformed file
        raise ValueError(f'{path}: not a safetensors checkpoint ({exc})') from exc
    if HEADER_KEY not in header:
        raise ValueError(f'{path}: safetensors file without rmseg metadata (not a checkpoint '
                         'written by rmseg_ros.models.checkpoint)')
    try:
        meta = json.loads(header[HEADER_KEY])
    except json.JSONDecodeError as exc:
        raise ValueError(f'{path}: corrupt checkpoint metadata ({exc})') from exc
    if not isinstance(meta, dict):
        raise ValueError(f'{path}: checkpoint metadata is not a JSON object')
    if meta.get('format') != FORMAT:
        raise ValueError(f'{path}: checkpoint format {meta.get("format")!r}, this code reads '
                         f'format {FORMAT}')
    return meta


def load_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """-> (state_dict on CPU, metadata). ValueError for a file that is not a checkpoint."""
    meta = read_metadata(path)
    return load_file(str(path), device='cpu'), meta


def build_model(metadata: dict) -> nn.Module:
    """Rebuild the (untrained) architecture described by the metadata."""
    arch = metadata.get('arch')
    config = metadata.get('model')
    if not isinstance(config, dict):
        raise ValueError(f"checkpoint metadata lacks the 'model' config dict (got {config!r})")
    if arch == 'fusion':
        return FusionSegNet.from_config(config)
    if arch == 'fsm_student':
        return FSMStudent.from_config(config)
    raise ValueError(f'unknown architecture {arch!r}; known: {list(ARCHS)}')


def load_model(path: str | os.PathLike) -> tuple[nn.Module, dict]:
    """Build the model of a checkpoint and load its weights (strict), in eval mode."""
    state, meta = load_checkpoint(path)
    model = build_model(meta)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f'{path}: weights do not match the architecture in its metadata: '
                         f'{exc}') from exc
    return model.eval(), meta


def _num_classes(arch: str, model_cfg: dict) -> int | None:
    if arch == 'fusion':
        return model_cfg.get('num_classes')
    if arch == 'fsm_student':
        return model_cfg.get('robust', {}).get('num_classes')
    return None


def export_metadata(arch: str, model_cfg: Any, classes: list[str], colors: list[list[int]],
                    modalities: Any, frontend: Any, train_config_hash: str,
                    extra: dict | None = None) -> dict:
    """The metadata dict of a checkpoint (see the module docstring and the model API contract).

    model_cfg: a FusionConfig / dict (arch 'fusion'), a dict {'teacher', 'robust', 'fsm'} of
    configs (arch 'fsm_student'), or a model with `model_config()`. frontend: FrontendConfig or
    its dict. extra: free-form JSON-ready values, stored under 'extra'.
    """
    if arch not in ARCHS:
        raise ValueError(f'unknown architecture {arch!r}; known: {list(ARCHS)}')
    model = _plain(model_cfg)
    if not isinstance(model, dict):
        raise ValueError(f'model_cfg must describe a config dict, got {type(model_cfg)}')
    classes = [str(c) for c in classes]
    colors = [[int(v) for v in c] for c in colors]
    if len(colors) != len(classes) or any(len(c) != 3 for c in colors):
        raise ValueError(f'need one RGB colour per class: {len(classes)} classes, '
                         f'{len(colors)} colours')
    k = _num_classes(arch, model)
    if k is not None and k != len(classes):
        raise ValueError(f'model has {k} classes but {len(classes)} class names were given')
    front = _plain(frontend)
    if not isinstance(front, dict) or 'height' not in front or 'width' not in front:
        raise ValueError('frontend must be a FrontendConfig or its dict (with height, width)')
    meta = {
        'format': FORMAT,
        'arch': arch,
        'model': model,
        'classes': classes,
        'colors': colors,
        'modalities': list(check_names(modalities)),
        'input_hw': [int(front['height']), int(front['width'])],
        'frontend': front,
        'train_config_hash': str(train_config_hash),
        'extra': _plain(extra or {}),
    }
    json.dumps(meta)  # fail here, not at save time, on values JSON cannot hold
    return meta
