"""Any-modal fusion network, RMMSS FSM student, checkpoints and the Segmenter.

Small inputs (64x80) and tiny widths keep the file fast; the behaviours checked are the ones
the deployment relies on: any subset runs, a removed modality cannot leak into the output, the
frozen models of the FSM student never change, checkpoints round-trip exactly and refuse
foreign files, and the Segmenter's ONNX path and CUDA fallback give the torch CPU answer.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from rmseg_ros import atomic_files
from rmseg_ros.frontend.preprocess import FrontendConfig
from rmseg_ros.inference.segmenter import Segmenter
from rmseg_ros.modalities import MODALITIES, all_subsets, input_channels, presence_from_names
from rmseg_ros.models import checkpoint as ckpt
from rmseg_ros.models.checkpoint import (
    build_model,
    export_metadata,
    load_checkpoint,
    save_checkpoint,
)
from rmseg_ros.models.fsm import FSMConfig, FSMStudent, LogitSelector, StageSelector
from rmseg_ros.models.fusion import FusionConfig, FusionSegNet, masked_softmax, upsample

H, W, K = 64, 80, 5
CLASSES = [f'class{i}' for i in range(K)]
COLORS = [[10 * i, 20 * i, 30 * i] for i in range(K)]
TINY = {'widths': (8, 16, 24, 32), 'depths': (1, 1, 1, 1), 'decoder_dim': 16,
        'attention_heads': 2}


def _cfg(**kw) -> FusionConfig:
    return FusionConfig(num_classes=K, **{**TINY, **kw})


def _randomise(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Non-trivial BatchNorm statistics and gates, so outputs vary over pixels and classes."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.2)
        for name, p in model.named_parameters():
            if 'predictor.out' in name or name.endswith('fusions.0.bias'):
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
            elif 'classifier' in name:  # spread the logits: several classes win somewhere
                p.copy_(torch.randn(p.shape, generator=g) * (3.0 if p.dim() > 1 else 0.1))
    return model.eval()


def _calibrate(model: torch.nn.Module) -> torch.nn.Module:
    """Centre every classifier's logits on a reference input (data-dependent init), so that
    labels vary over the image instead of one class winning everywhere."""
    means: dict[str, torch.Tensor] = {}
    hooks = [m.register_forward_pre_hook(
        lambda _m, args, name=n: means.__setitem__(name, args[0].mean((0, 2, 3))))
        for n, m in model.named_modules() if n.endswith('classifier')]
    with torch.no_grad():
        model(_inputs(seed=99), torch.ones(4, dtype=torch.bool))
        for h in hooks:
            h.remove()
        for n, m in model.named_modules():
            if n in means:
                m.bias.copy_(-(m.weight[:, :, 0, 0] @ means[n]))
    return model


def _net(seed: int = 0, **kw) -> FusionSegNet:
    torch.manual_seed(seed)
    return _calibrate(_randomise(FusionSegNet(_cfg(**kw)), seed))


def _student(seed: int = 0, presence_gate: bool = False, **kw) -> FSMStudent:
    teacher, robust = _net(seed, **kw), _net(seed + 1, **kw)
    torch.manual_seed(seed + 2)
    cfg = FSMConfig(hidden=8, presence_gate=presence_gate)
    return _calibrate(_randomise(FSMStudent(teacher, robust, cfg), seed + 3))


def _inputs(batch: int = 1, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {m: torch.randn(batch, c, H, W, generator=g) for m, c in input_channels(5).items()}


def _presence(names) -> torch.Tensor:
    return torch.from_numpy(presence_from_names(names))


# ----------------------------------------------------------------------------- FusionSegNet

@pytest.mark.parametrize('shared', [True, False])
def test_forward_shapes_for_every_subset(shared):
    net = _net(shared_encoder=shared)
    x = _inputs(batch=2)
    with torch.no_grad():
        for subset in all_subsets():
            out = net({m: x[m] for m in subset}, _presence(subset))
            assert out.logits.shape == (2, K, H, W)
            assert out.decoder_features.shape == (2, TINY['decoder_dim'], H // 4, W // 4)
            for s, (width, feat) in enumerate(zip(TINY['widths'], out.features, strict=True)):
                stride = 4 * 2 ** s
                assert feat.shape == (2, width, H // stride, W // stride)
                assert set(out.modality_features[s]) == set(subset)
            assert torch.isfinite(out.logits).all()


def test_rgb_standardize_divides_out_a_light_gain():
    """With rgb_standardize the prediction does not change when the scene gets darker (every
    pixel of the camera image times 0.3 before the fixed normalisation); without it, it does."""
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    pixels = torch.rand(1, 3, H, W, generator=torch.Generator().manual_seed(3))
    lit, dark = (pixels - mean) / std, (0.3 * pixels - mean) / std
    pres = _presence(('rgb',))
    with torch.no_grad():
        for on in (True, False):
            net = _net(rgb_standardize=on).eval()
            a, b = net({'rgb': lit}, pres).logits, net({'rgb': dark}, pres).logits
            assert torch.allclose(a, b, atol=1e-3) == on
        # an all-zero image (the 'zero' missing mode) stays finite
        net = _net(rgb_standardize=True).eval()
        out = net({**_inputs(), 'rgb': torch.zeros(1, 3, H, W)}, torch.ones(4, dtype=torch.bool),
                  missing='zero').logits
        assert torch.isfinite(out).all()


def test_removed_modality_has_no_influence_but_a_zero_filled_one_has():
    net = _net()
    x = _inputs()
    subset = ('rgb', 'depth', 'event')
    pres = _presence(subset)
    with torch.no_grad():
        ref = net({m: x[m] for m in subset}, pres).logits  # lidar not even given
        for lidar in (torch.randn(1, 3, H, W) * 10, torch.full((1, 3, H, W), float('nan'))):
            out = net({**x, 'lidar': lidar}, pres).logits
            assert torch.equal(out, ref)
        # 'zero': the absent modality takes part in the fusion as a zero tensor ...
        zero = net({**x, 'lidar': torch.randn(1, 3, H, W)}, pres, missing='zero').logits
        fed_zeros = net({**x, 'lidar': torch.zeros(1, 3, H, W)}, torch.ones(4, dtype=torch.bool),
                        missing='zero').logits
        assert torch.allclose(zero, fed_zeros, atol=1e-5)
        # ... so it changes the result, unlike a removed one
        assert (zero - ref).abs().max() > 1e-3


def test_absent_modality_in_a_mixed_batch_cannot_leak():
    """Sample 1 lacks lidar while sample 0 has it: sample 1's lidar tensor must not matter."""
    net = _net()
    x = _inputs(batch=2)
    pres = torch.tensor([[True, True, True, False], [True, False, False, True]])
    with torch.no_grad():
        ref = net(x, pres).logits
        x2 = {m: t.clone() for m, t in x.items()}
        x2['lidar'][1] = float('nan')
        x2['depth'][1] = 1e3
        x2['event'][0] = -7.0
        out = net(x2, pres).logits
        assert torch.equal(out, ref)
        alone = net({m: x[m][1:] for m in ('rgb', 'event')}, pres[1]).logits
        assert torch.allclose(out[1:], alone, atol=1e-5)


def test_a_sample_without_any_modality_raises():
    net = _net()
    x = _inputs(batch=2)
    with pytest.raises(ValueError, match='at least one present modality'):
        net(x, torch.zeros(4, dtype=torch.bool))
    with pytest.raises(ValueError, match='at least one present modality'):
        net(x, torch.tensor([[True, False, False, False], [False] * 4]))
    with pytest.raises(ValueError, match='at least one present modality'):  # present, not given
        net({'rgb': x['rgb']}, _presence(['depth']))
    with pytest.raises(ValueError):
        net({}, torch.ones(4, dtype=torch.bool))
    with pytest.raises(ValueError, match='unknown modalities'):
        net({'thermal': x['rgb']}, torch.ones(4, dtype=torch.bool))


def test_masked_fusion_weights_sum_to_one_over_present_modalities():
    net = _net()
    x = _inputs(batch=3)
    pres = torch.tensor([[True, True, True, True], [True, False, True, False],
                         [False, False, False, True]])
    with torch.no_grad():
        out = net(x, pres)
    for stage in out.fusion_weights:
        total = sum(stage.values())
        assert torch.allclose(total, torch.ones_like(total), atol=1e-5)
        for m, w in stage.items():
            absent = ~pres[:, MODALITIES.index(m)]
            assert torch.all(w[absent] == 0)
            assert torch.all(w[~absent] > 0)
    # masked_softmax on its own: exact zeros, finite even with a single present entry
    scores = torch.randn(4, 2, 3)
    mask = torch.tensor([[1, 0, 0], [1, 1, 0], [0, 1, 1], [0, 0, 1]], dtype=torch.bool)
    w = masked_softmax(scores, mask.unsqueeze(1).expand(4, 2, 3), dim=0)
    assert torch.all(w[~mask.unsqueeze(1).expand(4, 2, 3)] == 0)
    assert torch.allclose(w.sum(0), torch.ones(2, 3))


def test_modality_absent_from_the_whole_batch_is_not_computed():
    net = _net()
    calls = []
    net.stems['lidar'].register_forward_hook(lambda *_: calls.append('lidar'))
    with torch.no_grad():
        net(_inputs(batch=2), _presence(['rgb', 'depth']))
    assert calls == []


def test_fused_batchnorm_gives_the_same_output():
    net = _net()
    x = _inputs()
    pres = _presence(['rgb', 'lidar'])
    with torch.no_grad():
        ref = net(x, pres).logits
        net.fuse_batchnorm()
        out = net(x, pres).logits
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    assert torch.allclose(out, ref, atol=1e-4)


# ----------------------------------------------------------------------------- FSM student

def _bn_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()
            if 'running' in k or 'num_batches' in k}


def test_fsm_student_trains_only_the_fsm():
    student = _student()
    student.train()
    assert not student.teacher.training and not student.robust.training
    assert student.fsm.training
    frozen = {id(p) for p in [*student.teacher.parameters(), *student.robust.parameters()]}
    trainable = student.trainable_parameters()
    assert trainable and not {id(p) for p in trainable} & frozen
    assert {id(p) for p in trainable} == {id(p) for p in student.fsm.parameters()}

    before = {k: v.clone() for k, v in student.state_dict().items()
              if k.startswith(('teacher.', 'robust.'))}
    bn_fsm_before = _bn_state(student.fsm)
    # every parameter handed to the optimizer, weight decay on: frozen ones must still not move
    opt = torch.optim.AdamW(student.parameters(), lr=0.05, weight_decay=0.1)
    x = _inputs(batch=2)
    labels = torch.randint(0, K, (2, H, W))
    for _ in range(2):
        out = student(x, _presence(['rgb', 'depth']))
        loss = torch.nn.functional.cross_entropy(out.logits, labels)
        opt.zero_grad()
        loss.backward()
        assert all(p.grad is None for p in [*student.teacher.parameters(),
                                            *student.robust.parameters()])
        assert all(p.grad is not None for p in trainable)
        opt.step()
    after = student.state_dict()
    for k, v in before.items():  # weights and BatchNorm statistics, bit for bit
        assert torch.equal(after[k], v), k
    # the FSM itself did train: its decoder's BatchNorm statistics moved in train mode
    moved = [k for k, v in _bn_state(student.fsm).items() if not torch.equal(v, bn_fsm_before[k])]
    assert moved
    assert set(student.state_dict()) >= {'fsm.classifier.weight'}
    assert all(k.split('.')[0] in ('teacher', 'robust', 'fsm') for k in student.state_dict())


def test_fsm_student_forward_for_every_subset_and_starts_near_robust():
    student = _student()
    x = _inputs()
    with torch.no_grad():
        for subset in all_subsets():
            out = student({m: x[m] for m in subset}, _presence(subset))
            assert out.logits.shape == (1, K, H, W)
            assert len(out.features) == 4 and len(out.extras['feature_selection']) == 4
            g = out.extras['logit_selection']
            assert torch.allclose(g.sum(1), torch.ones_like(g[:, 0]), atol=1e-5)
        with pytest.raises(ValueError):
            student(x, torch.zeros(4, dtype=torch.bool))
    fresh = FSMStudent(_net(0), _net(1), FSMConfig(init_bias=2.0)).eval()
    with torch.no_grad():
        out = fresh(x, torch.ones(4, dtype=torch.bool))
    w = torch.cat([f.flatten() for f in out.extras['feature_selection']])
    assert torch.allclose(w, torch.full_like(w, torch.sigmoid(torch.tensor(2.0)).item()))


def test_teacher_and_robust_must_match():
    with pytest.raises(ValueError, match='num_classes'):
        FSMStudent(FusionSegNet(_cfg()), FusionSegNet(FusionConfig(num_classes=K + 1, **TINY)))


def test_stage_selector_learns_to_pick_the_informative_source():
    """Type A: the teacher's features are wrong (its modality is missing: another pattern with a
    shifted mean) and the target is the robust feature; type B the other way round. Scores and
    gate together must learn to take the right source, and the gate must move the right way."""
    torch.manual_seed(0)
    sel = StageSelector(channels=4, hidden=16, init_bias=0.0)
    g = torch.Generator().manual_seed(1)

    def batch(kind: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        signal = torch.randn(8, 4, 6, 6, generator=g)
        wrong = torch.randn(8, 4, 6, 6, generator=g) + 2.0
        return (wrong, signal, signal) if kind == 'A' else (signal, wrong, signal)

    def robust_share(kind: str) -> tuple[float, float]:
        """(mean gate weight of the robust source, its mean share of the selected feature)"""
        with torch.no_grad():
            t, r, _ = batch(kind)
            a_t, a_r, w = sel.coefficients(t, r)
            return float(w.mean()), float((a_r / (a_t + a_r)).mean())

    assert robust_share('A') == pytest.approx((0.5, 0.5)) == robust_share('B')
    opt = torch.optim.Adam(sel.parameters(), lr=0.02)
    for step in range(60):
        t, r, target = batch('A' if step % 2 else 'B')
        loss = torch.nn.functional.mse_loss(sel(t, r)[0], target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    (gate_a, share_a), (gate_b, share_b) = robust_share('A'), robust_share('B')
    assert share_a > 0.85 and share_b < 0.15
    assert gate_a > gate_b + 0.1


def _fit(module: torch.nn.Module, steps: int, loss_at) -> None:
    """Adam (lr 0.02) on `module` for `steps` steps of `loss_at(step)`."""
    opt = torch.optim.Adam(module.parameters(), lr=0.02)
    for step in range(steps):
        loss = loss_at(step)
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.mark.parametrize('told', [False, True])
def test_stage_selector_told_the_subset_picks_the_seeing_source(told):
    """Both sources look alike (unit Gaussians); which one carries the target depends only on
    which sensors are present (A: the teacher's modality is missing, B: the robust model's
    information is). Without the presence vector no gate can tell A from B; with it, the
    selector learns to take the right source in each."""
    torch.manual_seed(0)
    sel = StageSelector(channels=4, hidden=16, init_bias=0.0, context=4 if told else 0)
    g = torch.Generator().manual_seed(1)
    pres = {'A': torch.tensor([1.0, 0.0, 1.0, 1.0]), 'B': torch.tensor([1.0, 1.0, 0.0, 0.0])}

    def batch(kind: str):
        signal = torch.randn(8, 4, 6, 6, generator=g)
        noise = torch.randn(8, 4, 6, 6, generator=g)
        ctx = pres[kind].expand(8, -1) if told else None
        return ((noise, signal) if kind == 'A' else (signal, noise)) + (signal, ctx)

    def robust_share(kind: str) -> float:
        with torch.no_grad():
            t, r, _, ctx = batch(kind)
            a_t, a_r, _ = sel.coefficients(t, r, ctx)
            return float((a_r / (a_t + a_r)).mean())

    def loss_at(step: int) -> torch.Tensor:
        t, r, target, ctx = batch('A' if step % 2 else 'B')
        return torch.nn.functional.mse_loss(sel(t, r, ctx)[0], target)

    _fit(sel, 80, loss_at)
    share_a, share_b = robust_share('A'), robust_share('B')
    if told:
        assert share_a > 0.85 and share_b < 0.15
    else:
        assert abs(share_a - share_b) < 0.1
    if told:
        with pytest.raises(ValueError, match='context'):
            sel(*batch('A')[:2])


def test_logit_selector_learns_to_trust_the_confident_correct_source():
    torch.manual_seed(0)
    sel = LogitSelector(num_classes=3, hidden=16, init_bias=0.0)
    g = torch.Generator().manual_seed(2)

    def batch(kind: str):
        labels = torch.randint(0, 3, (8, 5, 5), generator=g)
        good = torch.nn.functional.one_hot(labels, 3).permute(0, 3, 1, 2).float() * 4.0
        bad = 0.1 * torch.randn(8, 3, 5, 5, generator=g)
        decoded = 0.1 * torch.randn(8, 3, 5, 5, generator=g)
        return ((bad, good) if kind == 'A' else (good, bad)) + (decoded, labels)

    def loss_at(step: int) -> torch.Tensor:
        lt, lr, ld, labels = batch('A' if step % 2 else 'B')
        return torch.nn.functional.cross_entropy(sel(lt, lr, ld)[0], labels)

    _fit(sel, 60, loss_at)
    with torch.no_grad():
        lt, lr, ld, _ = batch('A')
        ga = sel(lt, lr, ld)[1].mean((0, 2, 3))
        lt, lr, ld, _ = batch('B')
        gb = sel(lt, lr, ld)[1].mean((0, 2, 3))
    assert ga[1] > 0.6 and ga[1] > ga[0]  # robust logits are the good ones in A
    assert gb[0] > 0.6 and gb[0] > gb[1]  # teacher logits in B


# ----------------------------------------------------------------------------- checkpoints

def _meta(model, arch: str) -> dict:
    return export_metadata(arch, model, CLASSES, COLORS, MODALITIES,
                           FrontendConfig(height=H, width=W), 'cafe', extra={'epoch': 3})


@pytest.mark.parametrize('arch', ['fusion', 'fsm_student', 'fsm_student_presence'])
def test_checkpoint_round_trip(tmp_path, arch):
    model = _net() if arch == 'fusion' else _student(presence_gate=arch.endswith('presence'))
    arch = arch.removesuffix('_presence')
    meta = _meta(model, arch)
    path = tmp_path / 'model.safetensors'
    save_checkpoint(path, model.state_dict(), meta)
    assert path.stat().st_mode & 0o777 == 0o644  # readable by the node's user, not only ours
    state, loaded = load_checkpoint(path)
    assert loaded == meta and loaded['format'] == ckpt.FORMAT
    assert loaded['input_hw'] == [H, W] and loaded['extra'] == {'epoch': 3}
    assert state.keys() == model.state_dict().keys()
    rebuilt = build_model(loaded)
    rebuilt.load_state_dict(state, strict=True)
    rebuilt.eval()
    if arch == 'fsm_student':
        assert {k.split('.')[0] for k in state} == {'teacher', 'robust', 'fsm'}
    x = _inputs(batch=2)
    pres = torch.tensor([[True, False, True, True], [False, True, False, False]])
    with torch.no_grad():
        assert torch.equal(rebuilt(x, pres).logits, model(x, pres).logits)


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / 'model.safetensors'
    model = _net()
    save_checkpoint(path, model.state_dict(), _meta(model, 'fusion'))
    good = path.read_bytes()

    def crash(tmp):  # the temporary file is written, the rename fails
        raise OSError('disk full')

    monkeypatch.setattr(atomic_files, 'before_replace', crash)
    with pytest.raises(OSError, match='disk full'):
        save_checkpoint(path, model.state_dict(), _meta(model, 'fusion'))
    assert path.read_bytes() == good  # the previous checkpoint survives
    assert sorted(os.listdir(tmp_path)) == ['model.safetensors']  # no temporary left behind
    with pytest.raises(OSError):
        save_checkpoint(tmp_path / 'new.safetensors', model.state_dict(), _meta(model, 'fusion'))
    assert sorted(os.listdir(tmp_path)) == ['model.safetensors']


def test_foreign_files_are_refused(tmp_path):
    junk = tmp_path / 'junk.safetensors'
    junk.write_bytes(os.urandom(256))
    with pytest.raises(ValueError, match='not a safetensors checkpoint'):
        load_checkpoint(junk)
    other = tmp_path / 'other.safetensors'
    save_file({'w': torch.zeros(2)}, str(other), metadata={'framework': 'x'})
    with pytest.raises(ValueError, match='without rmseg metadata'):
        load_checkpoint(other)
    future = tmp_path / 'future.safetensors'
    save_checkpoint(future, {'w': torch.zeros(2)}, {'format': ckpt.FORMAT + 1, 'arch': 'fusion'})
    with pytest.raises(ValueError, match='format'):
        load_checkpoint(future)
    with pytest.raises(ValueError, match='unknown architecture'):
        build_model({'arch': 'resnet', 'model': {}})
    with pytest.raises(ValueError, match='classes'):
        export_metadata('fusion', _cfg(), CLASSES[:-1], COLORS[:-1], MODALITIES,
                        FrontendConfig(), 'x')


# ----------------------------------------------------------------------------- Segmenter

@pytest.fixture(scope='module')
def student_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp('ckpt') / 'student.safetensors'
    # as shipped (training/configs/rmmss.yaml)
    model = _student(seed=5, presence_gate=True, rgb_standardize=True)
    save_checkpoint(path, model.state_dict(), _meta(model, 'fsm_student'))
    return path


def _np_inputs(seed: int = 0) -> dict[str, np.ndarray]:
    return {m: t[0].numpy() for m, t in _inputs(seed=seed).items()}


def test_segmenter_cpu_predict(student_checkpoint):
    seg = Segmenter.from_checkpoint(student_checkpoint, device='cpu')
    assert seg.device == 'cpu' and seg.classes == tuple(CLASSES)
    assert seg.frontend.hw == (H, W)
    x = _np_inputs()
    labels, conf = seg.predict(x, np.array([True, False, True, True]))
    assert labels.dtype == np.uint8 and labels.shape == (H, W)
    assert conf.dtype == np.float32 and conf.shape == (H, W)
    assert labels.max() < K and len(np.unique(labels)) >= 3
    assert np.all(conf >= 1.0 / K - 1e-6) and np.all(conf <= 1.0 + 1e-6)
    # same answer as the checkpoint's model run directly, and presence by names works
    model, _ = ckpt.load_model(student_checkpoint)
    with torch.no_grad():
        sub = ('rgb', 'lidar', 'event')
        low = model({m: torch.from_numpy(x[m])[None] for m in sub}, _presence(sub),
                    upsample=False).logits
    # labels: argmax of the bilinearly upsampled logits; confidence: the stride-4 max softmax
    # probability, upsampled
    ref_labels = upsample(low, (H, W)).argmax(dim=1)[0].numpy()
    ref_conf = upsample(torch.softmax(low, dim=1).amax(dim=1, keepdim=True), (H, W))[0, 0]
    assert np.mean(labels != ref_labels) < 1e-3
    assert np.allclose(conf, ref_conf.numpy(), atol=1e-4)
    by_name, _ = seg.predict(x, ['lidar', 'rgb', 'event'])
    assert np.array_equal(by_name, labels)
    with pytest.raises(ValueError, match='no tensor'):
        seg.predict({'rgb': x['rgb']}, ['rgb', 'depth'])
    with pytest.raises(ValueError, match='expected'):
        seg.predict({'rgb': x['rgb'][:2]}, ['rgb'])


def test_segmenter_refuses_other_classes_or_modalities(student_checkpoint):
    other = ['floor', 'wall', 'robot', 'person', 'object']
    with pytest.raises(ValueError) as err:
        Segmenter.from_checkpoint(student_checkpoint, device='cpu', expected_classes=other)
    assert str(CLASSES) in str(err.value) and str(other) in str(err.value)
    with pytest.raises(ValueError, match='modalities'):
        Segmenter.from_checkpoint(student_checkpoint, device='cpu',
                                  expected_modalities=['rgb', 'depth'])
    seg = Segmenter.from_checkpoint(student_checkpoint, device='cpu', expected_classes=CLASSES,
                                    expected_modalities=list(reversed(MODALITIES)))
    assert seg.modalities == MODALITIES


def test_onnx_backend_matches_torch(student_checkpoint, tmp_path):
    torch_seg = Segmenter.from_checkpoint(student_checkpoint, device='cpu')
    onnx_seg = Segmenter.from_checkpoint(student_checkpoint, backend='onnx', cache_dir=tmp_path)
    assert onnx_seg.onnx_path.is_file() and onnx_seg.onnx_path.parent == tmp_path
    x = _np_inputs(seed=3)
    for subset in [('rgb',), ('depth', 'event'), ('rgb', 'lidar', 'event'), MODALITIES]:
        a, ca = torch_seg.predict(x, subset)
        b, cb = onnx_seg.predict(x, subset)
        assert b.dtype == np.uint8 and b.shape == (H, W)
        assert np.mean(a != b) < 0.005, subset
        assert np.abs(ca - cb).max() < 1e-3
    # the cached export is reused, not rewritten
    mtime = onnx_seg.onnx_path.stat().st_mtime_ns
    again = Segmenter.from_checkpoint(student_checkpoint, backend='onnx', cache_dir=tmp_path)
    assert again.onnx_path == onnx_seg.onnx_path
    assert again.onnx_path.stat().st_mtime_ns == mtime


def test_cuda_failure_falls_back_to_cpu_for_good(student_checkpoint, caplog):
    seg = Segmenter.from_checkpoint(student_checkpoint, device='cpu')
    x = _np_inputs(seed=4)
    expected = seg.predict(x, MODALITIES)
    seg.device = 'cuda'  # as if it had been placed on a GPU that then fails
    calls = []
    real_forward = seg._forward

    def flaky(used, *args):
        calls.append(seg.device)
        if seg.device == 'cuda':
            raise torch.cuda.OutOfMemoryError('CUDA out of memory. Tried to allocate 2.00 GiB')
        return real_forward(used, *args)

    seg._forward = flaky
    with caplog.at_level(logging.WARNING, logger='rmseg_ros.inference.segmenter'):
        labels, conf = seg.predict(x, MODALITIES)
    assert calls == ['cuda', 'cpu'] and seg.device == 'cpu'
    assert 'falling back to the CPU' in caplog.text
    assert np.array_equal(labels, expected[0]) and np.allclose(conf, expected[1])
    assert all(p.device.type == 'cpu' for p in seg.model.parameters())
    seg.predict(x, MODALITIES)
    assert calls == ['cuda', 'cpu', 'cpu']  # permanent: no further CUDA attempt

    # an error that is not a CUDA failure is not hidden by the fallback
    seg.device = 'cuda'
    seg._forward = lambda used, *args: (_ for _ in ()).throw(ValueError('bad input'))
    with pytest.raises(ValueError, match='bad input'):
        seg.predict(x, MODALITIES)


def test_cuda_request_without_cuda_uses_cpu(student_checkpoint, caplog):
    with caplog.at_level(logging.WARNING, logger='rmseg_ros.inference.segmenter'):
        seg = Segmenter.from_checkpoint(student_checkpoint, device='cuda')
    if torch.cuda.is_available():
        assert seg.device == 'cuda'
    else:
        assert seg.device == 'cpu' and 'not available' in caplog.text
    auto = Segmenter.from_checkpoint(student_checkpoint, device='auto')
    assert auto.device == ('cuda' if torch.cuda.is_available() else 'cpu')
    with pytest.raises(ValueError, match='device'):
        Segmenter.from_checkpoint(student_checkpoint, device='tpu')
