"""RMMSS losses, the generic training engine (atomic checkpoints, exact resume, metrics), the
frozen models of the FSM stage, and the whole teacher -> robust -> fsm -> evaluate -> export
chain on a cache built here from a bag written here (plus a SIGKILLed run and a torchrun run)."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn
from training_checks import assert_thread_policy_applied

from rmseg_ros.camera import CameraIntrinsics
from rmseg_ros.modalities import MODALITIES, input_channels
from training import engine
from training.data.bag_samples import DatasetConfig
from training.data.cli import build_cache
from training.rmmss.config import DropoutConfig, LossConfig, RMMSSConfig
from training.rmmss.losses import (
    class_prototypes,
    hybrid_prototype_loss,
    ohem_cross_entropy,
    pixel_kl,
    prototype_kl,
)
from training.rmmss.stages import FrozenGuard, drop_modalities, freeze, fsm_loss
from training.sim import bag_writer as bw

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / 'training' / 'configs' / 'rmmss.yaml'


# ----------------------------------------------------------------------------- losses

def _two_class_logits(p_true: list[float]) -> torch.Tensor:
    """(1, 2, 1, N) logits whose softmax gives class 0 probability p for each pixel."""
    p = torch.tensor(p_true, dtype=torch.float64)
    return torch.stack([p.log(), (1 - p).log()])[None, :, None, :]


def test_ohem_keeps_only_hard_pixels():
    logits = _two_class_logits([0.9, 0.95, 0.2, 0.4, 0.01])
    labels = torch.tensor([[[0, 0, 0, 0, 255]]])  # the last pixel (very wrong) is ignored
    loss = ohem_cross_entropy(logits, labels, thresh=0.7, min_kept_fraction=0.0)
    assert loss.item() == pytest.approx((-math.log(0.2) - math.log(0.4)) / 2, rel=1e-6)
    # nothing is hard: the min_kept highest losses are kept instead
    easy = _two_class_logits([0.9, 0.95, 0.8, 0.99])
    loss = ohem_cross_entropy(easy, torch.zeros(1, 1, 4, dtype=torch.long), thresh=0.7,
                              min_kept_fraction=0.0, min_kept=2)
    assert loss.item() == pytest.approx((-math.log(0.8) - math.log(0.9)) / 2, rel=1e-6)
    # only ignored pixels: zero, and still differentiable
    x = torch.randn(1, 3, 2, 2, requires_grad=True)
    zero = ohem_cross_entropy(x, torch.full((1, 2, 2), 255))
    zero.backward()
    assert zero.item() == 0.0 and x.grad is not None


def test_pixel_kl_zero_for_equal_and_matches_hand_value():
    t = torch.randn(2, 5, 4, 3)
    assert pixel_kl(t.clone(), t).item() == pytest.approx(0.0, abs=1e-6)
    assert pixel_kl(t + torch.randn_like(t), t).item() > 1e-3
    teacher = _two_class_logits([0.5])
    student = _two_class_logits([0.9])
    expected = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
    assert pixel_kl(student, teacher).item() == pytest.approx(expected, rel=1e-5)
    # temperature: distributions of logits / T, scaled back by T^2
    t2 = pixel_kl(student * 2, teacher * 2, temperature=2.0).item()
    assert t2 == pytest.approx(4 * expected, rel=1e-5)


def test_prototypes_are_masked_means_per_class():
    feats = torch.arange(8, dtype=torch.float32).view(1, 2, 2, 2)  # (B, C, 2, 2)
    # labels at 4x4: 2x2 blocks of one class each, resized (nearest) to the 2x2 feature map
    blocks = torch.tensor([[0, 1], [1, 255]])
    labels = blocks.repeat_interleave(2, 0).repeat_interleave(2, 1)[None]
    protos, present = class_prototypes(feats, labels, num_classes=3)
    assert present.tolist() == [[True, True, False]]
    f = feats[0].reshape(2, 4)  # pixels (0,0), (0,1), (1,0), (1,1)
    assert torch.allclose(protos[0, 0], f[:, 0])
    assert torch.allclose(protos[0, 1], (f[:, 1] + f[:, 2]) / 2)
    assert torch.equal(protos[0, 2], torch.zeros(2))  # absent class
    # a sample masked out (its modality missing) has no prototypes at all
    _, present = class_prototypes(feats, labels, 3, sample_mask=torch.tensor([False]))
    assert not present.any()


def test_prototype_kl_over_classes():
    teacher = torch.zeros(1, 2, 1)  # two classes, one channel: uniform over classes
    student = torch.tensor([[[math.log(0.9)], [math.log(0.1)]]])
    present = torch.ones(1, 2, dtype=torch.bool)
    expected = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
    assert prototype_kl(student, teacher, present).item() == pytest.approx(expected, rel=1e-5)
    assert prototype_kl(teacher.clone(), teacher, present).item() == pytest.approx(0, abs=1e-7)
    # an absent class takes no part in the softmax, whatever its (garbage) value
    s3 = torch.cat([student, torch.full((1, 1, 1), 1e6)], 1).requires_grad_(True)
    t3 = torch.cat([teacher, torch.full((1, 1, 1), -1e6)], 1)
    mask3 = torch.tensor([[True, True, False]])
    loss = prototype_kl(s3, t3, mask3)
    loss.backward()
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert torch.isfinite(s3.grad).all() and s3.grad[0, 2].abs().sum() == 0
    # a sample with a single class carries no class distribution: it contributes nothing
    one = torch.tensor([[True, False, False]])
    assert prototype_kl(s3, t3, one).item() == 0.0
    mixed = prototype_kl(s3.detach().repeat(2, 1, 1), t3.repeat(2, 1, 1),
                         torch.cat([mask3, one]))
    assert mixed.item() == pytest.approx(expected, rel=1e-5)


def test_hybrid_prototype_distillation():
    torch.manual_seed(0)
    b, k = 2, 4
    labels = torch.randint(0, k, (b, 16, 16))
    feats = [torch.randn(b, c, s, s) for c, s in ((6, 8), (8, 4))]
    mods = [{m: torch.randn_like(f) for m in ('rgb', 'depth')} for f in feats]
    presence = torch.tensor([[True, True, False, False], [True, False, False, False]])
    same, parts = hybrid_prototype_loss(feats, mods, feats, mods, labels, presence, k,
                                        stages=(0, 1))
    assert same.item() == pytest.approx(parts['proto_cross'], abs=1e-6)  # fused, intra: 0
    assert parts['proto_fused'] == pytest.approx(0, abs=1e-6)
    assert parts['proto_intra'] == pytest.approx(0, abs=1e-6)
    assert parts['proto_cross'] > 0  # a modality's prototypes differ from the fused ones
    # student features of a modality in samples where the student did not have it are ignored
    garbage = [{**d, 'depth': torch.where(torch.arange(b).view(b, 1, 1, 1) == 1,
                                          torch.randn_like(d['depth']) * 100, d['depth'])}
               for d in mods]
    again, _ = hybrid_prototype_loss(feats, garbage, feats, mods, labels, presence, k,
                                     stages=(0, 1))
    assert again.item() == pytest.approx(same.item(), rel=1e-5)
    # perturbed student: every kind of pairing grows, and gradients reach the student
    student = [(f + torch.randn_like(f)).requires_grad_(True) for f in feats]
    s_mods = [{m: v + torch.randn_like(v) for m, v in d.items()} for d in mods]
    loss, parts2 = hybrid_prototype_loss(student, s_mods, feats, mods, labels, presence, k,
                                         stages=(0, 1))
    loss.backward()
    assert parts2['proto_fused'] > 0 and parts2['proto_intra'] > 0
    assert all(f.grad is not None and f.grad.abs().sum() > 0 for f in student)


def test_modality_dropout_keeps_non_empty_subsets():
    presence = torch.tensor([[True] * 4] * 64 + [[True, False, True, False]] * 16)
    gen = torch.Generator().manual_seed(3)
    out = drop_modalities(presence, gen, DropoutConfig())
    assert out.any(1).all() and not (out & ~presence).any()
    assert set(out[:64].sum(1).tolist()) == {1, 2, 3, 4}
    again = drop_modalities(presence, torch.Generator().manual_seed(3), DropoutConfig())
    assert torch.equal(out, again)  # reproducible from the step's generator
    none = drop_modalities(presence, gen, DropoutConfig(probability=0.0))
    assert torch.equal(none, presence)


def test_modality_dropout_from_named_subsets():
    presence = torch.tensor([[True] * 4] * 600 + [[False, True, True, False]] * 8)
    gen = torch.Generator().manual_seed(5)
    rgb_only = drop_modalities(presence, gen, DropoutConfig(subsets=('R',)))
    assert torch.equal(rgb_only[:600], torch.tensor([[True, False, False, False]] * 600))
    assert torch.equal(rgb_only[600:], presence[600:])  # no R: keeps what it has
    all15 = ('R', 'D', 'L', 'E', 'RD', 'RL', 'RE', 'DL', 'DE', 'LE', 'RDL', 'RDE', 'RLE', 'DLE',
             'RDLE')
    out = drop_modalities(presence, gen, DropoutConfig(subsets=all15))
    counts = torch.unique(out[:600], dim=0, return_counts=True)[1]
    assert len(counts) == 15 and counts.min() >= 20  # each about 40 of 600; k-uniform: 150 RDLE
    assert not (out[600:] & ~presence[600:]).any()
    with pytest.raises(ValueError, match='subset name'):
        DropoutConfig(subsets=('RX',))


# ----------------------------------------------------------------------------- engine

class VectorSet(torch.utils.data.Dataset):
    def __init__(self, n: int = 5) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 4, generator=g)
        self.y = torch.randn(n, 1, generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {'x': self.x[i], 'y': self.y[i], 'index': torch.tensor(i)}


def _tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 16), nn.Dropout(0.5), nn.Linear(16, 1))


def _mse(net, batch, ctx):
    noise = torch.randn(batch['y'].shape, generator=ctx.generator)  # per-step randomness
    loss = ((net(batch['x']) - batch['y'] - 0.01 * noise) ** 2).mean()
    return loss, {'mse': loss.detach()}


def _trainer(out: Path, steps: int, loss_fn=_mse, model: nn.Module | None = None,
             **run) -> engine.Trainer:
    cfg = engine.RunConfig(steps=steps, batch_size=2, num_workers=0, log_every=1, ckpt_every=2,
                           keep_checkpoints=10, device='cpu', progress=False, **run)
    optim = engine.OptimConfig(lr=0.05, warmup_steps=1)
    return engine.Trainer(model or _tiny_model(), loss_fn, VectorSet(), cfg, optim, out,
                          {'run': {'steps': steps}, 'what': 'tiny'},
                          checkpoint_meta={'arch': 'test'})


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path):
    full = _trainer(tmp_path / 'full', 7)
    result = full.fit()
    assert result.step == 7 and result.resumed_from is None

    def crash_at_6(net, batch, ctx):
        if ctx.step == 6:
            raise KeyboardInterrupt('interrupted')
        return _mse(net, batch, ctx)

    with pytest.raises(KeyboardInterrupt):
        _trainer(tmp_path / 'cut', 7, crash_at_6).fit()
    assert [s for s, _ in engine.list_checkpoints(tmp_path / 'cut')] == [4, 2]
    resumed = _trainer(tmp_path / 'cut', 7, model=nn.Sequential(
        nn.Linear(4, 16), nn.Dropout(0.5), nn.Linear(16, 1)))  # other init: weights come back
    result = resumed.fit()
    assert result.resumed_from == 4 and result.step == 7
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values(),
                    strict=True):
        assert torch.equal(a, b)
    opt_a, opt_b = full.optimizer.state_dict(), resumed.optimizer.state_dict()
    for pid, st in opt_a['state'].items():
        assert torch.equal(st['exp_avg_sq'], opt_b['state'][pid]['exp_avg_sq'])
    records = [json.loads(line) for line in (tmp_path / 'cut' / 'metrics.jsonl').open()]
    steps = [r['step'] for r in records if r['split'] == 'train']
    # step 5 ran twice (before the crash and after) but is logged once: the resume cut the
    # metrics back to its checkpoint (step 4)
    assert steps == [1, 2, 3, 4, 5, 6, 7]
    assert all(math.isfinite(r['loss']) for r in records)
    saved = yaml.safe_load((tmp_path / 'cut' / 'config.yaml').read_text())
    assert saved['what'] == 'tiny'
    # a finished run started again does nothing but report where it is
    again = _trainer(tmp_path / 'cut', 7).fit()
    assert again.step == 7 and again.resumed_from == 7


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    trainer = _trainer(tmp_path / 'run', 2)
    trainer.fit()
    good = engine.checkpoint_path(tmp_path / 'run', 2)
    before = good.read_bytes()

    def broken_replace(src, dst):
        raise OSError('disk full')

    trainer.step = 3
    monkeypatch.setattr(os, 'replace', broken_replace)
    with pytest.raises(OSError, match='disk full'):
        trainer.save()
    monkeypatch.undo()
    files = sorted(p.name for p in (tmp_path / 'run' / 'checkpoints').iterdir())
    assert files == [good.name]  # no partial step 3, no temporary file left behind
    assert good.read_bytes() == before
    # a truncated newest checkpoint (a crash of something else) is skipped on resume
    bad = engine.checkpoint_path(tmp_path / 'run', 4)
    bad.write_bytes(before[: len(before) // 2])
    path, _, meta = engine.latest_checkpoint(tmp_path / 'run')
    assert path == good and meta['step'] == 2


def test_resume_refuses_another_config(tmp_path):
    _trainer(tmp_path / 'run', 2).fit()
    other = _trainer(tmp_path / 'run', 4)
    other.config = {'run': {'steps': 4}, 'what': 'something else'}
    with pytest.raises(ValueError, match='what'):
        other.fit()
    longer = _trainer(tmp_path / 'run', 4).fit()  # more steps only: continues
    assert longer.resumed_from == 2 and longer.step == 4


def test_stage_config_merges_stage_and_smoke_sections():
    raw = yaml.safe_load(CONFIG.read_text())
    fsm = engine.resolve_stage_config(raw, 'fsm', schema=RMMSSConfig)
    assert fsm['run']['steps'] == raw['stages']['fsm']['run']['steps']
    assert fsm['run']['batch_size'] == raw['run']['batch_size']
    smoke = engine.resolve_stage_config(raw, 'fsm', smoke=True, schema=RMMSSConfig)
    assert smoke['run']['steps'] == raw['smoke']['run']['steps']
    assert smoke['loss']['pixel_kl_weight'] == 50.0 and smoke['loss']['proto_weight'] == 100.0
    assert LossConfig().ohem_thresh == 0.7


# ----------------------------------------------------------------------------- FSM stage

def _tiny_fusion(k: int = 3):
    from rmseg_ros.models.fusion import FusionConfig, FusionSegNet

    return FusionSegNet(FusionConfig(num_classes=k, widths=(8, 8, 8, 8), depths=(1, 1, 1, 1),
                                     decoder_dim=8, attention_heads=2))


class SegSet(torch.utils.data.Dataset):
    """Synthetic four-modality samples at 32x32 with labels."""

    def __init__(self, n: int = 4, k: int = 3) -> None:
        g = torch.Generator().manual_seed(1)
        ch = input_channels(5)
        self.items = [{**{m: torch.randn(ch[m], 32, 32, generator=g) for m in MODALITIES},
                       'presence': torch.ones(4, dtype=torch.bool),
                       'labels': torch.randint(0, k, (32, 32), generator=g),
                       'index': torch.tensor(i)} for i in range(n)]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.items[i]


def test_fsm_training_leaves_teacher_and_robust_bit_identical(tmp_path):
    from rmseg_ros.models.fsm import FSMConfig, FSMStudent

    torch.manual_seed(0)
    teacher, robust = freeze(_tiny_fusion()), freeze(_tiny_fusion())
    before = {f'{n}.{k}': v.clone() for n, m in (('t', teacher), ('r', robust))
              for k, v in m.state_dict().items()}
    student = FSMStudent(teacher, robust, FSMConfig(hidden=8))
    trainable = list(student.trainable_parameters())
    fsm_before = [p.detach().clone() for p in trainable]
    guard = FrozenGuard({'teacher': teacher, 'robust': robust})
    run = engine.RunConfig(steps=3, batch_size=2, num_workers=0, ckpt_every=3, device='cpu',
                           progress=False)
    trainer = engine.Trainer(student, fsm_loss(LossConfig(), DropoutConfig()), SegSet(), run,
                             engine.OptimConfig(lr=0.01), tmp_path / 'fsm', {},
                             param_groups=[{'params': trainable}],
                             on_checkpoint=lambda _m, _s: guard.check())
    trainer.fit()
    guard.check()
    after = {f'{n}.{k}': v for n, m in (('t', teacher), ('r', robust))
             for k, v in m.state_dict().items()}
    assert all(torch.equal(before[k], after[k]) for k in before)  # BN statistics included
    assert any(not torch.equal(a, p) for a, p in zip(fsm_before, trainable, strict=True))
    # and the guard does see a change
    with torch.no_grad():
        next(teacher.parameters()).add_(1e-3)
    with pytest.raises(RuntimeError, match='frozen weights changed'):
        guard.check()


# ----------------------------------------------------------------------------- evaluation

def test_iou_convention_counts_only_classes_seen():
    from training.evaluate import confusion_matrix, iou_per_class, mean_iou

    labels = torch.tensor([[0, 0, 1, 1, 255, 3]])
    pred = torch.tensor([[0, 1, 1, 1, 2, 0]])  # the 255 pixel's prediction is not counted
    cm = confusion_matrix(pred, labels, 4)
    assert cm.sum() == 5 and cm[0, 0] == 1 and cm[0, 1] == 1 and cm[3, 0] == 1
    iou = iou_per_class(cm)
    # class 0: TP 1, FP 1 (the 3), FN 1 -> 1/3; class 1: TP 2, FP 1 -> 2/3; class 3: 0
    assert iou[0] == pytest.approx(1 / 3) and iou[1] == pytest.approx(2 / 3) and iou[3] == 0
    assert math.isnan(iou[2])  # never in ground truth nor prediction: left out, not 0
    assert mean_iou(cm) == pytest.approx((1 / 3 + 2 / 3 + 0) / 3)


class LabelsFromRGB(nn.Module):
    """An oracle for the RGB channel: predicts the class written into it, class 0 without RGB."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k

    def forward(self, inputs, presence, missing='remove'):
        from types import SimpleNamespace

        cls = inputs['rgb'][:, 0].round().long().clamp(0, self.k - 1)
        cls = torch.where(presence[:, 0].view(-1, 1, 1), cls, torch.zeros_like(cls))
        return SimpleNamespace(logits=nn.functional.one_hot(cls, self.k).permute(0, 3, 1, 2)
                               .float())


def test_evaluation_scores_each_subset_with_its_own_modalities():
    from rmseg_ros.frontend.preprocess import FrontendConfig
    from training.evaluate import evaluate_model

    k, data = 3, SegSet(n=3, k=3)
    for item in data.items:
        item['rgb'][0] = item['labels'].float()
    classes = ['a', 'b', 'c']
    result = evaluate_model(LabelsFromRGB(k), data, classes, FrontendConfig(), torch.device('cpu'),
                            batch_size=2, failure_cases=('lidar_jitter',), progress=False)
    labels = torch.stack([it['labels'] for it in data.items])
    share0 = float((labels == 0).float().mean())  # all-class-0 prediction: IoU_0 = share0
    for name, score in result['emm']['remove']['subsets'].items():
        if 'R' in name:
            assert score['miou'] == pytest.approx(1.0)
        else:
            assert score['miou'] == pytest.approx(share0 / 3, abs=1e-6)
            assert score['iou']['a'] == pytest.approx(share0, abs=1e-6)
    assert result['failures']['lidar_jitter']['miou'] == pytest.approx(1.0)  # RGB untouched
    assert result['samples'] == 3 and result['full']['pixels'] == labels.numel()
    counts = [int((labels == c).sum()) for c in range(k)]  # RGB present: every pixel right
    assert result['full']['confusion'] == [[n if i == j else 0 for j in range(k)]
                                           for i, n in enumerate(counts)]


def test_confusion_table_rows_are_shares_of_the_true_class():
    from training.evaluate import confusion_table

    table = confusion_table({'classes': ['box', 'cylinder'],
                             'full': {'confusion': [[3, 1], [0, 0]]}})
    assert '| box | 75.0 | 25.0 |' in table and '| cylinder | - | - |' in table


def test_corruptions_touch_what_they_name():
    from rmseg_ros.frontend.preprocess import FrontendConfig
    from training.evaluate import FAILURE_CASES, Corrupter

    fe = FrontendConfig(height=32, width=32)
    c = Corrupter(fe, seed=0)
    depth = torch.rand(2, 32, 32) + 0.1
    lost = c.rmm('depth', depth, index=0)
    zero = (lost == 0).all(0).float().mean().item()
    assert 0.4 < zero < 0.6  # half of the pixels, all channels of each
    assert torch.equal(lost, c.rmm('depth', depth, index=0))  # seeded per sample
    assert not torch.equal(lost, c.rmm('depth', depth, index=1))
    rgb = torch.zeros(3, 32, 32)  # the mean colour
    black = c.rmm('rgb', rgb, index=0)
    assert 0.4 < (black[0] < -1.5).float().mean().item() < 0.6  # lost pixels are black
    noisy = c.nm('event', torch.zeros(5, 32, 32), index=0)
    assert noisy.min() >= -1 and noisy.max() <= 1 and (noisy.abs() == 1).any()
    lidar = torch.zeros(3, 32, 32)
    lidar[:, 8, 8] = torch.tensor([0.5, 0.3, 1.0])
    event = torch.zeros(5, 32, 32)
    event[0, 0, 0] = 0.8
    sample = {'rgb': torch.rand(3, 32, 32), 'depth': depth, 'lidar': lidar, 'event': event}
    touched = {}
    for name in FAILURE_CASES:
        out = {m: c.failure(name, m, x, 0) for m, x in sample.items()}
        touched[name] = [m for m in sample if not torch.equal(out[m], sample[m])]
        if name == 'lidar_jitter':  # range noise on the hit only
            assert out['lidar'][0, 8, 8] != 0.5 and out['lidar'][0].count_nonzero() == 1
        if name == 'low_res_events':  # the event mass of the block is kept, spread over it
            assert out['event'][0].sum().item() == pytest.approx(0.8, rel=1e-5)
    assert touched == {'motion_blur': ['rgb'], 'over_exposure': ['rgb'],
                       'under_exposure': ['rgb'], 'lidar_jitter': ['lidar'],
                       'low_res_events': ['event']}

# ----------------------------------------------------------------------------- the pipeline

CAM = CameraIntrinsics.from_fov(160, 120, 80.0)
T_BASE_CAM = np.array([[0, 0, 1, 0.2], [-1, 0, 0, 0], [0, -1, 0, 1.0], [0, 0, 0, 1]], float)
START_NS = 1_700_000_000_000_000_000
PERIOD_NS = 100_000_000


def _write_bag(path: Path, frames: int, seed: int) -> None:
    """Four modalities and labels whose classes follow the image bands (learnable, not noise)."""
    rng = np.random.default_rng(seed)
    rows = np.arange(120)[:, None].repeat(160, 1)
    labels = np.minimum(rows // 30, 3).astype(np.uint8)
    with bw.BagWriter(path, 'mcap') as w:
        w.write('/tf_static', START_NS, bw.tf_msg(
            [('base_link', 'camera_optical_frame', T_BASE_CAM),
             ('base_link', 'lidar', np.eye(4))], START_NS), latched=True)
        w.write('camera/camera_info', START_NS,
                bw.camera_info_msg(CAM, START_NS, 'camera_optical_frame'))
        for i in range(frames):
            t = START_NS + i * PERIOD_NS
            rgb = (labels[..., None] * 60 + rng.integers(0, 30, (120, 160, 3))).astype(np.uint8)
            depth = (1.0 + labels + rng.uniform(0, 0.2, labels.shape)).astype(np.float32)
            xyz = np.column_stack([rng.uniform(2, 6, 300), rng.uniform(-2, 2, 300),
                                   rng.uniform(-1, 1, 300)]).astype(np.float32)
            n = 200
            ev = bw.events_array(rng.integers(0, 160, n), rng.integers(0, 120, n),
                                 np.sort(t - rng.integers(0, 40_000_000, n)),
                                 rng.choice([-1, 1], n))
            w.write('camera/image', t, bw.image_msg(rgb, 'rgb8', t, 'camera_optical_frame'))
            w.write('depth/image', t, bw.image_msg(depth, '32FC1', t, 'camera_optical_frame'))
            w.write('lidar/points', t, bw.lidar_msg(xyz, np.full(300, 40.0, np.float32), t,
                                                    'lidar'))
            w.write('events', t, bw.events_msg(ev, t, 'camera_optical_frame'))
            w.write('labels/semantic', t, bw.image_msg(labels, 'mono8', t,
                                                       'camera_optical_frame'))


def _tiny_dataset_config(root: Path) -> Path:
    """dataset.yaml + perception.yaml under root for a 48x64 front-end; returns dataset.yaml."""
    frontend = yaml.safe_load((REPO / 'config' / 'perception.yaml').read_text())
    frontend['frontend'].update(height=48, width=64)
    (root / 'perception.yaml').write_text(yaml.safe_dump(frontend))
    dataset = yaml.safe_load((REPO / 'training' / 'configs' / 'dataset.yaml').read_text())
    dataset['frontend_config'] = str(root / 'perception.yaml')
    (root / 'dataset.yaml').write_text(yaml.safe_dump(dataset))
    return root / 'dataset.yaml'


@pytest.fixture(scope='module')
def pipeline_config(tmp_path_factory) -> Path:
    """A tiny cache (train and val shards at 48x64) and an rmmss config pointing at it."""
    root = tmp_path_factory.mktemp('rmmss')
    dcfg = DatasetConfig.load(_tiny_dataset_config(root))
    for split, seed in (('train', 1), ('val', 2)):
        _write_bag(root / 'bags' / split / 'scene0', frames=5, seed=seed)
        summary = build_cache([root / 'bags' / split / 'scene0'], root / 'cache' / split, dcfg)
        assert summary['built'] == 1 and summary['samples'] >= 4
    raw = yaml.safe_load(CONFIG.read_text())
    raw['out_root'] = str(root / 'runs')
    raw['data'].update(train_shards=[str(root / 'cache' / 'train' / '*')],
                       val_shards=[str(root / 'cache' / 'val' / '*')],
                       dataset_config=str(root / 'dataset.yaml'))
    cfg = root / 'rmmss.yaml'
    cfg.write_text(yaml.safe_dump(raw, sort_keys=False))
    return cfg


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / 'metrics.jsonl').read_text().splitlines()]


def test_smoke_pipeline_teacher_robust_fsm_evaluate_export(pipeline_config, capsys):
    from rmseg_ros.models.checkpoint import build_model, load_checkpoint
    from training.cli import main

    runs = pipeline_config.parent / 'runs'
    cfg = ['--config', str(pipeline_config), '--smoke']
    assert main(['teacher', *cfg]) == 0
    assert main(['robust', *cfg]) == 0
    assert main(['robust', *cfg, '--out', str(runs / 'baseline'), '--no-distill']) == 0
    assert main(['fsm', *cfg]) == 0
    for stage in ('teacher', 'robust', 'baseline', 'fsm'):
        records = _metrics(runs / stage)
        train = [r for r in records if r['split'] == 'train']
        assert [r['step'] for r in train] == [1, 2, 3, 4]
        assert any(r['split'] == 'val' and 'miou_RDLE' in r for r in records)
        assert (runs / stage / 'model.safetensors').exists()
        record = assert_thread_policy_applied(runs / stage)
        assert record['channels_last'] is True  # rmmss.yaml: channels-last, bf16 where native
    robust_logs = [r for r in _metrics(runs / 'robust') if r['split'] == 'train']
    assert all('pixel_kl' in r and 'proto_cross' in r for r in robust_logs)
    assert all('pixel_kl' not in r for r in _metrics(runs / 'baseline') if r['split'] == 'train')
    # the deployable student: FSM over the frozen teacher and robust model, their weights intact
    weights, meta = load_checkpoint(runs / 'fsm' / 'model.safetensors')
    assert meta['arch'] == 'fsm_student' and meta['classes'][0] == 'floor'
    assert (meta['frontend']['height'], meta['frontend']['width']) == (48, 64)
    t_weights, _ = load_checkpoint(runs / 'teacher' / 'model.safetensors')
    student = build_model(meta)
    student.load_state_dict(weights)
    teacher_name = next(n for n, m in student.named_modules()
                        if n and type(m).__name__ == 'FusionSegNet')
    for k, v in t_weights.items():
        if f'{teacher_name}.{k}' in weights:
            assert torch.equal(weights[f'{teacher_name}.{k}'], v)

    assert main(['evaluate', *cfg, '--out', str(runs / 'eval')]) == 0
    result = json.loads((runs / 'eval' / 'eval.json').read_text())
    assert set(result['emm']) == {'remove', 'zero'}
    assert len(result['emm']['remove']['subsets']) == 15
    assert len(result['rmm']['subsets']) == 14 and len(result['nm']['subsets']) == 14
    mious = [v['miou'] for v in result['emm']['remove']['subsets'].values()]
    assert result['emm']['remove']['mean_miou'] == pytest.approx(np.mean(mious), abs=1e-5)
    assert set(result['failures']) == {'motion_blur', 'over_exposure', 'under_exposure',
                                       'lidar_jitter', 'low_res_events'}
    md = (runs / 'eval' / 'eval.md').read_text()
    assert '| RDLE |' in md and 'remove' in md and 'zero' in md
    assert '## IoU per class' in md and '| floor |' in md
    # a quick evaluation: the all-modality case alone, its per-class table printed
    capsys.readouterr()
    assert main(['evaluate', *cfg, '--out', str(runs / 'eval_full'), '--cases', 'full']) == 0
    printed = capsys.readouterr().out
    quick = json.loads((runs / 'eval_full' / 'eval.json').read_text())
    assert quick['cases'] == ['full'] and 'emm' not in quick and 'rmm' not in quick
    assert quick['full'] == result['full']  # the same all-modality score as the full protocol
    assert '| class | RDLE |' in printed and '| duck |' in printed

    assert main(['export', *cfg, '--checkpoint', str(runs / 'fsm'),
                 '--out', str(runs / 'export' / 'student.safetensors')]) == 0
    exported, emeta = load_checkpoint(runs / 'export' / 'student.safetensors')
    assert emeta['train_config_hash'] == meta['train_config_hash']
    assert emeta['modalities'] == list(MODALITIES)
    assert exported.keys() == weights.keys()
    # what a node loads predicts what the evaluation scored
    from rmseg_ros.classes import ClassTable
    from rmseg_ros.inference.segmenter import Segmenter
    from training.evaluate import SUBSETS
    from training.export import load_model
    from training.rmmss.config import load_config, make_dataset

    seg = Segmenter.from_checkpoint(runs / 'export' / 'student.safetensors', device='cpu',
                                    expected_classes=ClassTable.load().names)
    cfg_obj, _ = load_config(pipeline_config, 'evaluate', smoke=True)
    sample = make_dataset(cfg_obj.data.val_shards, seg.frontend, augment=None,
                          labelled_only=True)[0]
    model, _ = load_model(runs / 'export' / 'student.safetensors')
    for names in (SUBSETS['RDLE'], SUBSETS['DL']):
        presence = torch.tensor([m in names for m in MODALITIES])
        labels, conf = seg.predict({m: sample[m].numpy() for m in names}, presence.numpy())
        assert labels.shape == (48, 64) and labels.dtype == np.uint8 and conf.max() <= 1.0
        with torch.no_grad():
            ref = model({m: sample[m][None] for m in MODALITIES}, presence).logits.argmax(1)[0]
        assert (torch.from_numpy(labels.astype(np.int64)) == ref).float().mean() > 0.99


def test_a_shard_pattern_that_matches_nothing_is_an_error(pipeline_config):
    """A forgotten cache (say `make data-extra`) must not silently shrink the training split."""
    from rmseg_ros.frontend.preprocess import FrontendConfig
    from training.rmmss.config import make_dataset

    cache = pipeline_config.parent / 'cache'
    frontend = FrontendConfig(width=64, height=48)
    ds = make_dataset([str(cache / 'train' / '*')], frontend, augment=None, labelled_only=True)
    assert len(ds) >= 4
    missing = str(cache / 'train_extra' / '*')
    with pytest.raises(FileNotFoundError, match='train_extra'):
        make_dataset([str(cache / 'train' / '*'), missing], frontend, augment=None,
                     labelled_only=True)


def _train_cmd(cfg: Path, out: Path, steps: int) -> list[str]:
    return [sys.executable, '-m', 'training.cli', 'teacher', '--config', str(cfg), '--smoke',
            '--out', str(out), '--steps', str(steps)]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join(p for p in (str(REPO), env.get('PYTHONPATH')) if p)
    env['OMP_NUM_THREADS'] = '1'
    return env


def test_truncated_recording_trains_from_its_complete_part(tmp_path):
    """A recording cut to half (a killed recorder): `dataset` caches the samples of its complete
    chunks and counts the cut, and the teacher trains on them."""
    from training.cli import main

    dataset_cfg = _tiny_dataset_config(tmp_path)
    bag = tmp_path / 'bags' / 'cut'
    _write_bag(bag, frames=24, seed=1)
    mcap = bag / 'cut.mcap'
    data = mcap.read_bytes()
    mcap.write_bytes(data[:len(data) // 2])
    cache = tmp_path / 'cache'
    assert main(['dataset', '--config', str(dataset_cfg), '--out', str(cache),
                 '--bags', str(bag)]) == 0
    meta = json.loads((cache / 'cut' / 'meta.json').read_text())
    assert 4 <= meta['count'] < 20
    raw = yaml.safe_load(CONFIG.read_text())
    raw['out_root'] = str(tmp_path / 'runs')
    raw['data'].update(train_shards=[str(cache / '*')], val_shards=[str(cache / '*')],
                       dataset_config=str(dataset_cfg))
    cfg = tmp_path / 'rmmss.yaml'
    cfg.write_text(yaml.safe_dump(raw, sort_keys=False))
    assert main(['teacher', '--config', str(cfg), '--smoke']) == 0
    train = [r for r in _metrics(tmp_path / 'runs' / 'teacher') if r['split'] == 'train']
    assert [r['step'] for r in train] == [1, 2, 3, 4]
    assert all(math.isfinite(r['loss']) for r in train)
    assert (tmp_path / 'runs' / 'teacher' / 'model.safetensors').exists()


def test_killed_training_resumes_from_its_last_checkpoint(pipeline_config, tmp_path):
    out, steps = tmp_path / 'teacher', 30
    proc = subprocess.Popen(_train_cmd(pipeline_config, out, steps), env=_env(), cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        # no race on the clock: wait for the first checkpoint (or the run's end, a failure);
        # the bound only stops a hung run from hanging the suite
        deadline = time.monotonic() + 900
        while not engine.list_checkpoints(out) and time.monotonic() < deadline:
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(0.02)
        assert engine.list_checkpoints(out), 'no checkpoint within 900 s'
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    saved = engine.list_checkpoints(out)
    for _, path in saved:  # whatever the moment of the kill, every checkpoint is whole
        engine.load_training_checkpoint(path)
    last = saved[0][0]
    assert last < steps
    done = subprocess.run(_train_cmd(pipeline_config, out, steps), env=_env(), cwd=REPO,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout[done.stdout.index('{'):])
    assert summary['step'] == steps and summary['resumed_from'] >= last
    _, _, meta = engine.latest_checkpoint(out)
    assert meta['step'] == steps
    train = [r['step'] for r in _metrics(out) if r['split'] == 'train']
    assert train == list(range(1, steps + 1))  # steps redone after the resume logged once
    assert not [p for p in (out / 'checkpoints').iterdir() if 'tmp' in p.name]


def test_torchrun_two_processes_gloo(pipeline_config, tmp_path):
    torchrun = [str(Path(sys.executable).parent / 'torchrun')]
    if not Path(torchrun[0]).exists():
        torchrun = [sys.executable, '-m', 'torch.distributed.run']
    out = tmp_path / 'ddp'
    cmd = [*torchrun, '--standalone', '--nproc_per_node', '2', '-m', 'training.cli', 'teacher',
           '--config', str(pipeline_config), '--smoke', '--out', str(out)]
    done = subprocess.run(cmd, env=_env(), cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    _, _, meta = engine.latest_checkpoint(out)
    assert meta['world_size'] == 2 and meta['step'] == 4
    assert len(meta['rng']) == 2  # each rank's RNG state, to resume each stream
    train = [r for r in _metrics(out) if r['split'] == 'train']
    assert [r['step'] for r in train] == [1, 2, 3, 4]  # rank 0 alone writes
    assert (out / 'model.safetensors').exists()
    shutil.rmtree(out)
