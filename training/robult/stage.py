"""`rmseg-train robult`: semi-supervised training of the fusion student with the Robult losses.

Each step takes `run.batch_size` labelled frames, each with `data.unlabelled_per_labelled`
unlabelled frames, gives every frame a random modality subset (`dropout:`), and minimises
  supervised loss (OHEM CE, labelled frames only)
  + pu.weight * (soft PU contrastive: labelled term + unlabelled term)   [all frames]
  + recon.weight * latent reconstruction                                  [all frames]
The loss function is the RMMSS robust stage's (training.rmmss.stages.robust_loss), so the same
code is used alone (no teacher) and inside the RMMSS robust stage (`rmmss.teacher_checkpoint`
set here, or the `robult:` block of rmmss.yaml for `rmseg-train robust`). `robult.enabled: false`
is the supervised-only baseline on the same labelled frames, in the same order.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rmseg_ros.classes import ClassTable
from rmseg_ros.config import to_dict
from training.data.class_balance import class_weights, label_histogram
from training.engine import DistContext, Trainer, distributed, finish_run
from training.export import export_backbone, load_model
from training.rmmss.config import LossConfig, make_dataset
from training.rmmss.stages import (
    check_compatible,
    freeze,
    fusion_config,
    robust_loss,
    run_metadata,
)

from .config import RobultConfig
from .data import Downscaled, SemiSupervisedSet, collate_groups
from .latents import RobultModel

log = logging.getLogger('rmseg-train.robult')


def train_set(cfg: RobultConfig, cached_frontend) -> SemiSupervisedSet:
    data = cfg.data
    base = make_dataset(data.train_shards, cached_frontend, augment=data.augment,
                        labelled_only=False, seed=cfg.run.seed)
    return SemiSupervisedSet(base, data.label_fraction, data.label_seed,
                             data.unlabelled_per_labelled, data.downscale, data.label_unit)


def eval_set(patterns: list[str], cached_frontend, downscale: int, max_samples: int
             ) -> Downscaled:
    """Labelled frames, `max_samples` evenly spaced ones (as `rmseg-train evaluate`)."""
    return Downscaled(make_dataset(patterns, cached_frontend, augment=None, labelled_only=True,
                                   max_samples=max_samples), downscale)


CLASS_SUBSETS = ('RDLE', 'R', 'D')  # the subsets with a per-class IoU table


def evaluate_subsets(model: nn.Module, dataset, classes: list[str], device: torch.device,
                     batch_size: int) -> dict[str, Any]:
    """mIoU of every one of the 15 modality subsets and their mean (training.evaluate), and
    the IoU of each class with all modalities, RGB alone and depth alone."""
    from training.evaluate import IOU_CONVENTION, SUBSETS, subset_mious

    scores = subset_mious(model, dataset, list(SUBSETS), len(classes), device, batch_size,
                          classes=classes, class_subsets=CLASS_SUBSETS)
    return {'subsets': {s: scores[f'miou_{s}'] for s in SUBSETS},
            'mean_miou': scores['miou_mean'], 'samples': len(dataset),
            'class_iou': {s: {c: scores[f'iou_{s}_{c}'] for c in classes}
                          for s in CLASS_SUBSETS},
            'iou_convention': IOU_CONVENTION}


def _teacher(cfg: RobultConfig, classes: ClassTable, frontend, device) -> nn.Module:
    path = Path(cfg.rmmss.teacher_checkpoint)
    teacher, meta = load_model(path, device)
    check_compatible(meta, classes, frontend, f'teacher {path}')
    return freeze(teacher)


def labelled_class_weights(data: SemiSupervisedSet, loss: LossConfig, names: list[str]
                           ) -> torch.Tensor | None:
    """`loss.class_weighting` from the histogram of the labelled frames only (None: off)."""
    if loss.class_weighting == 'none':
        return None
    counts = label_histogram(data.labelled_label_rows(), len(names))
    weights = class_weights(counts, loss.class_weighting, loss.class_weight_max_ratio)
    log.info('class weights (%s, %d labelled frames): %s', loss.class_weighting,
             len(data.labelled_idx), ', '.join(f'{c} {w:.2f}' for c, w in
                                               zip(names, weights, strict=True)))
    return torch.from_numpy(weights)


def robult_stage(cfg: RobultConfig, resolved: dict, out: Path, ctx: DistContext
                 ) -> dict[str, Any]:
    from rmseg_ros.models.fusion import FusionSegNet
    from training.evaluate import subset_mious

    from .config import frontend_of

    classes = ClassTable.load(cfg.data.classes)
    cached, frontend = frontend_of(cfg.data)
    k = len(classes.names)
    fcfg = fusion_config(cfg, classes, frontend)
    torch.manual_seed(cfg.run.seed)  # same initial weights for every row of an experiment
    net = FusionSegNet(fcfg)
    teacher = None
    if cfg.rmmss.teacher_checkpoint:
        teacher = _teacher(cfg, classes, frontend, ctx.device)
        if cfg.rmmss.init_from_teacher:
            net.load_state_dict(teacher.state_dict())
        if not cfg.rmmss.distill:
            teacher = None
    model = RobultModel(net, cfg.robult) if cfg.robult.enabled else net
    data = train_set(cfg, cached)
    log.info('labelled frames %d of %d in %d recordings (fraction %.3f of the %ss, seed %d), '
             '%d unlabelled per step item', len(data.labelled_idx), len(data.selected),
             data.labelled_recordings, cfg.data.label_fraction, cfg.data.label_unit,
             cfg.data.label_seed, cfg.data.unlabelled_per_labelled)
    val_fn = None
    if cfg.data.val_shards:
        val = eval_set(cfg.data.val_shards, cached, cfg.data.downscale, cfg.data.max_val_samples)

        def val_fn(module: nn.Module, step: int) -> dict[str, float]:
            return subset_mious(module, val, cfg.validate.subsets, k, ctx.device,
                                cfg.validate.batch_size)

    meta = run_metadata(cfg, resolved, frontend, classes, 'fusion', fcfg.to_dict(), 'robult')
    meta.update(label_fraction=cfg.data.label_fraction, label_seed=cfg.data.label_seed,
                label_unit=cfg.data.label_unit, labelled_frames=len(data.labelled_idx),
                labelled_recordings=data.labelled_recordings, robult=cfg.robult.enabled,
                teacher=cfg.rmmss.teacher_checkpoint)
    weights = labelled_class_weights(data, cfg.loss, classes.names)
    loss_fn = robust_loss(cfg.loss, cfg.dropout, teacher, k, cfg.robult, weights)
    trainer = Trainer(model, loss_fn, data, cfg.run, cfg.optim, out, resolved, ctx=ctx,
                      param_groups=[{'params': list(model.parameters())}], val_fn=val_fn,
                      checkpoint_meta=meta, collate_fn=collate_groups)
    result = trainer.fit()
    labels = {'labelled_frames': len(data.labelled_idx), 'frames': len(data.selected),
              'label_unit': cfg.data.label_unit,
              'labelled_recordings': data.labelled_recordings}

    def evaluate_export(deployable: Path, summary: dict[str, Any]) -> None:
        if cfg.evaluate.enabled:
            summary['eval'] = str(write_evaluation(cfg, deployable, cached, out, ctx.device,
                                                   labels))

    return finish_run(ctx, result, out, export_backbone,
                      {'stage': 'robult', 'checkpoint': str(result.checkpoint),
                       'val': result.last_val, **labels}, on_main=evaluate_export)


def write_evaluation(cfg: RobultConfig, checkpoint: Path, cached_frontend, out: Path,
                     device: torch.device, extra: dict | None = None) -> Path:
    """<out>/eval.json: the 15-subset mIoU of the deployable checkpoint on `evaluate.shards`."""
    model, meta = load_model(checkpoint, device)
    test = eval_set(cfg.evaluate.shards, cached_frontend, cfg.data.downscale,
                    cfg.evaluate.max_samples)
    result = evaluate_subsets(model, test, list(meta['classes']), device,
                              cfg.evaluate.batch_size)
    result.update(checkpoint=str(checkpoint), shards=cfg.evaluate.shards,
                  input_hw=meta['input_hw'], steps=meta.get('extra', {}).get('step'),
                  label_fraction=cfg.data.label_fraction, robult=cfg.robult.enabled,
                  teacher=cfg.rmmss.teacher_checkpoint, config=to_dict(cfg), **(extra or {}))
    path = out / 'eval.json'
    path.write_text(json.dumps(result, indent=1, allow_nan=False))
    log.info('15-subset mean mIoU %.4f -> %s', result['mean_miou'] or float('nan'), path)
    return path


def run_stage(cfg: RobultConfig, resolved: dict, out: Path) -> int:
    with distributed(cfg.run.device) as ctx:
        robult_stage(cfg, resolved, out, ctx)
    return 0
