"""Checkpoints: one `.safetensors` file, weights + JSON metadata in its header.

A checkpoint is untrusted input (downloaded, copied between robots), so nothing is unpickled:
safetensors holds raw tensors only, and the architecture is rebuilt from plain config dicts in
the metadata. Writes go through `rmseg_ros.atomic_files` (temporary file in the same directory +
fsync + os.replace), so a crash mid-write never leaves a truncated checkpoint under the final name
and the leftover temporary file has the name the run-start cleanup removes.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import stat
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from safetensors.torch import save as serialize
from torch import nn

from rmseg_ros.atomic_files import atomic_write
from rmseg_ros.camera import SizeLimits
from rmseg_ros.modalities import MODALITIES, check_names
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
    # serialised here and written by atomic_write: safetensors' save_file would create its own
    # `.tmpXXXXXX` file, which a SIGKILL leaves behind under a name no cleanup knows
    atomic_write(path, serialize(tensors, metadata={HEADER_KEY: header}))


def check_file(path: Path) -> None:
    """FileNotFoundError / ValueError saying what `path` is when it is not a regular file (a
    directory or /dev/zero is not "missing", and reading a device would never end)."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise FileNotFoundError(f'checkpoint {path} does not exist') from None
    if stat.S_ISDIR(mode):
        raise ValueError(f'checkpoint {path} is a directory, not a .safetensors file')
    if not stat.S_ISREG(mode):
        kind = ('character device' if stat.S_ISCHR(mode) else 'block device'
                if stat.S_ISBLK(mode) else 'pipe' if stat.S_ISFIFO(mode) else 'socket'
                if stat.S_ISSOCK(mode) else 'special file')
        raise ValueError(f'checkpoint {path} is not a regular file (a {kind})')


#: Most event bins a deployable checkpoint may ask for (the voxel grid is bins x H x W).
MAX_EVENT_BINS = 64
_POSITIVE_FRONTEND = ('depth_max_m', 'lidar_max_range_m', 'lidar_intensity_scale',
                      'event_window_s', 'event_scale')


def _hw(value: Any, field: str, limits: SizeLimits) -> tuple[int, int]:
    if (not isinstance(value, (list, tuple)) or len(value) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
        raise ValueError(f"checkpoint metadata '{field}' must be two integers [height, width], "
                         f'got {value!r}')
    h, w = value
    limits.check(f"checkpoint metadata '{field}'", w, h)
    return h, w


def validate_deployable(meta: dict, limits: SizeLimits | None = None) -> None:
    """ValueError naming the field unless the metadata can drive inference safely: required
    fields present, sizes within `limits` (they decide allocations), known modalities, one
    RGB colour per class. Checked before the model is built."""
    limits = limits or SizeLimits()
    for name in ('classes', 'colors', 'modalities', 'input_hw', 'frontend'):
        if name not in meta:
            raise ValueError(f"checkpoint metadata lacks the required field '{name}'")
    classes = meta['classes']
    if (not isinstance(classes, list) or not classes
            or not all(isinstance(c, str) for c in classes)):
        raise ValueError(f"checkpoint metadata 'classes' must be a non-empty list of names, "
                         f'got {classes!r}')
    colors = meta['colors']
    if (not isinstance(colors, list) or len(colors) != len(classes) or not all(
            isinstance(c, list) and len(c) == 3
            and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in c)
            for c in colors)):
        raise ValueError(f"checkpoint metadata 'colors' must hold one [r, g, b] (0..255) per "
                         f'class ({len(classes)} classes), got {colors!r}'[:300])
    mods = meta['modalities']
    if not isinstance(mods, list) or not mods:
        raise ValueError(f"checkpoint metadata 'modalities' must be a non-empty list, got "
                         f'{mods!r}')
    unknown = [m for m in mods if m not in MODALITIES]
    if unknown or len(set(mods)) != len(mods):
        raise ValueError(f"checkpoint metadata 'modalities' {mods}: unknown {unknown} or "
                         f'repeated; known: {list(MODALITIES)}')
    hw = _hw(meta['input_hw'], 'input_hw', limits)
    front = meta['frontend']
    if not isinstance(front, dict):
        raise ValueError(f"checkpoint metadata 'frontend' must be a mapping, got {front!r}")
    fhw = _hw([front.get('height'), front.get('width')], 'frontend height/width', limits)
    if fhw != hw:
        raise ValueError(f"checkpoint metadata 'frontend' size {fhw} differs from 'input_hw' "
                         f'{hw}')
    bins = front.get('event_bins', 1)
    if not (isinstance(bins, int) and 1 <= bins <= MAX_EVENT_BINS):
        raise ValueError(f"checkpoint metadata 'frontend.event_bins' must be an integer in "
                         f'1..{MAX_EVENT_BINS}, got {bins!r}')
    for name in _POSITIVE_FRONTEND:
        value = front.get(name, 1.0)
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ValueError(f"checkpoint metadata 'frontend.{name}' must be a positive "
                             f'number, got {value!r}')
    for name in ('rgb_mean', 'rgb_std'):
        value = front.get(name, [1.0, 1.0, 1.0])
        if (not isinstance(value, list) or len(value) != 3
                or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in value)
                or (name == 'rgb_std' and not all(v > 0 for v in value))):
            raise ValueError(f"checkpoint metadata 'frontend.{name}' must be 3 finite numbers"
                             f'{" > 0" if name == "rgb_std" else ""}, got {value!r}')


def check_finite(state: dict[str, torch.Tensor], path: str | os.PathLike) -> None:
    """ValueError naming the first tensor holding NaN or inf (checked once, at load: a
    poisoned checkpoint would otherwise publish one class everywhere, silently)."""
    for name, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise ValueError(f'{path}: weight {name!r} has {bad} non-finite (NaN / inf) values')


def read_metadata(path: str | os.PathLike) -> dict:
    """The checkpoint's metadata without loading the weights; ValueError if not a checkpoint."""
    path = Path(path)
    check_file(path)
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


def load_model(path: str | os.PathLike, limits: SizeLimits | None = None
               ) -> tuple[nn.Module, dict]:
    """Build the model of a deployable checkpoint and load its weights (strict), in eval mode.

    Metadata are validated first (validate_deployable), the weights must be finite, and the
    architecture is first built on torch's 'meta' device (no memory) and compared with the
    file's tensors: a config asking for huge layers is refused before it allocates anything."""
    state, meta = load_checkpoint(path)
    try:
        validate_deployable(meta, limits)
    except ValueError as exc:
        raise ValueError(f'{path}: {exc}') from exc
    check_finite(state, path)
    with torch.device('meta'):
        shapes = {k: tuple(v.shape) for k, v in build_model(meta).state_dict().items()}
    wrong = [k for k, v in shapes.items() if k not in state or tuple(state[k].shape) != v]
    if wrong or len(shapes) != len(state):
        extra = sorted(set(state) - set(shapes))
        raise ValueError(f'{path}: weights do not match the architecture in its metadata '
                         f'(missing or mis-shaped: {wrong[:5]}, unexpected: {extra[:5]})')
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
