"""Robult: soft-PU contrastive and latent reconstruction losses, region latents, the seeded
labelled fraction (unlabelled frames never reach a supervised loss), `rmseg-train robult`
and the `robult:` switch of the RMMSS robust stage on a small cache written here, the
experiment plan and the results report."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from training_checks import assert_thread_policy_applied

from rmseg_ros.frontend.preprocess import FrontendConfig, ModelInput
from rmseg_ros.modalities import INDEX, MODALITIES, input_channels
from rmseg_ros.models.fusion import FusionConfig, FusionSegNet
from training.data.bag_samples import Sample
from training.data.dataset import ShardDataset
from training.data.shards import write_shard
from training.engine import StepContext
from training.rmmss.config import DropoutConfig, LossConfig
from training.rmmss.stages import robust_loss
from training.robult.config import RobultLossConfig, load_config
from training.robult.data import (
    SemiSupervisedSet,
    collate_groups,
    downscale_sample,
    frame_keys,
    select_labelled,
    select_labelled_recordings,
)
from training.robult.latents import Reconstructor, RobultModel, cell_classes, frozen_bn_stats
from training.robult.losses import (
    anchor_index,
    latent_reconstruction_loss,
    pair_masks,
    rbf_weights,
    soft_pu_contrastive,
    supervised_loss,
)

REPO = Path(__file__).resolve().parents[1]
H, W = 48, 64


# ----------------------------------------------------------------------------- soft weights

def test_rbf_weights_in_unit_interval_one_at_zero_and_monotone_in_distance():
    torch.manual_seed(0)
    anchor = torch.randn(1, 8)
    direction = torch.nn.functional.normalize(torch.randn(1, 8), dim=1)
    steps = torch.linspace(0, 5, 50)[:, None]
    points = anchor + steps * direction  # distance to the anchor grows along the list
    for sigma in (0.1, 0.5, 2.0):
        w = rbf_weights(anchor, points, sigma)[0]
        assert w[0].item() == pytest.approx(1.0, abs=1e-5)
        assert bool(((w >= 0) & (w <= 1)).all())
        assert bool((w[1:] <= w[:-1] + 1e-7).all())  # non-increasing with the distance
        assert w[-1].item() < w[0].item()
        # the kernel is the RBF of the distance, whatever the points
        other = torch.randn(20, 8)
        d = torch.cdist(anchor, other)[0]
        assert torch.allclose(rbf_weights(anchor, other, sigma)[0],
                              torch.exp(-d ** 2 / (2 * sigma ** 2)), atol=1e-5)


# ----------------------------------------------------------------------------- soft PU loss

def _unit(*shape: int) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.randn(*shape), dim=-1)


def test_pu_loss_zero_without_negatives_and_minimal_for_aligned_positives():
    torch.manual_seed(1)
    z = _unit(4, 16)
    allpos = torch.ones(4, 4, dtype=torch.bool)
    none = torch.zeros(4, 4, dtype=torch.bool)
    lab, unl, _ = soft_pu_contrastive(z, z.clone(), allpos, none, 0.1, 0.5)
    assert lab.item() == pytest.approx(0.0, abs=1e-6) and unl.item() == 0.0

    # positives on the diagonal, every other pair a known negative: identical positives and
    # orthogonal negatives give a loss near 0 at a low temperature ...
    eye = torch.eye(4, dtype=torch.bool)
    basis = torch.eye(4, 16)
    low, _, _ = soft_pu_contrastive(basis, basis.clone(), eye, ~eye, 0.05, 0.5)
    assert low.item() < 1e-6
    # ... the analytic value log(1 + 3 e^{-1/tau}) at any temperature ...
    tau = 0.5
    val, _, _ = soft_pu_contrastive(basis, basis.clone(), eye, ~eye, tau, 0.5)
    assert val.item() == pytest.approx(math.log(1 + 3 * math.exp(-1 / tau)), rel=1e-5)
    # ... and any rotation of the anchors away from their positives costs more
    for eps in (0.2, 0.5, 1.0):
        moved = basis + eps * _unit(4, 16)
        worse, _, _ = soft_pu_contrastive(moved, basis, eye, ~eye, tau, 0.5)
        assert worse.item() > val.item()


def test_soft_pairs_are_weighted_not_plain_negatives():
    torch.manual_seed(2)
    anchor = _unit(1, 16)
    twin = torch.nn.functional.normalize(anchor + 0.05 * torch.randn(1, 16), dim=1)
    far = -anchor
    cands = torch.cat([anchor, twin, far])  # own region (positive), a near twin, a far one
    pos = torch.tensor([[True, False, False]])
    # treating the unlabelled twin as a negative penalises the aligned pair ...
    as_negative, _, _ = soft_pu_contrastive(anchor, cands, pos, ~pos, 0.2, 0.5)
    # ... a soft pair with an RBF weight near 1 hardly counts as a negative
    soft_lab, soft_unl, stats = soft_pu_contrastive(anchor, cands, pos,
                                                    torch.zeros_like(pos), 0.2, 0.5)
    assert soft_lab.item() < 0.5 * as_negative.item()
    assert 0.0 <= stats['pu_soft_weight'] <= 1.0
    # the unlabelled term pulls the twin (weight near 1), the far candidate barely counts
    w = rbf_weights(anchor, cands, 0.5)[0]
    assert w[1] > 0.9 and w[2] < 1e-3
    assert soft_unl.item() > 0
    # gradients reach both sides of the pairs
    a = anchor.clone().requires_grad_(True)
    c = cands.clone().requires_grad_(True)
    lab, unl, _ = soft_pu_contrastive(a, c, pos, torch.zeros_like(pos), 0.2, 0.5)
    (lab + unl).backward()
    assert a.grad.abs().sum() > 0 and c.grad.abs().sum() > 0


def test_pair_masks_follow_regions_classes_and_labels():
    # 2 frames x 2 cells; frame 0 labelled (cells: class 3, class 5), frame 1 unlabelled (-1)
    cls = torch.tensor([[3, 5], [-1, -1]])
    present = torch.tensor([[True, False, True, False], [True, True, False, False]])
    index = anchor_index(present, 2)
    assert len(index) == 4 * 2  # 4 present (frame, modality) rows x 2 cells
    pos, neg = pair_masks(index, cls)
    assert not bool((pos & neg).any())
    for (f, _m, c), p_row, n_row in zip(index.tolist(), pos, neg, strict=True):
        own = f * 2 + c
        assert p_row[own]  # the same region of the same frame: a known positive
        for j in range(4):
            fj, cj = divmod(j, 2)
            if j == own:
                continue
            if f == 0 and fj == 0:  # labelled vs labelled: class decides
                assert bool(p_row[j]) == (cls[0, c] == cls[0, cj])
                assert bool(n_row[j]) == (cls[0, c] != cls[0, cj])
            else:  # an unlabelled region is involved: soft (neither)
                assert not p_row[j] and not n_row[j]
    # at most max_anchors anchors, drawn reproducibly
    g1 = anchor_index(present, 2, 3, torch.Generator().manual_seed(5))
    g2 = anchor_index(present, 2, 3, torch.Generator().manual_seed(5))
    assert len(g1) == 3 and torch.equal(g1, g2)


def test_cell_classes_need_purity_and_labels():
    labels = torch.full((2, 8, 8), 255)
    labels[0, :, :4] = 1  # left half class 1
    labels[0, :4, 4:] = 2  # top right class 2
    labels[0, 4:, 4:6] = 2  # bottom right mixed 2 / 4
    labels[0, 4:, 6:] = 4
    cls = cell_classes(labels, (2, 2), num_classes=5, min_purity=0.6)
    assert cls[0].tolist() == [1, 2, 1, -1]  # the mixed cell has no class
    assert cls[1].tolist() == [-1, -1, -1, -1]  # an unlabelled frame has none
    assert cell_classes(labels, (2, 2), 5, min_purity=0.5)[0].tolist() == [1, 2, 1, 2]


# ----------------------------------------------------------------------------- reconstruction

def test_reconstruction_loss_zero_for_identical_and_learns_a_recoverable_latent():
    torch.manual_seed(3)
    b, m, d, g = 6, 4, 8, 5
    target = torch.randn(b, m, d, g)
    mask = torch.ones(b, m, dtype=torch.bool)
    assert latent_reconstruction_loss(target.clone(), target, mask).item() == pytest.approx(
        0.0, abs=1e-6)
    assert latent_reconstruction_loss(-target, target, mask).item() == pytest.approx(2.0,
                                                                                     abs=1e-5)
    # the target is detached: gradient reaches the reconstruction only
    t = target.clone().requires_grad_(True)
    r = torch.randn(b, m, d, g, requires_grad=True)
    latent_reconstruction_loss(r, t, mask).backward()
    assert t.grad is None and r.grad.abs().sum() > 0

    # each modality's latent is an exact (linear) function of the shared latent: the
    # reconstructor, trained on it, brings the loss to ~0, also for absent modalities
    shared = torch.randn(32, d, g)
    maps = torch.randn(m, d, d)
    latents = torch.einsum('mij,bjg->bmig', maps, shared)
    present = torch.rand(32, m) > 0.5
    model = Reconstructor(d, 64)
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    full = torch.ones(32, m, dtype=torch.bool)
    start = latent_reconstruction_loss(model(shared, latents, present), latents, full).item()
    for _ in range(300):
        loss = latent_reconstruction_loss(model(shared, latents, present), latents, full)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert start > 0.5 and loss.item() < 0.01
    missing = ~present
    assert latent_reconstruction_loss(model(shared, latents, present), latents,
                                      missing).item() < 0.01


def test_reconstructor_reads_only_the_other_modalities():
    torch.manual_seed(4)
    rec = Reconstructor(4, 8)
    shared = torch.randn(2, 4, 3)
    lat = torch.randn(2, 4, 4, 3)
    present = torch.ones(2, 4, dtype=torch.bool)
    base = rec(shared, lat, present)
    changed = lat.clone()
    changed[:, 1] += 5.0  # modality 1's own latent must not leak into its reconstruction
    out = rec(shared, changed, present)
    assert torch.allclose(out[:, 1], base[:, 1], atol=1e-6)
    assert not torch.allclose(out[:, 0], base[:, 0])
    # an absent modality contributes nothing to the others' reconstructions
    absent = present.clone()
    absent[:, 2] = False
    junk = lat.clone()
    junk[:, 2] = 1e3
    assert torch.allclose(rec(shared, junk, absent), rec(shared, lat, absent), atol=1e-5)


# ----------------------------------------------------------------------------- the model wrapper

def _tiny_net(k: int = 5) -> FusionSegNet:
    return FusionSegNet(FusionConfig(num_classes=k, widths=(8, 16, 16, 16), depths=(1, 1, 1, 1),
                                     decoder_dim=8, attention_heads=2))


def _batch(b: int, hw=(32, 48), seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ch = input_channels(5)
    batch = {m: torch.randn(b, ch[m], *hw, generator=g) for m in MODALITIES}
    labels = torch.zeros(b, *hw, dtype=torch.long)
    labels[:, :, hw[1] // 2:] = 1
    labels[:, : hw[0] // 2] += 2
    batch.update(presence=torch.ones(b, 4, dtype=torch.bool), labels=labels,
                 labelled=torch.arange(b) < b // 2, index=torch.arange(b))
    return batch


def test_robult_model_latents_imputation_targets_and_frozen_bn():
    torch.manual_seed(5)
    cfg = RobultLossConfig(enabled=True, stage=2, grid=(2, 3), dim=8, hidden=8)
    model = RobultModel(_tiny_net(), cfg).train()
    batch = _batch(4)
    inputs = {m: batch[m] for m in MODALITIES}
    presence = torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [1, 1, 1, 1]]).bool()
    bn = [m for m in model.net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    out = model(inputs, presence, full_presence=batch['presence'])
    lat = out.extras['robult']
    assert lat.modality.shape == (4, 4, 8, 6) and lat.shared.shape == (4, 8, 6)
    assert torch.equal(lat.present, presence) and bool(lat.target_valid.all())
    assert bool((lat.modality[~presence] == 0).all())  # absent modalities have no latent
    assert lat.recon.requires_grad and not lat.target.requires_grad
    # the dropped modalities' targets are their latents from a pass that had them: in eval mode
    # (running BN statistics, so batch composition does not matter) they match exactly
    model.eval()
    with torch.no_grad():
        _, mod_feats = model.net.encode(inputs, batch['presence'])
        full = {m: model.embed(mod_feats[cfg.stage][m]) for m in MODALITIES}
        ev = model.latents(model.net(inputs, presence), inputs, presence, batch['presence'])
    for b in range(len(presence)):
        for m in MODALITIES:
            assert torch.allclose(ev.target[b, INDEX[m]], full[m][b], atol=1e-5), (b, m)
    assert 'robult' not in model(inputs, presence).extras  # eval: the plain network
    # the extra pass leaves the BatchNorm running statistics alone
    model.train()
    before = [m.running_mean.clone() for m in bn]
    with torch.no_grad(), frozen_bn_stats(model.net):
        model.net.encode(inputs, batch['presence'])
    assert all(torch.equal(a, m.running_mean) for a, m in zip(before, bn, strict=True))
    assert all(m.momentum == 0.1 for m in bn)  # restored


def test_separate_unlabelled_forward_gives_each_group_its_own_batch_statistics():
    from training.robult.split_forward import forward_in_groups, labelled_first

    torch.manual_seed(6)
    cfg = RobultLossConfig(enabled=True, stage=2, grid=(2, 3), dim=8, hidden=8)
    model = RobultModel(_tiny_net(), cfg).train()
    for m in model.modules():  # BatchNorm stays in train mode; dropout would mask the check
        if isinstance(m, torch.nn.Dropout2d):
            m.eval()
    batch = _batch(6)
    batch['labelled'] = torch.tensor([False, True, False, True, True, False])
    ordered = labelled_first(batch)
    assert ordered['labelled'].tolist() == [True] * 3 + [False] * 3
    assert ordered['index'].tolist() == [1, 3, 4, 0, 2, 5]  # stable inside each group
    assert torch.equal(ordered['rgb'][0], batch['rgb'][1])
    inputs = {m: ordered[m] for m in MODALITIES}
    # the unlabelled group has no RGB at all: its per-modality dicts lack the key
    presence = torch.ones(6, 4, dtype=torch.bool)
    presence[3:, INDEX['rgb']] = False
    with torch.no_grad(), frozen_bn_stats(model.net):
        split = forward_in_groups(model, inputs, presence, ordered['presence'], 3)
        alone = model({m: t[:3] for m, t in inputs.items()}, presence[:3],
                      full_presence=ordered['presence'][:3])
        joint = model(inputs, presence, full_presence=ordered['presence'])
    # the labelled frames come out exactly as in a batch of their own, unlike in the joint one
    assert split.logits.shape == joint.logits.shape == (6, 5, 32, 48)
    assert torch.allclose(split.logits[:3], alone.logits, atol=1e-5)
    assert not torch.allclose(joint.logits[:3], alone.logits, atol=1e-3)
    lat = split.extras['robult']
    assert lat.modality.shape == (6, 4, 8, 6) and lat.grid == (2, 3)
    rgb = split.modality_features[0]['rgb']
    assert rgb.shape[0] == 6 and bool((rgb[3:] == 0).all()) and bool(rgb[:3].abs().sum() > 0)
    # one group empty: a single ordinary pass
    with torch.no_grad(), frozen_bn_stats(model.net):
        whole = forward_in_groups(model, inputs, presence, ordered['presence'], 6)
    assert torch.allclose(whole.logits, joint.logits, atol=1e-6)


# ----------------------------------------------------------------------------- labels

def test_labelled_selection_is_seeded_sized_nested_and_respects_recorded_labels():
    shards = [f's{i // 30}' for i in range(300)]
    frames = [i % 30 for i in range(300)]
    eligible = np.ones(300, bool)
    eligible[::7] = False  # frames the recording did not label
    keys = frame_keys(shards, frames, seed=0)
    assert np.array_equal(keys, frame_keys(shards, frames, seed=0))
    sel10 = select_labelled(keys, eligible, 0.1)
    sel50 = select_labelled(keys, eligible, 0.5)
    assert sel10.sum() == round(0.1 * eligible.sum()) and sel50.sum() == round(0.5 * eligible.sum())
    assert not (sel10 & ~eligible).any()
    assert not (sel10 & ~sel50).any()  # 10% of the frames are among the 50%
    other = select_labelled(frame_keys(shards, frames, seed=1), eligible, 0.1)
    assert (other != sel10).any()
    # the selection follows the frames, not their position in the list
    perm = np.random.default_rng(0).permutation(300)
    moved = select_labelled(frame_keys([shards[i] for i in perm], [frames[i] for i in perm], 0),
                            eligible[perm], 0.1)
    assert np.array_equal(moved, sel10[perm])
    assert select_labelled(keys, eligible, 0.0).sum() == 0
    assert select_labelled(keys, eligible, 1e-6).sum() == 1
    with pytest.raises(ValueError):
        select_labelled(keys, eligible, 1.5)


def test_recording_selection_labels_whole_recordings_seeded_and_nested():
    shards = [f's{i // 30}' for i in range(300)]  # 10 recordings of 30 frames
    eligible = np.ones(300, bool)
    eligible[::7] = False
    eligible[270:] = False  # s9 labelled nothing: it cannot be chosen
    sel20 = select_labelled_recordings(shards, eligible, 0.2, seed=0)
    sel50 = select_labelled_recordings(shards, eligible, 0.5, seed=0)
    chosen = sorted({shards[i] for i in np.flatnonzero(sel20)})
    assert len(chosen) == round(0.2 * 9)
    for name in chosen:  # a chosen recording keeps every label it has, nothing else
        idx = [i for i, s in enumerate(shards) if s == name]
        assert np.array_equal(sel20[idx], eligible[idx])
    assert not (sel20 & ~eligible).any()
    assert not (sel20 & ~sel50).any()
    assert len({shards[i] for i in np.flatnonzero(sel50)}) == round(0.5 * 9)
    assert np.array_equal(sel20, select_labelled_recordings(shards, eligible, 0.2, seed=0))
    others = [sorted({shards[i] for i in np.flatnonzero(
        select_labelled_recordings(shards, eligible, 0.2, seed=s))}) for s in range(1, 6)]
    assert any(o != chosen for o in others)
    assert select_labelled_recordings(shards, eligible, 1e-6, seed=0).sum() > 0
    assert select_labelled_recordings(shards, eligible, 0.0, seed=0).sum() == 0
    with pytest.raises(ValueError):
        select_labelled_recordings(shards, eligible, -0.1, seed=0)


def test_unlabelled_frames_never_reach_the_supervised_loss():
    torch.manual_seed(6)
    lc = LossConfig(ohem_thresh=0.7, ohem_min_kept_fraction=1.0)
    logits = torch.randn(4, 3, 6, 6, requires_grad=True)
    labels = torch.randint(0, 3, (4, 6, 6))  # valid labels on every frame
    labelled = torch.tensor([True, False, True, False])
    loss = supervised_loss(logits, labels, labelled, lc)
    loss.backward()
    assert logits.grad[~labelled].abs().sum() == 0 and logits.grad[labelled].abs().sum() > 0
    other = labels.clone()
    other[~labelled] = (other[~labelled] + 1) % 3
    assert supervised_loss(logits, other, labelled, lc).item() == loss.item()

    # the whole training loss (RMMSS robust loss + Robult): the labels an unlabelled frame
    # carries change nothing
    cfg = RobultLossConfig(enabled=True, grid=(2, 3), dim=8, hidden=8)
    model = RobultModel(_tiny_net(4), cfg).train()
    batch = _batch(4, seed=1)
    loss_fn = robust_loss(lc, DropoutConfig(probability=1.0), None, 4, cfg)

    def value(b):
        torch.manual_seed(0)  # the decoder's Dropout2d draws from the global generator
        ctx = StepContext(1, 0, torch.Generator().manual_seed(3), torch.device('cpu'), model)
        total, logs = loss_fn(model, b, ctx)
        return total.item(), logs

    first, logs = value(batch)
    flipped = dict(batch)
    flipped['labels'] = batch['labels'].clone()
    flipped['labels'][~batch['labelled']] = 3 - flipped['labels'][~batch['labelled']]
    assert value(flipped)[0] == first
    relabelled = dict(batch)
    relabelled['labels'] = batch['labels'].clone()
    relabelled['labels'][batch['labelled']] = 3 - relabelled['labels'][batch['labelled']]
    assert value(relabelled)[0] != first  # (the labelled frames' labels do count)
    assert {'pu_labelled', 'pu_unlabelled', 'recon', 'recon_missing'} <= set(logs)


# ----------------------------------------------------------------------------- a small cache

def _frame(rng: np.random.Generator, stamp: int) -> Sample:
    labels = np.zeros((H, W), np.uint8)
    labels[:, W // 2:] = 1
    labels[: H // 3, :] = 2
    labels[rng.integers(0, H - 8):, rng.integers(0, W - 8):][:8, :8] = 3
    rgb = (labels[..., None] * 50 + rng.integers(0, 40, (H, W, 3))).astype(np.uint8)
    ch = input_channels(5)
    tensors = {'rgb': np.zeros((3, H, W), np.float32),
               'depth': np.stack([labels / 4.0, np.ones((H, W))]).astype(np.float32),
               'lidar': rng.uniform(0, 1, (ch['lidar'], H, W)).astype(np.float32),
               'event': rng.uniform(-1, 1, (ch['event'], H, W)).astype(np.float32)}
    mi = ModelInput(stamp, tensors, np.ones(4, bool), {}, overlay_rgb=rgb)
    return Sample(mi, labels, np.zeros((H, W), np.uint8), labelled=True)


@pytest.fixture(scope='module')
def robult_config(tmp_path_factory) -> Path:
    """Train / val / test shards at 48x64 and robult + rmmss configs pointing at them."""
    root = tmp_path_factory.mktemp('robult')
    frontend = yaml.safe_load((REPO / 'config' / 'perception.yaml').read_text())
    frontend['frontend'].update(height=H, width=W)
    (root / 'perception.yaml').write_text(yaml.safe_dump(frontend))
    dataset = yaml.safe_load((REPO / 'training' / 'configs' / 'dataset.yaml').read_text())
    dataset['frontend_config'] = str(root / 'perception.yaml')
    (root / 'dataset.yaml').write_text(yaml.safe_dump(dataset))
    fe = FrontendConfig(height=H, width=W)
    rng = np.random.default_rng(0)
    for split, scenes in (('train', 2), ('val', 1), ('test', 1)):
        for s in range(scenes):
            n = write_shard([_frame(rng, 10 ** 9 + i) for i in range(10)],
                            root / 'cache' / split / f'scene{s}', fe)
            assert n == 10
    data = {'train_shards': [str(root / 'cache' / 'train' / '*')],
            'val_shards': [str(root / 'cache' / 'val' / '*')],
            'dataset_config': str(root / 'dataset.yaml')}
    raw = yaml.safe_load((REPO / 'training' / 'configs' / 'robult.yaml').read_text())
    raw['out_root'] = str(root / 'runs')
    raw['data'].update(data, label_fraction=0.3)
    raw['evaluate']['shards'] = [str(root / 'cache' / 'test' / '*')]
    (root / 'robult.yaml').write_text(yaml.safe_dump(raw, sort_keys=False))
    rm = yaml.safe_load((REPO / 'training' / 'configs' / 'rmmss.yaml').read_text())
    rm['out_root'] = str(root / 'rmmss')
    rm['data'].update(data)
    (root / 'rmmss.yaml').write_text(yaml.safe_dump(rm, sort_keys=False))
    return root


def test_semi_supervised_set_masks_labels_and_keeps_labelled_batches(robult_config):
    fe = FrontendConfig(height=H, width=W)
    dirs = sorted((robult_config / 'cache' / 'train').iterdir())
    base = ShardDataset(dirs, fe, None, seed=0, labelled_only=False)
    semi = SemiSupervisedSet(base, 0.3, seed=0, unlabelled_per_labelled=2, downscale=2)
    sup = SemiSupervisedSet(base, 0.3, seed=0, unlabelled_per_labelled=0, downscale=2)
    assert len(semi) == len(sup) == 6  # 30% of 20 frames
    assert np.array_equal(semi.labelled_idx, sup.labelled_idx)
    for i in range(len(semi)):
        group = semi[i]
        assert len(group) == 3 and len(sup[i]) == 1
        assert torch.equal(group[0]['labels'], sup[i][0]['labels'])
        assert bool(group[0]['labelled']) and (group[0]['labels'] != 255).any()
        for u in group[1:]:  # unlabelled partners: no label survives
            assert not bool(u['labelled']) and bool((u['labels'] == 255).all())
            assert not semi.selected[int(u['index'])]
        assert group[0]['rgb'].shape == (3, H // 2, W // 2)
        assert group[0]['labels'].shape == (H // 2, W // 2)
    batch = collate_groups([semi[0], semi[1]])
    assert batch['labelled'].tolist() == [True, True, False, False, False, False]
    assert batch['depth'].shape == (6, 2, H // 2, W // 2)
    # another epoch draws other partners, reproducibly
    semi.set_epoch(1)
    again = [int(s['index']) for s in semi[0][1:]]
    semi.set_epoch(1)
    assert again == [int(s['index']) for s in semi[0][1:]]
    # whole recordings: every labelled frame comes from the chosen recordings, in full
    rec = SemiSupervisedSet(base, 0.5, seed=0, unlabelled_per_labelled=1, unit='recording')
    names = [base.shards[si].path.name for si, _ in base.index]
    chosen = {names[i] for i in rec.labelled_idx}
    assert rec.labelled_recordings == len(chosen) == round(0.5 * len(set(names)))
    assert all((names[i] in chosen) == bool(rec.selected[i]) for i in range(len(names)))
    with pytest.raises(ValueError, match='label unit'):
        SemiSupervisedSet(base, 0.5, seed=0, unit='scene')
    # downscaling: RGB averaged, labels and sensor tensors taken every k-th pixel
    full = base[0]
    small = downscale_sample(full, 2)
    assert torch.equal(small['labels'], full['labels'][::2, ::2])
    assert torch.allclose(small['rgb'][:, 0, 0], full['rgb'][:, :2, :2].mean((1, 2)))


def _metrics(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / 'metrics.jsonl').read_text().splitlines()]


def test_smoke_robult_stage_baseline_and_rmmss_switch(robult_config):
    from rmseg_ros.models.checkpoint import load_checkpoint
    from training.cli import main
    from training.export import load_model

    runs = robult_config / 'runs'
    common = ['--config', str(robult_config / 'robult.yaml'), '--smoke']
    assert main(['robult', *common, '--out', str(runs / 'robult'), '--evaluate']) == 0
    assert main(['robult', *common, '--out', str(runs / 'sup'), '--no-robult',
                 '--unlabelled-per-labelled', '0', '--set', 'dropout.probability=0']) == 0
    train = [r for r in _metrics(runs / 'robult') if r['split'] == 'train']
    assert [r['step'] for r in train] == [1, 2, 3, 4]
    assert all({'pu_labelled', 'pu_unlabelled', 'recon'} <= set(r) for r in train)
    assert all('pu_labelled' not in r for r in _metrics(runs / 'sup'))
    for run in ('robult', 'sup'):
        assert_thread_policy_applied(runs / run)
    for run in ('robult', 'sup'):  # the deployable is the plain fusion network
        model, meta = load_model(runs / run / 'model.safetensors')
        assert meta['arch'] == 'fusion' and isinstance(model, FusionSegNet)
    ev = json.loads((runs / 'robult' / 'eval.json').read_text())
    assert len(ev['subsets']) == 15 and ev['labelled_frames'] == 6 and ev['frames'] == 20
    assert ev['mean_miou'] == pytest.approx(np.mean(list(ev['subsets'].values())), abs=1e-5)

    # Robult inside the RMMSS robust stage: this stage from the sup run as teacher ...
    assert main(['robult', *common, '--out', str(runs / 'rmmss_robult'), '--teacher',
                 str(runs / 'sup' / 'model.safetensors')]) == 0
    logs = [r for r in _metrics(runs / 'rmmss_robult') if r['split'] == 'train']
    assert all({'pixel_kl', 'proto', 'pu_unlabelled', 'recon'} <= set(r) for r in logs)
    # ... and `rmseg-train robust` with the config switch (default off)
    rm = ['--config', str(robult_config / 'rmmss.yaml'), '--smoke']
    assert main(['teacher', *rm]) == 0
    raw = yaml.safe_load((robult_config / 'rmmss.yaml').read_text())
    raw['robult'] = {'enabled': True, 'grid': [2, 2], 'dim': 8, 'hidden': 8,
                     'recon': {'hidden': 8}}
    (robult_config / 'rmmss_robult.yaml').write_text(yaml.safe_dump(raw, sort_keys=False))
    assert main(['robust', '--config', str(robult_config / 'rmmss_robult.yaml'), '--smoke',
                 '--out', str(robult_config / 'rmmss' / 'robust_robult')]) == 0
    logs = [r for r in _metrics(robult_config / 'rmmss' / 'robust_robult')
            if r['split'] == 'train']
    assert all({'pixel_kl', 'pu_labelled', 'recon'} <= set(r) for r in logs)
    weights, meta = load_checkpoint(robult_config / 'rmmss' / 'robust_robult' /
                                    'model.safetensors')
    assert meta['arch'] == 'fusion' and not any('head' in k or 'reconstructor' in k
                                                for k in weights)
    stored = yaml.safe_load((robult_config / 'rmmss' / 'teacher' / 'config.yaml').read_text())
    assert 'robult' not in stored  # switched off: the stored config is the pre-Robult one


# ----------------------------------------------------------------------------- experiment, report

def test_experiment_rows_share_the_budget_and_order_dependencies():
    from training.robult.experiment import command, plan

    cfg, _ = load_config(None)
    exp = cfg.experiment
    exp.rows, exp.fractions, exp.seeds, exp.label_unit = [], [0.1, 0.5], [3, 7], 'frame'
    rows = plan(exp)
    names = [r.name for r in rows]
    for seed in (3, 7):
        assert {f'seed{seed}/{r}' for r in ('sup10', 'robult10', 'sup50', 'robult50', 'rmmss10',
                                            'rmmss_robult10')} <= set(names)
    # the headline pair of every seed starts before any other row
    assert names[:4] == ['seed3/robult10', 'seed3/sup10', 'seed7/robult10', 'seed7/sup10']
    teacher = f'seed3/{exp.rmmss_teacher}10'
    assert names.index(teacher) < names.index('seed3/rmmss10')
    for r in rows:
        cmd = command(r, None, exp)
        assert cmd[cmd.index('--steps') + 1] == str(exp.steps)
        assert '--evaluate' in cmd
        assert cmd[cmd.index('--label-unit') + 1] == exp.label_unit == 'frame'
        assert cmd[cmd.index('--out') + 1] == str(Path(exp.out_root) / r.name)
        # a row's seed is its run seed and its labelled selection's seed
        seed = r.name.split('/')[0][len('seed'):]
        assert f'run.seed={seed}' in cmd and f'data.label_seed={seed}' in cmd
        assert f'run.threads={exp.threads}' in cmd
    exp.label_unit = 'recording'  # --label-unit: every row counts recordings
    assert all(command(r, None, exp)[command(r, None, exp).index('--label-unit') + 1]
               == 'recording' for r in rows)
    exp.label_unit = 'frame'
    by = {r.name: r for r in rows}
    assert '--no-robult' in by['seed3/sup10'].args
    assert '--no-robult' not in by['seed3/robult10'].args
    assert by['seed7/rmmss_robult10'].after == [f'seed7/{exp.rmmss_teacher}10']
    t_model = by['seed7/rmmss10'].args[by['seed7/rmmss10'].args.index('--teacher') + 1]
    assert Path(t_model).parent == Path(exp.out_root) / 'seed7' / f'{exp.rmmss_teacher}10'
    # the ablations switch one Robult loss off
    assert 'robult.recon.weight=0' in by['seed3/robult_pu10'].args
    assert 'robult.pu.weight=0' in by['seed7/robult_recon50'].args
    exp.rows = ['sup50']  # --rows filters by the row name, in every seed
    assert [r.name for r in plan(exp)] == ['seed3/sup50', 'seed7/sup50']
    exp.rows = []
    exp.rmmss_teacher = 'teacher'  # the own-teacher variant: an all-modality row first
    names = [r.name for r in plan(exp)]
    assert 'seed3/teacher10' in names
    assert names.index('seed3/teacher10') < names.index('seed3/rmmss_robult10')
    teacher_row = next(r for r in plan(exp) if r.name == 'seed3/teacher10')
    assert 'dropout.probability=0' in teacher_row.args
    exp.seeds = [1, 1]
    with pytest.raises(ValueError, match='distinct'):
        plan(exp)


def _fake_eval(run: Path, level: float, steps: int, rng: np.random.Generator,
               **labels) -> float:
    from training.evaluate import SUBSETS

    subsets = {s: round(float(level + rng.uniform(-0.05, 0.05)), 6) for s in SUBSETS}
    mean = float(np.mean(list(subsets.values())))
    classes = {sub: {'floor': level, 'duck': level / 2} for sub in ('RDLE', 'R', 'D')}
    run.mkdir(parents=True)
    (run / 'eval.json').write_text(json.dumps({
        'subsets': subsets, 'mean_miou': mean, 'samples': 60, 'steps': steps,
        'label_fraction': int(re.sub(r'\D', '', run.name)) / 100, 'labelled_frames': 280,
        'label_unit': 'recording', 'labelled_recordings': 28, 'class_iou': classes,
        'input_hw': [120, 160], 'config': {'run': {'batch_size': 4}}, **labels}))
    (run / 'metrics.jsonl').write_text('\n'.join(json.dumps(
        {'split': 'val', 'step': s, 'miou_mean': level * s / steps}) for s in (50, 80, 100)))
    return mean


def test_report_writes_the_robult_section(tmp_path):
    from training.robult.report import collect, main

    runs = tmp_path / 'runs'
    rng = np.random.default_rng(0)
    levels = {'sup10': 0.30, 'robult10': 0.33, 'sup5': 0.25, 'robult5': 0.255, 'sup100': 0.35,
              'robult_pu5': 0.24}
    means = {(row, seed): _fake_eval(runs / f'seed{seed}' / row, level + 0.01 * seed, 100, rng)
             for row, level in levels.items() for seed in (0, 1, 2)}
    figures = collect(runs)
    for row in levels:
        per_seed = [100 * means[row, s] for s in (0, 1, 2)]
        assert figures[f'{row}_subset_mean'] == pytest.approx(np.mean(per_seed), abs=0.01)
        se = np.std(per_seed, ddof=1) / np.sqrt(3)
        assert figures[f'{row}_subset_mean_se'] == pytest.approx(se, abs=0.01)
        assert figures[f'{row}_class_iou']['RDLE']['duck'] == pytest.approx(
            100 * (levels[row] + 0.01) / 2, abs=0.01)
        assert figures[f'{row}_val_last_fifth_change'] == pytest.approx(
            100 * (levels[row] + 0.01) * 0.2, abs=0.01)  # mean curve: 100 vs 80 of 100 steps
    # the gain is paired: the mean and s.e. of the per-seed differences
    diffs = [100 * (means['robult10', s] - means['sup10', s]) for s in (0, 1, 2)]
    assert figures['robult10_gain'] == pytest.approx(np.mean(diffs), abs=0.011)
    assert figures['robult10_gain_se'] == pytest.approx(np.std(diffs, ddof=1) / np.sqrt(3),
                                                        abs=0.011)
    assert figures['target_met_10'] == (figures['robult10_gain'] >= 2.0)
    assert figures['target_met_5'] == (figures['robult5_gain'] >= 2.0)
    assert figures['robult_pu5_gain'] == pytest.approx(  # an ablation: against sup5 as well
        np.mean([100 * (means['robult_pu5', s] - means['sup5', s]) for s in (0, 1, 2)]), abs=0.011)
    assert 'target_met_pu5' not in figures
    assert figures['seeds'] == [0, 1, 2]
    # every label against a fraction's, seed by seed: the most unlabelled frames could add
    assert figures['all_labels_gain_10'] == pytest.approx(
        np.mean([100 * (means['sup100', s] - means['sup10', s]) for s in (0, 1, 2)]), abs=0.011)
    assert 'all_labels_gain_100' not in figures
    docs = tmp_path / 'docs'
    assert main(['--runs', str(runs), '--docs', str(docs)]) == 0
    data = json.loads((docs / 'results.json').read_text())
    assert set(data) == {'robult'} and '_curves' not in data['robult']
    got = data['robult']
    assert got['sup10_subset_mean'] == figures['sup10_subset_mean']
    md = (docs / 'results.md').read_text()
    assert '<!-- robult:begin -->' in md and '| RDLE |' in md and '| duck |' in md
    assert f'{figures["robult10_subset_mean"]:.2f} ± {figures["robult10_subset_mean_se"]:.2f}' \
        in md
    assert '10% of recordings (28 recordings, 280 frames)' in md
    assert 'What labels can add at this budget' in md
    assert (docs / 'robult_curves.png').stat().st_size > 0


def test_class_weights_count_only_the_labelled_frames(robult_config):
    """A semi-supervised run may only use what its labellers labelled: the histogram behind
    its class weights is the labelled frames', not the whole recording's."""
    from training.data.class_balance import class_weights, label_histogram
    from training.robult.config import frontend_of
    from training.robult.stage import labelled_class_weights, train_set

    cfg, _ = load_config(robult_config / 'robult.yaml', smoke=True)
    cfg.data.label_fraction = 0.3
    cached, _ = frontend_of(cfg.data)
    data = train_set(cfg, cached)
    names = [f'c{i}' for i in range(9)]
    cfg.loss.class_weighting = 'none'
    assert labelled_class_weights(data, cfg.loss, names) is None
    cfg.loss.class_weighting = 'inverse_sqrt'
    got = labelled_class_weights(data, cfg.loss, names).numpy()
    base = data.base
    rows = [np.asarray(base.shards[si].arrays['labels'][i]) for si, i in
            (base.index[j] for j in data.labelled_idx)]
    want = class_weights(label_histogram(rows, 9), 'inverse_sqrt', cfg.loss.class_weight_max_ratio)
    np.testing.assert_allclose(got, want)
    everything = class_weights(label_histogram(base.label_rows(), 9), 'inverse_sqrt',
                               cfg.loss.class_weight_max_ratio)
    assert not np.allclose(got, everything)  # the unlabelled frames would change them
