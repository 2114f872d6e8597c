"""`rmseg-train export`: a training checkpoint -> a deployable checkpoint.

A deployable checkpoint is one safetensors file: the model's weights and, in its header, what a
node needs to trust and use it (rmseg_ros.models.checkpoint.export_metadata): architecture and
model config, classes and colours, modalities, input size and normalisation (the front-end the
cache was built with), and the hash of the training config. The export is loaded back into a
freshly built model before it is written, so a file that cannot be used is never produced.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rmseg_ros.models.checkpoint import (
    build_model,
    export_metadata,
    load_checkpoint,
    save_checkpoint,
)
from training.engine import CHECKPOINT_KIND, list_checkpoints, model_weights

log = logging.getLogger('rmseg-train.export')

# keys a training checkpoint's metadata carries for the export (written by the stages)
MODEL_META_KEYS = ('arch', 'model', 'classes', 'colors', 'modalities', 'frontend',
                   'train_config_hash')


def resolve_source(path: str | Path) -> Path:
    """A checkpoint file, or a run directory (its newest checkpoint)."""
    path = Path(path)
    if path.is_dir():
        found = list_checkpoints(path)
        if not found:
            raise FileNotFoundError(f'{path}: no checkpoints/step_*.safetensors in this run')
        return found[0][1]
    if not path.exists():
        raise FileNotFoundError(f'{path}: no such checkpoint')
    return path


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(model weights, metadata) of a training or a deployable checkpoint."""
    tensors, meta = load_checkpoint(resolve_source(path))
    if meta.get('kind') == CHECKPOINT_KIND:
        missing = [k for k in MODEL_META_KEYS if k not in meta]
        if missing:
            raise ValueError(f'{path}: training checkpoint lacks {missing}; it was not written '
                             'by an rmseg-train model stage')
        return model_weights(tensors), meta
    return tensors, meta


def load_model(path: str | Path, device: str | torch.device = 'cpu'
               ) -> tuple[nn.Module, dict[str, Any]]:
    """Build the model a checkpoint describes and load its weights (strictly), in eval mode."""
    weights, meta = read_checkpoint(path)
    model = build_model(meta)
    model.load_state_dict(weights, strict=True)
    return model.to(device).eval(), meta


def export_checkpoint(src: str | Path, dst: str | Path, extra: dict | None = None,
                      carry: tuple[str, ...] = ()) -> dict[str, Any]:
    """Write the deployable checkpoint of `src` (training checkpoint or run dir) to `dst`.
    A Robult-wrapped network (`net.` weights) is exported without its training-only latent
    head and reconstructor; `carry` names training metadata kept in the export's `extra`."""
    src = resolve_source(src)
    weights, meta = read_checkpoint(src)
    if any(k.startswith('net.') for k in weights):
        weights = {k[4:]: v for k, v in weights.items() if k.startswith('net.')}
    info = {'source': str(src), 'stage': meta.get('stage'), 'step': meta.get('step'),
            **{k: meta.get(k) for k in carry}}
    info.update(extra or {})
    out_meta = export_metadata(meta['arch'], meta['model'], list(meta['classes']),
                               [list(c) for c in meta['colors']], list(meta['modalities']),
                               dict(meta['frontend']), str(meta['train_config_hash']),
                               extra=info)
    build_model(out_meta).load_state_dict(weights, strict=True)  # usable, or nothing is written
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(dst, weights, out_meta)
    return out_meta


def export_backbone(src: str | Path, dst: str | Path) -> dict[str, Any]:
    """Deployable checkpoint of the FusionSegNet inside a (Robult-wrapped or plain) training
    checkpoint, with its label fraction and Robult settings."""
    return export_checkpoint(src, dst, carry=('label_fraction', 'robult'))


def run(args: argparse.Namespace, extra: list[str]) -> int:
    from training.rmmss.config import load_config

    parser = argparse.ArgumentParser(prog='rmseg-train export',
                                     description='Training checkpoint -> deployable checkpoint.')
    parser.add_argument('--checkpoint', help='training checkpoint or run directory '
                        '(default: <out_root>/fsm of the config)')
    opts = parser.parse_args(extra)
    logging.basicConfig(level=logging.INFO, format='%(name)s: %(message)s')
    cfg, _ = load_config(args.config, 'export', args.smoke)
    src = Path(opts.checkpoint) if opts.checkpoint else cfg.run_dir('fsm')
    dst = Path(args.out) if args.out else cfg.run_dir('export') / 'model.safetensors'
    if dst.suffix != '.safetensors':
        dst = dst / 'model.safetensors'
    meta = export_checkpoint(src, dst)
    print(json.dumps({'exported': str(dst), 'arch': meta['arch'], 'classes': meta['classes'],
                      'train_config_hash': meta['train_config_hash']}, indent=1))
    return 0
