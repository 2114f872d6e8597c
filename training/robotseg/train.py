"""`rmseg-train robotseg`: train one variant (RobotSeg from first-frame masks, the fully
supervised reference, or an ablation) with engine.Trainer, then export the deployable
checkpoint <run>/model.safetensors (safetensors + JSON metadata)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rmseg_ros.config import to_dict
from rmseg_ros.models.robotseg import MemoryBank, RobotSegConfig, RobotSegModel, save_robotseg
from training.engine import Trainer, config_hash, distributed, finish_run
from training.export import read_checkpoint, resolve_source

from .clips import ClipDataset, load_videos
from .config import LossConfig, RobotSegTrainConfig, load_config
from .losses import grid_mask, mask_loss, patch_consistency, semantic_consistency

log = logging.getLogger('rmseg-train.robotseg')


def propagate(model: RobotSegModel, images: torch.Tensor, edges: torch.Tensor,
              order: list[int], bank: MemoryBank | None = None) -> list:
    """Run the frames of `order` (indices into the window) through the model, each frame
    conditioned on the memory of the ones before it; returns the FrameOutputs in that order."""
    bank = bank if bank is not None else MemoryBank(model.config.memory_size)
    outs = []
    for t in order:
        o = model.forward_frame(images[:, t], edges[:, t], bank)
        bank.append(o.memory)
        outs.append(o)
    return outs


def make_loss_fn(lc: LossConfig, labels: str):
    """loss_fn(net, batch, ctx) -> (loss, logs) for engine.Trainer."""

    def loss_fn(net: nn.Module, batch: dict, ctx: Any) -> tuple[torch.Tensor, dict]:
        model: RobotSegModel = ctx.module
        images, edges, masks = batch['images'], batch['edges'], batch['masks']
        n = images.shape[1]
        fwd = propagate(model, images, edges, list(range(n)))
        logs: dict[str, torch.Tensor] = {}
        if labels == 'all':  # fully supervised reference: every frame has its mask
            sup = torch.stack([mask_loss(o.logits[:, 0], masks[:, t], lc.dice_weight)
                               for t, o in enumerate(fwd)]).mean()
            logs['supervised'] = sup.detach()
            return lc.supervised_weight * sup, logs
        gt0 = masks[:, 0]
        sup = mask_loss(fwd[0].logits[:, 0], gt0, lc.dice_weight)
        loss = lc.supervised_weight * sup
        logs['supervised'] = sup.detach()
        if lc.cycle_weight > 0:
            back_bank = MemoryBank(model.config.memory_size)
            back_bank.append(fwd[-1].memory)
            back = propagate(model, images, edges, list(range(n - 2, -1, -1)), back_bank)
            cyc = mask_loss(back[-1].logits[:, 0], gt0, lc.dice_weight)
            loss = loss + lc.cycle_weight * cyc
            logs['cycle'] = cyc.detach()
        if lc.semantic_weight > 0:
            m0 = grid_mask(gt0, fwd[0].hw)
            sem = torch.stack([semantic_consistency(
                o.embedding, grid_mask(torch.sigmoid(o.logits[:, 0]), o.hw), fwd[0].embedding,
                m0, lc.semantic_temperature) for o in fwd[1:]]).mean()
            loss = loss + lc.semantic_weight * sem
            logs['semantic'] = sem.detach()
        if lc.patch_weight > 0:
            fine_hw = tuple(fwd[0].fine.shape[-2:])
            m0 = grid_mask(gt0, fine_hw)
            f0 = fwd[0].fine.flatten(2).transpose(1, 2)
            pat = torch.stack([patch_consistency(
                grid_mask(torch.sigmoid(o.logits[:, 0]), fine_hw),
                o.fine.flatten(2).transpose(1, 2), f0, m0, lc.patch_margin)
                for o in fwd[1:]]).mean()
            loss = loss + lc.patch_weight * pat
            logs['patch'] = pat.detach()
        return loss, logs

    return loss_fn


def model_config(cfg: RobotSegTrainConfig) -> RobotSegConfig:
    return RobotSegConfig.from_dict(cfg.model)


def checkpoint_metadata(cfg: RobotSegTrainConfig, resolved: dict, mcfg: RobotSegConfig
                        ) -> dict[str, Any]:
    """What a training checkpoint carries (the keys training.export reads, plus the variant)."""
    return {'arch': 'robotseg', 'model': mcfg.to_dict(),
            'classes': ['background', 'robot', *mcfg.part_classes],
            'colors': [[0, 0, 0], [255, 64, 0]] + [[0, 128, 255]] * len(mcfg.part_classes),
            'modalities': ['rgb'],
            'frontend': {'height': cfg.data.height, 'width': cfg.data.width},
            'train_config_hash': config_hash(resolved), 'variant': cfg.variant}


def export(run_dir: Path, dst: Path, src: Path | None = None) -> Path:
    """A training checkpoint of a run (default: the newest) -> deployable RobotSeg checkpoint."""
    src = src or resolve_source(run_dir)
    weights, meta = read_checkpoint(src)
    model = RobotSegModel.from_config(meta['model'])
    model.load_state_dict(weights, strict=True)
    fe = meta['frontend']
    save_robotseg(dst, model, (int(fe['height']), int(fe['width'])),
                  {'variant': meta.get('variant'), 'source': str(src), 'step': meta.get('step'),
                   'train_config_hash': meta.get('train_config_hash')})
    return dst


def train_variant(cfg: RobotSegTrainConfig, resolved: dict, out: Path) -> dict[str, Any]:
    """Train (or resume) one variant into `out` and export out/model.safetensors."""
    mcfg = model_config(cfg)
    videos = load_videos(cfg.data.train, cfg.data, cfg.data.max_train_videos)
    dataset = ClipDataset(videos, cfg.data.clip_length, cfg.data.window, cfg.data.labels,
                          cfg.data.augment, cfg.run.seed, mcfg.canny_sigma)
    n_frames = sum(len(v.frames) for v in videos)
    labelled = len(dataset.labelled_frames())
    log.info('%s: %d videos, %d frames, %d clips, %d labelled frames (%.1f%%)', cfg.variant,
             len(videos), n_frames, len(dataset), labelled, 100.0 * labelled / n_frames)
    with distributed(cfg.run.device) as ctx:
        torch.manual_seed(cfg.run.seed)
        model = RobotSegModel(mcfg)
        trainer = Trainer(model, make_loss_fn(cfg.loss, cfg.data.labels), dataset, cfg.run,
                          cfg.optim, out, resolved, ctx=ctx,
                          checkpoint_meta=checkpoint_metadata(cfg, resolved, mcfg))
        result = trainer.fit()
        return finish_run(ctx, result, out, lambda _checkpoint, dst: export(out, dst),
                          {'variant': cfg.variant, 'videos': len(videos), 'frames': n_frames,
                           'labelled_frames': labelled}, summary_file='summary.json')


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog='rmseg-train robotseg',
        description='Train RobotSeg (first-frame masks), the fully supervised reference or an '
                    'ablation; variants are listed in the config.')
    ap.add_argument('--variant', default=None,
                    help='robotseg | supervised | no_sema | no_rpg | no_cycle (config variants)')
    ap.add_argument('--steps', type=int, help='training steps (overrides run.steps)')
    ap.add_argument('--device', help='auto | cpu | cuda')
    ap.add_argument('--train', nargs='+', help='bag globs to train on (overrides data.train)')
    return ap


def run(args: argparse.Namespace, extra: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format='%(name)s: %(message)s', stream=sys.stderr)
    if extra[:1] == ['--']:  # `rmseg-train robotseg -- --variant X`
        extra = extra[1:]
    opts = build_parser().parse_args(extra)
    overrides: dict[str, Any] = {}
    if opts.steps:
        overrides.setdefault('run', {})['steps'] = opts.steps
    if opts.device:
        overrides.setdefault('run', {})['device'] = opts.device
    if opts.train:
        overrides.setdefault('data', {})['train'] = opts.train
    cfg, resolved = load_config(args.config, opts.variant, bool(args.smoke), overrides)
    out = Path(args.out) if args.out else cfg.run_dir()
    summary = train_variant(cfg, resolved, out)
    print(json.dumps(summary, indent=1, default=str))
    return 0


__all__ = ['export', 'make_loss_fn', 'propagate', 'run', 'to_dict', 'train_variant']
