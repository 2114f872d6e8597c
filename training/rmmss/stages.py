"""The three training stages of RMMSS: `rmseg-train teacher | robust | fsm`.

Why one long module: the three stages share their setup, loss wiring and metadata, and
rosbag-to-student is read top to bottom here.

teacher: all modalities, OHEM cross-entropy.
robust:  the same network trained on random modality subsets (1..4 kept per sample) with OHEM CE
         + pixel-logit KL to the frozen teacher (which sees the full view of the same sample)
         + Hybrid Prototype Distillation; `distill: false` keeps only the dropout and CE, the
         AnySeg-style reference trained with the same budget.
fsm:     teacher and robust model frozen; the Feature Selection Module learns, on the same
         dropout schedule, to select per element between their features and logits. Its output
         is the deployable student.
Each stage writes its run directory (engine.Trainer) and, at the end, `model.safetensors`: the
deployable checkpoint the next stage (or a node) loads.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rmseg_ros.classes import ClassTable
from rmseg_ros.config import to_dict
from rmseg_ros.frontend.preprocess import FrontendConfig
from rmseg_ros.modalities import INDEX, MODALITIES, SHORT
from training.engine import (
    DistContext,
    Trainer,
    config_hash,
    distributed,
    finish_run,
    parse_set,
)
from training.export import export_backbone, export_checkpoint, load_model
from training.robult.loss_config import RobultLossConfig

from .config import (
    DropoutConfig,
    LossConfig,
    RMMSSConfig,
    class_table,
    frontend_of,
    load_config,
    make_dataset,
    split_class_weights,
)
from .losses import hybrid_prototype_loss, ohem_cross_entropy, pixel_kl

log = logging.getLogger('rmseg-train.rmmss')
STAGE_HELP = {
    'teacher': 'RMMSS stage 1: the all-modality teacher (class-weighted OHEM cross-entropy).',
    'robust': 'RMMSS stage 2: the robust model under random modality dropout, distilled from the '
              'frozen teacher (pixel KL + HPDM); --no-distill: the dropout-only baseline.',
    'fsm': 'RMMSS stage 3: the Feature Selection Module over the frozen teacher and robust model '
           '(the deployed student).',
}


# ----------------------------------------------------------------------------- pieces

def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {m: batch[m] for m in MODALITIES}


def _subset_masks(names: tuple[str, ...]) -> torch.Tensor:
    """bool[S, 4] presence masks of short subset names ('RD' -> rgb, depth)."""
    letter = {short: INDEX[m] for m, short in SHORT.items()}
    masks = torch.zeros(len(names), len(MODALITIES), dtype=torch.bool)
    for i, name in enumerate(names):
        masks[i, [letter[c] for c in name]] = True
    return masks


def drop_modalities(presence: torch.Tensor, generator: torch.Generator, cfg: DropoutConfig
                    ) -> torch.Tensor:
    """Per sample, keep k of its present modalities (k uniform in [min_keep, min(max_keep, n)]),
    chosen uniformly, or one of `cfg.subsets` it has, uniformly; with probability
    1 - cfg.probability a sample keeps all of them. A sample that has none of `cfg.subsets`
    keeps what it has."""
    pres = presence.detach().to('cpu', torch.bool)
    out = pres.clone()
    named = _subset_masks(cfg.subsets) if cfg.subsets else None
    for b in range(pres.shape[0]):
        if float(torch.rand((), generator=generator)) >= cfg.probability:
            continue
        if named is not None:
            fits = torch.nonzero((named & ~pres[b]).sum(1) == 0).flatten()
            if fits.numel():
                pick = fits[int(torch.randint(fits.numel(), (), generator=generator))]
                out[b] = named[pick]
            continue
        idx = torch.nonzero(pres[b]).flatten()
        n = idx.numel()
        if n <= 1:
            continue
        lo = min(max(1, cfg.min_keep), n)
        hi = max(lo, min(cfg.max_keep, n))
        k = int(torch.randint(lo, hi + 1, (), generator=generator))
        keep = idx[torch.randperm(n, generator=generator)[:k]]
        out[b] = False
        out[b, keep] = True
    return out.to(presence.device)


class FrozenGuard:
    """Proof that frozen modules do not change: a copy of their state (parameters and buffers)
    compared bit for bit on demand. Raises, rather than asserts, so `python -O` keeps it."""

    def __init__(self, modules: dict[str, nn.Module]) -> None:
        self.modules = modules
        for name, mod in modules.items():
            trainable = [n for n, p in mod.named_parameters() if p.requires_grad]
            if trainable:
                raise RuntimeError(f'{name} must be frozen but has trainable {trainable[:3]}')
        self.reference = {f'{name}.{k}': v.detach().clone()
                          for name, mod in modules.items() for k, v in mod.state_dict().items()}

    def changed(self) -> list[str]:
        now = {f'{name}.{k}': v for name, mod in self.modules.items()
               for k, v in mod.state_dict().items()}
        return [k for k, ref in self.reference.items() if not torch.equal(now[k].cpu(), ref.cpu())]

    def check(self) -> None:
        changed = self.changed()
        if changed:
            raise RuntimeError(f'frozen weights changed during training: {changed[:5]}'
                               f'{" ..." if len(changed) > 5 else ""}')


def freeze(model: nn.Module) -> nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def check_compatible(meta: dict, classes: ClassTable, frontend: FrontendConfig, what: str
                      ) -> None:
    if tuple(meta.get('classes', ())) != classes.names:
        raise ValueError(f'{what}: trained for classes {meta.get("classes")}, the config has '
                         f'{list(classes.names)}')
    fe = meta.get('frontend') or {}
    if (fe.get('height'), fe.get('width'), fe.get('event_bins')) != (
            frontend.height, frontend.width, frontend.event_bins):
        raise ValueError(f'{what}: trained at {fe.get("width")}x{fe.get("height")} with '
                         f'{fe.get("event_bins")} event bins, the data is {frontend.width}x'
                         f'{frontend.height} with {frontend.event_bins}')


def _find_submodule(parent: nn.Module, child: nn.Module) -> str:
    for name, mod in parent.named_modules():
        if mod is child:
            return name
    raise RuntimeError('the FSM student does not hold the given frozen model')


# ----------------------------------------------------------------------------- loss functions
# Each returns `loss_fn(net, batch, ctx) -> (loss, logs)` for engine.Trainer.

def teacher_loss(lc: LossConfig, weights: torch.Tensor | None = None):
    """All modalities the recording has, OHEM cross-entropy (class-weighted with `weights`)."""
    def loss_fn(net, batch, ctx):
        out = net(model_inputs(batch), batch['presence'])
        ce = ohem_cross_entropy(out.logits, batch['labels'], lc.ohem_thresh,
                                lc.ohem_min_kept_fraction, class_weights=weights)
        return ce, {'ce': ce.detach()}

    return loss_fn


def robust_loss(lc: LossConfig, dropout: DropoutConfig, teacher: nn.Module | None,
                num_classes: int, robult: RobultLossConfig | None = None,
                weights: torch.Tensor | None = None):
    """Random modality subsets; with a teacher: + pixel KL + HPDM against its full view; with
    `robult` enabled (net a training.robult.latents.RobultModel): + the Robult losses. Frames
    flagged unlabelled have their labels ignored by every label-based term."""
    from training.robult.losses import mask_unlabelled, robult_terms
    from training.robult.split_forward import forward_in_groups, labelled_first

    aux = robult is not None and robult.enabled

    def loss_fn(net, batch, ctx):
        # batches of a fully labelled set (the RMMSS robust stage) carry no 'labelled' flags
        split = (aux and robult.separate_unlabelled_forward
                 and batch.get('labelled') is not None)
        if split:
            batch = labelled_first(batch)
        inputs = model_inputs(batch)
        labels = mask_unlabelled(batch['labels'], batch.get('labelled'))
        presence = drop_modalities(batch['presence'], ctx.generator, dropout)
        if split:
            out = forward_in_groups(net, inputs, presence, batch['presence'],
                                    int(batch['labelled'].sum()))
        elif aux:
            out = net(inputs, presence, full_presence=batch['presence'])
        else:
            out = net(inputs, presence)
        ce = ohem_cross_entropy(out.logits, labels, lc.ohem_thresh, lc.ohem_min_kept_fraction,
                                class_weights=weights)
        logs: dict[str, Any] = {'ce': ce.detach(),
                                'kept_modalities': presence.sum(1).float().mean()}
        loss = ce
        if teacher is not None:
            with torch.no_grad():
                t_out = teacher(inputs, batch['presence'])
            kl = pixel_kl(out.logits, t_out.logits, lc.kl_temperature)
            proto, parts = hybrid_prototype_loss(
                out.features, out.modality_features, t_out.features, t_out.modality_features,
                labels, presence, num_classes, lc.proto_stages, lc.proto_temperature, lc.hpdm)
            loss = ce + lc.pixel_kl_weight * kl + lc.proto_weight * proto
            logs.update({'pixel_kl': kl.detach(), 'proto': proto.detach(), **parts})
        if aux:
            extra, parts = robult_terms(out.extras['robult'], labels, batch.get('labelled'),
                                        robult, num_classes, ctx.generator)
            loss = loss + extra
            logs.update(parts)
        return loss, logs

    return loss_fn


def fsm_loss(lc: LossConfig, dropout: DropoutConfig, weights: torch.Tensor | None = None):
    """The FSM student on the robust stage's dropout schedule, OHEM cross-entropy."""
    def loss_fn(net, batch, ctx):
        presence = drop_modalities(batch['presence'], ctx.generator, dropout)
        out = net(model_inputs(batch), presence)
        ce = ohem_cross_entropy(out.logits, batch['labels'], lc.ohem_thresh,
                                lc.ohem_min_kept_fraction, class_weights=weights)
        return ce, {'ce': ce.detach(), 'kept_modalities': presence.sum(1).float().mean()}

    return loss_fn


# ----------------------------------------------------------------------------- stage setup

@dataclass
class Setup:
    cfg: RMMSSConfig
    resolved: dict[str, Any]
    frontend: FrontendConfig
    classes: ClassTable
    out: Path
    ctx: DistContext


def _parse(stage: str, args: argparse.Namespace, extra: list[str]
           ) -> tuple[RMMSSConfig, dict, Path]:
    parser = argparse.ArgumentParser(
        prog=f'rmseg-train {stage}', description=STAGE_HELP[stage],
        epilog='Common options: --config FILE (default training/configs/rmmss.yaml), --out DIR, '
               '--smoke. A run directory that holds checkpoints is resumed.')
    parser.add_argument('--teacher', help='teacher checkpoint (deployable)')
    parser.add_argument('--robust', help='robust-model checkpoint (deployable)')
    parser.add_argument('--device', help='auto | cpu | cuda')
    parser.add_argument('--steps', type=int, help='training steps (overrides the config)')
    parser.add_argument('--no-distill', action='store_true',
                        help='robust stage: dropout-only baseline (same as distill: false)')
    parser.add_argument('--matched', action='store_true',
                        help='robust stage: train as many steps as the robust and FSM stages '
                             'together (the compute-matched dropout-only baseline)')
    parser.add_argument('--seed', type=int, help='run.seed (data order, dropout draws, init)')
    parser.add_argument('--set', action='append', default=[], metavar='KEY=VALUE',
                        help='any config value, dotted key, YAML value (repeatable), e.g. '
                             '--set run.threads=1 --set loss.class_weighting=none')
    opts = parser.parse_args(extra)
    overrides: dict[str, Any] = parse_set(opts.set)
    if opts.teacher:
        overrides['teacher_checkpoint'] = opts.teacher
    if opts.robust:
        overrides['robust_checkpoint'] = opts.robust
    if opts.device:
        overrides.setdefault('run', {})['device'] = opts.device
    if opts.steps:
        overrides.setdefault('run', {})['steps'] = opts.steps
    if opts.no_distill:
        overrides['distill'] = False
    if opts.seed is not None:
        overrides.setdefault('run', {})['seed'] = opts.seed
    if opts.matched:
        if stage != 'robust' or opts.steps:
            parser.error('--matched applies to the robust stage, without --steps')
        steps = [load_config(args.config, s, args.smoke, overrides)[0].run.steps
                 for s in ('robust', 'fsm')]
        overrides.setdefault('run', {})['steps'] = sum(steps)
        log.info('compute-matched budget: %d robust + %d FSM steps', *steps)
    cfg, resolved = load_config(args.config, stage, args.smoke, overrides)
    out = Path(args.out) if args.out else cfg.run_dir(stage)
    return cfg, resolved, out


def run_metadata(cfg: RMMSSConfig, resolved: dict, frontend: FrontendConfig, classes: ClassTable,
              arch: str, model_cfg: dict, stage: str) -> dict[str, Any]:
    """What a training checkpoint carries so that `export` can make it deployable."""
    return {'arch': arch, 'model': model_cfg, 'classes': list(classes.names),
            'colors': classes.colors.tolist(), 'modalities': list(MODALITIES),
            'frontend': to_dict(frontend), 'train_config_hash': config_hash(resolved),
            'stage': stage, 'distill': cfg.distill if stage == 'robust' else None}


def fusion_config(cfg: RMMSSConfig, classes: ClassTable, frontend: FrontendConfig):
    from rmseg_ros.models.fusion import FusionConfig

    return FusionConfig.from_dict({**cfg.model, 'num_classes': len(classes.names),
                                   'event_bins': frontend.event_bins})


def _class_weights(setup: Setup) -> torch.Tensor | None:
    """The cross-entropy class weights of the config's training split (None: unweighted)."""
    data = setup.cfg.data
    dataset = make_dataset(data.train_shards, setup.frontend, augment=None,
                           labelled_only=data.labelled_only, max_samples=data.max_train_samples)
    weights = split_class_weights(dataset, setup.cfg.loss, len(setup.classes.names))
    if weights is None:
        return None
    if setup.ctx.is_main:
        log.info('class weights (%s): %s', setup.cfg.loss.class_weighting,
                 ', '.join(f'{c} {w:.2f}' for c, w in zip(setup.classes.names, weights,
                                                          strict=True)))
    return torch.from_numpy(weights).to(setup.ctx.device)


def _train(stage: str, setup: Setup, model: nn.Module, loss_fn, param_groups: list[dict],
           arch: str, model_cfg: dict, on_checkpoint=None, exporter=export_checkpoint
           ) -> dict[str, Any]:
    """Datasets, validation, the Trainer, and the deployable checkpoint at the end."""
    from training.evaluate import subset_mious

    cfg = setup.cfg
    data = cfg.data
    train_set = make_dataset(data.train_shards, setup.frontend, augment=data.augment,
                             labelled_only=data.labelled_only,
                             max_samples=data.max_train_samples, seed=cfg.run.seed,
                             in_memory_fraction=data.in_memory_fraction)
    val_fn = None
    if data.val_shards:
        val_set = make_dataset(data.val_shards, setup.frontend, augment=None,
                               labelled_only=True, max_samples=data.max_val_samples)

        def val_fn(module: nn.Module, step: int) -> dict[str, float]:
            return subset_mious(module, val_set, cfg.validate.subsets, len(setup.classes.names),
                                setup.ctx.device, cfg.validate.batch_size,
                                classes=setup.classes.names)

    trainer = Trainer(model, loss_fn, train_set, cfg.run, cfg.optim, setup.out, setup.resolved,
                      ctx=setup.ctx, param_groups=param_groups, val_fn=val_fn,
                      checkpoint_meta=run_metadata(cfg, setup.resolved, setup.frontend,
                                                setup.classes, arch, model_cfg, stage),
                      on_checkpoint=on_checkpoint)
    result = trainer.fit()
    return finish_run(setup.ctx, result, setup.out, exporter,
                      {'stage': stage, 'checkpoint': str(result.checkpoint),
                       'val': result.last_val})


def _run_stage(stage: str, args: argparse.Namespace, extra: list[str], body) -> int:
    logging.basicConfig(level=logging.INFO, format='%(name)s: %(message)s', stream=sys.stderr)
    cfg, resolved, out = _parse(stage, args, extra)
    frontend, classes = frontend_of(cfg.data), class_table(cfg.data)
    with distributed(cfg.run.device) as ctx:
        torch.manual_seed(cfg.run.seed)  # same initial weights on every rank
        body(Setup(cfg, resolved, frontend, classes, out, ctx))
    return 0


# ----------------------------------------------------------------------------- the stages

def teacher_stage(setup: Setup) -> dict[str, Any]:
    from rmseg_ros.models.fusion import FusionSegNet

    fcfg = fusion_config(setup.cfg, setup.classes, setup.frontend)
    model = FusionSegNet(fcfg)
    return _train('teacher', setup, model, teacher_loss(setup.cfg.loss, _class_weights(setup)),
                  [{'params': list(model.parameters())}], 'fusion', fcfg.to_dict())


def robust_stage(setup: Setup) -> dict[str, Any]:
    from rmseg_ros.models.fusion import FusionSegNet

    cfg, lc = setup.cfg, setup.cfg.loss
    fcfg = fusion_config(cfg, setup.classes, setup.frontend)
    model = FusionSegNet(fcfg)
    teacher = None
    if cfg.distill or cfg.init_from_teacher:
        path = cfg.predecessor('teacher')
        teacher, meta = load_model(path, setup.ctx.device)
        check_compatible(meta, setup.classes, setup.frontend, f'teacher {path}')
        freeze(teacher)
        if cfg.init_from_teacher:
            try:
                model.load_state_dict(teacher.state_dict())
            except RuntimeError as exc:
                raise ValueError(f'init_from_teacher: the teacher {path} has another model '
                                 f'config than `model:` ({exc})') from exc
        if not cfg.distill:
            teacher = None
    exporter = export_checkpoint
    if cfg.robult.enabled:  # + latent head and reconstructor; the export keeps the network only
        from training.robult.latents import RobultModel

        model, exporter = RobultModel(model, cfg.robult), export_backbone
    loss_fn = robust_loss(lc, cfg.dropout, teacher, len(setup.classes.names), cfg.robult,
                          _class_weights(setup))
    return _train('robust', setup, model, loss_fn, [{'params': list(model.parameters())}],
                  'fusion', fcfg.to_dict(), exporter=exporter)


def fsm_model_config(teacher_meta: dict, robust_meta: dict, fsm_cfg: dict) -> dict[str, Any]:
    """metadata['model'] of an FSM student (what rmseg_ros.models.checkpoint.build_model reads)."""
    return {'teacher': teacher_meta['model'], 'robust': robust_meta['model'], 'fsm': fsm_cfg}


def fsm_stage(setup: Setup) -> dict[str, Any]:
    from rmseg_ros.models.fsm import FSMConfig, FSMStudent

    cfg = setup.cfg
    teacher, t_meta = load_model(cfg.predecessor('teacher'), setup.ctx.device)
    robust, r_meta = load_model(cfg.predecessor('robust'), setup.ctx.device)
    check_compatible(t_meta, setup.classes, setup.frontend, 'teacher')
    check_compatible(r_meta, setup.classes, setup.frontend, 'robust model')
    fsm_cfg = FSMConfig.from_dict(cfg.fsm)
    student = FSMStudent(freeze(teacher), freeze(robust), fsm_cfg)
    guard = FrozenGuard({'teacher': student.get_submodule(_find_submodule(student, teacher)),
                         'robust': student.get_submodule(_find_submodule(student, robust))})
    trainable = list(student.trainable_parameters())
    frozen_ids = {id(p) for m in (teacher, robust) for p in m.parameters()}
    if any(id(p) in frozen_ids for p in trainable):
        raise RuntimeError('FSMStudent.trainable_parameters() includes frozen weights')

    summary = _train('fsm', setup, student, fsm_loss(cfg.loss, cfg.dropout, _class_weights(setup)),
                     [{'params': trainable}], 'fsm_student',
                     fsm_model_config(t_meta, r_meta, to_dict(fsm_cfg)),
                     on_checkpoint=lambda _m, _s: guard.check())
    guard.check()
    summary['frozen_unchanged'] = True
    return summary


def run_teacher(args: argparse.Namespace, extra: list[str]) -> int:
    return _run_stage('teacher', args, extra, teacher_stage)


def run_robust(args: argparse.Namespace, extra: list[str]) -> int:
    return _run_stage('robust', args, extra, robust_stage)


def run_fsm(args: argparse.Namespace, extra: list[str]) -> int:
    return _run_stage('fsm', args, extra, fsm_stage)


