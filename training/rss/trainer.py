"""RSS training glue: the policy model, the three losses (supervised baseline, pixel-level and
image-level rewards) as `engine.Trainer` loss functions, evaluation and the run summary.

The model is any deployable segmentation network whose last layer is `classifier`: the RMMSS
fusion student (FusionSegNet) by default, built fresh or loaded from `init_checkpoint` (cold
start: e.g. a supervised model trained on another split, or a deployed RMMSS checkpoint,
including the FSM student, whose trainable part is fine-tuned). The last layer gets
`last_layer_lr_factor` times the base learning rate (the paper's Table 3).
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from rmseg_ros.classes import ClassTable
from rmseg_ros.config import to_dict
from rmseg_ros.frontend.preprocess import FrontendConfig
from rmseg_ros.modalities import MODALITIES
from rmseg_ros.models.fusion import input_hw, upsample
from training.engine import DistContext, Trainer, config_hash, finish_run
from training.evaluate import confusion_matrix, iou_per_class, mean_iou
from training.export import export_checkpoint, load_model
from training.rmmss.config import class_table, frontend_of, make_dataset
from training.rmmss.losses import pixel_kl
from training.rmmss.stages import freeze

from .advantages import (
    active_scales,
    downsample_logits,
    log_probs,
    normalize_advantages,
    normalize_groups,
    policy_loss,
    psd_advantages,
    sample_actions,
    sample_seed,
)
from .config import MethodConfig, RSSConfig
from .rewards import IGNORE, RewardFn, make_reward, pixel_rewards

log = logging.getLogger('rmseg-train.rss')


# ----------------------------------------------------------------------------- inputs

def resize_inputs(inputs: dict[str, torch.Tensor], hw: tuple[int, int] | None
                  ) -> dict[str, torch.Tensor]:
    """Model inputs at `hw`: RGB bilinear (antialiased), depth / LiDAR / events nearest, as the
    cache resizes them (no blending of validity masks or ranges across edges)."""
    if hw is None or tuple(input_hw(inputs)) == tuple(hw):
        return inputs
    out = {}
    for m, x in inputs.items():
        if m == 'rgb':
            out[m] = F.interpolate(x, size=hw, mode='bilinear', align_corners=False,
                                   antialias=True)
        else:
            out[m] = F.interpolate(x, size=hw, mode='nearest')
    return out


def training_view(batch: dict[str, torch.Tensor], hw: tuple[int, int] | None
                  ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """(model inputs, labels) of a batch at the training resolution (labels: nearest)."""
    from .advantages import resize_labels

    inputs = resize_inputs({m: batch[m] for m in MODALITIES}, hw)
    labels = batch['labels'] if hw is None else resize_labels(batch['labels'], hw)
    return inputs, labels


class ResizedModel(nn.Module):
    """Runs `net` at the training resolution and returns logits upsampled to the input size, so
    a model trained small is scored against full-resolution labels."""

    def __init__(self, net: nn.Module, hw: tuple[int, int] | None) -> None:
        super().__init__()
        self.net, self.hw = net, hw

    def forward(self, inputs: dict[str, torch.Tensor], presence: Any, missing: str = 'remove'
                ) -> SimpleNamespace:
        out = self.net(resize_inputs(inputs, self.hw), presence, missing=missing)
        return SimpleNamespace(logits=upsample(out.logits, input_hw(inputs)))


# ----------------------------------------------------------------------------- the losses

@dataclass
class PolicyStep:
    """One policy-gradient evaluation: the loss and what produced it (for logs and tests)."""

    loss: torch.Tensor
    actions: torch.Tensor
    advantages: torch.Tensor
    logs: dict[str, float]


def pixel_level_step(logits: torch.Tensor, labels: torch.Tensor, seeds: list[int],
                     m: MethodConfig) -> PolicyStep:
    """N actions per pixel, reward 1 for the true class, advantages normalised over the batch
    (SyncAN: over every process's batch), loss -A log pi over labelled pixels."""
    actions = sample_actions(logits, m.samples, seeds)
    rewards, mask = pixel_rewards(actions, labels)
    adv, stats = normalize_advantages(rewards, mask, sync=m.sync_an,
                                      chunks=m.virtual_processes, eps=m.eps)
    loss = policy_loss(log_probs(logits, actions), adv, mask, sync=m.sync_an,
                       chunks=m.virtual_processes)
    return PolicyStep(loss, actions, adv, {'reward': stats['mean'], 'reward_std': stats['std']})


def image_level_step(logits: torch.Tensor, batch: dict, scales: list[float],
                     seeds: Callable[[float], list[int]], reward_fn: RewardFn,
                     m: MethodConfig) -> PolicyStep:
    """G action maps per image at each active scale (PSR), one reward per map, advantages per
    map (GRPO group normalisation) or per pixel (PSD); the loss is averaged over the scales.
    `batch['labels']` must be at the logits' resolution (reward functions resize from it)."""
    total = logits.new_zeros(())
    logs: dict[str, float] = {}
    actions = adv = None
    for s in scales:
        lg = downsample_logits(logits, s)
        actions = sample_actions(lg, m.samples, seeds(s))
        rewards = reward_fn(actions, batch).to(lg.dtype)
        if m.psd:
            r = normalize_groups(rewards, m.eps) if m.psd_normalize else rewards
            adv = psd_advantages(actions, r)
        elif m.group == 'image':
            adv = normalize_groups(rewards, m.eps)[:, :, None, None].expand(actions.shape)
        else:
            adv, _ = normalize_advantages(rewards, sync=m.sync_an, chunks=m.virtual_processes,
                                          eps=m.eps)
            adv = adv[:, :, None, None].expand(actions.shape)
        total = total + policy_loss(log_probs(lg, actions), adv, None, sync=m.sync_an,
                                    chunks=m.virtual_processes)
        logs[f'reward_x{s:g}'] = float(rewards.mean())
    logs['reward'] = logs[f'reward_x{scales[-1]:g}']
    return PolicyStep(total / len(scales), actions, adv, logs)


def make_loss(cfg: RSSConfig, reward_fn: RewardFn | None, reference: nn.Module | None):
    """`loss_fn(net, batch, ctx)` for engine.Trainer."""
    m, hw = cfg.method, cfg.resolution

    def loss_fn(net, batch, ctx):
        inputs, labels = training_view(batch, hw)
        logits = net(inputs, batch['presence']).logits
        index = [int(i) for i in batch['index']]
        if m.level == 'supervised':
            loss = F.cross_entropy(logits, labels, ignore_index=IGNORE)
            logs: dict[str, Any] = {'ce': loss.detach()}
        elif m.level == 'pixel':
            step = pixel_level_step(logits, labels,
                                    [sample_seed(cfg.run.seed, ctx.step, i) for i in index], m)
            loss, logs = step.loss, step.logs
        else:
            scales = active_scales(m.psr.scales, m.psr.schedule, (ctx.step - 1) / cfg.run.steps)
            step = image_level_step(
                logits, {**batch, 'labels': labels, 'labels_full': batch['labels']}, scales,
                lambda s: [sample_seed(cfg.run.seed, ctx.step, i, s) for i in index],
                reward_fn, m)
            loss, logs = step.loss, step.logs
        if reference is not None and m.kl_weight > 0:
            with torch.no_grad():
                ref = reference(inputs, batch['presence']).logits
            kl = pixel_kl(logits, ref)
            loss = loss + m.kl_weight * kl
            logs['kl'] = kl.detach()
        return loss, logs

    return loss_fn


# ----------------------------------------------------------------------------- the model

def param_groups(model: nn.Module, factor: float) -> list[dict]:
    """Trainable weights in two groups: the last layer (`classifier`) with lr x factor."""
    trainable = (list(model.trainable_parameters()) if hasattr(model, 'trainable_parameters')
                 else list(model.parameters()))
    last = {id(p) for p in model.classifier.parameters()}
    groups = [{'params': [p for p in trainable if id(p) not in last]},
              {'params': [p for p in trainable if id(p) in last], 'lr_scale': float(factor)}]
    if not groups[1]['params']:
        raise ValueError('the model has no trainable last layer `classifier`')
    return groups


def build_model(cfg: RSSConfig, classes: ClassTable, frontend: FrontendConfig
                ) -> tuple[nn.Module, str, dict[str, Any]]:
    """(model, arch, model config): loaded from init_checkpoint (cold start) or fresh."""
    if cfg.init_checkpoint:
        model, meta = load_model(cfg.init_checkpoint)
        if tuple(meta.get('classes', ())) != classes.names:
            raise ValueError(f'{cfg.init_checkpoint}: classes {meta.get("classes")} differ from '
                             f'the config\'s {list(classes.names)}')
        bins = (meta.get('frontend') or {}).get('event_bins')
        if bins != frontend.event_bins:
            raise ValueError(f'{cfg.init_checkpoint}: {bins} event bins, the data has '
                             f'{frontend.event_bins}')
        return model, meta['arch'], meta['model']
    from rmseg_ros.models.fusion import FusionConfig, FusionSegNet

    fcfg = FusionConfig.from_dict({**cfg.model, 'num_classes': len(classes.names),
                                   'event_bins': frontend.event_bins})
    return FusionSegNet(fcfg), 'fusion', fcfg.to_dict()


# ----------------------------------------------------------------------------- evaluation

@torch.no_grad()
def evaluate(model: nn.Module, dataset, classes: ClassTable, hw: tuple[int, int] | None,
             device: torch.device, batch_size: int = 8) -> dict[str, Any]:
    """mIoU (training.evaluate's convention) with every modality the recording has, the
    prediction at `hw` upsampled to the labels' resolution."""
    from torch.utils.data import DataLoader

    wrapped = ResizedModel(model, hw).eval()
    k = len(classes.names)
    cm = torch.zeros(k, k, dtype=torch.int64)
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0):
        batch = {key: v.to(device) for key, v in batch.items()}
        out = wrapped({m: batch[m] for m in MODALITIES}, batch['presence'])
        cm += confusion_matrix(out.logits.argmax(1), batch['labels'], k)
    iou = iou_per_class(cm)
    return {'miou': round(mean_iou(cm), 6), 'samples': len(dataset),
            'iou': {c: (None if v != v else round(float(v), 6))
                    for c, v in zip(classes.names, iou, strict=True)}}


# ----------------------------------------------------------------------------- one run

def train(cfg: RSSConfig, resolved: dict, out: Path, ctx: DistContext | None = None
          ) -> dict[str, Any]:
    """Train one configuration into `out` (resumable), evaluate it, export model.safetensors;
    returns the summary written to out/eval.json (rank 0)."""
    ctx = ctx or DistContext()
    frontend, classes = frontend_of(cfg.data), class_table(cfg.data)
    torch.manual_seed(cfg.run.seed)  # same initial weights on every rank
    model, arch, model_cfg = build_model(cfg, classes, frontend)
    model.to(ctx.device)
    reference = freeze(copy.deepcopy(model)) if cfg.method.kl_weight > 0 else None
    data = cfg.data
    train_set = make_dataset(data.train_shards, frontend, augment=data.augment,
                             labelled_only=data.labelled_only,
                             max_samples=data.max_train_samples, seed=cfg.run.seed)
    reward_fn = None
    if cfg.method.level == 'image':
        reward_fn = make_reward(cfg.method.reward, len(classes.names), dataset=train_set,
                                topic=cfg.method.feedback_topic,
                                tolerance_ns=int(cfg.method.feedback_tolerance_ms * 1e6))
    fe_meta = to_dict(replace(frontend, height=cfg.resolution[0], width=cfg.resolution[1])
                      if cfg.resolution else frontend)
    meta = {'arch': arch, 'model': model_cfg, 'classes': list(classes.names),
            'colors': classes.colors.tolist(), 'modalities': list(MODALITIES),
            'frontend': fe_meta, 'train_config_hash': config_hash(resolved), 'stage': 'rss',
            'rss_level': cfg.method.level}
    val_fn = None
    if data.val_shards:
        val_set = make_dataset(data.val_shards, frontend, augment=None, labelled_only=True,
                               max_samples=data.max_val_samples)

        def val_fn(module: nn.Module, step: int) -> dict[str, float]:
            return {'miou_mean': evaluate(module, val_set, classes, cfg.resolution, ctx.device,
                                          cfg.evaluate.batch_size)['miou']}

    trainer = Trainer(model, make_loss(cfg, reward_fn, reference), train_set, cfg.run, cfg.optim,
                      out, resolved, ctx=ctx,
                      param_groups=param_groups(model, cfg.last_layer_lr_factor),
                      val_fn=val_fn, checkpoint_meta=meta)
    t0 = time.perf_counter()
    result = trainer.fit()
    seconds = time.perf_counter() - t0

    def evaluate_export(deployable: Path, summary: dict[str, Any]) -> None:
        test_set = make_dataset(cfg.evaluate.shards, frontend, augment=None, labelled_only=True,
                                max_samples=cfg.evaluate.max_samples)
        summary['test'] = evaluate(model, test_set, classes, cfg.resolution, ctx.device,
                                   cfg.evaluate.batch_size)

    return finish_run(ctx, result, out, export_checkpoint, {
        'name': cfg.name, 'train_seconds': round(seconds, 1),
        'init_checkpoint': cfg.init_checkpoint, 'method': to_dict(cfg.method),
        'lr_factor': cfg.last_layer_lr_factor,
        'resolution': list(cfg.resolution) if cfg.resolution else None,
        'train_samples': len(train_set)}, on_main=evaluate_export, summary_file='eval.json')
