"""RSS (training/rss): advantages, PSD, PSR, rewards, the policy, recorded feedback from a bag,
and a seconds-long `rmseg-train rss` run per reward level on a cache built here."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from training_checks import assert_thread_policy_applied

from training.evaluate import confusion_matrix, mean_iou
from training.rss import advantages as adv
from training.rss.config import MethodConfig, PSRConfig, load_config
from training.rss.plan import plan
from training.rss.rewards import (
    BagFeedbackReward,
    match_scores,
    miou_reward,
    pixel_rewards,
    read_feedback,
    reward_labels,
)
from training.rss.trainer import image_level_step, param_groups, pixel_level_step
from training.sim import bag_writer as bw

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- normalisation

def test_group_normalisation_by_hand():
    r = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # mean 0.5, population std 0.5
    a, stats = adv.normalize_advantages(r, eps=0.0)
    assert torch.allclose(a, torch.tensor([[1.0, -1.0], [-1.0, 1.0]]))
    assert stats['mean'] == 0.5 and stats['std'] == 0.5 and stats['count'] == 4
    # masked entries are left out of the statistics and get no advantage
    r = torch.tensor([[3.0, 1.0, 100.0]])
    a, stats = adv.normalize_advantages(r, torch.tensor([[True, True, False]]), eps=0.0)
    assert torch.allclose(a, torch.tensor([[1.0, -1.0, 0.0]])) and stats['mean'] == 2.0
    # per image (GRPO group = the maps of one image)
    g = adv.normalize_groups(torch.tensor([[0.2, 0.4]]), eps=0.0)
    assert torch.allclose(g[0], torch.tensor([-1.0, 1.0]))
    assert torch.all(adv.normalize_groups(torch.tensor([[5.0, 5.0]])) == 0)  # eps: no NaN


def test_syncan_off_normalises_each_part_on_its_own():
    r = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0], [2.0, 0.0]])
    a, _ = adv.normalize_advantages(r, chunks=2, eps=0.0)
    # part 1 = rows 0-1: mean 0.75, std sqrt(3)/4; part 2 = rows 2-3: mean 0.5, std sqrt(3)/2
    s1, s2 = math.sqrt(3) / 4, math.sqrt(3) / 2
    want = torch.tensor([[0.25 / s1, -0.75 / s1], [0.25 / s1, 0.25 / s1],
                         [-0.5 / s2, -0.5 / s2], [1.5 / s2, -0.5 / s2]])
    assert torch.allclose(a, want, atol=1e-6)
    whole, _ = adv.normalize_advantages(r, eps=0.0)
    assert not torch.allclose(a, whole)  # the two semantics differ on this batch


def test_policy_loss_gradient_is_minus_advantage_times_score_function():
    logits = torch.tensor([[[[0.3]], [[-0.2]], [[1.0]]]], requires_grad=True)  # (1, 3, 1, 1)
    actions = torch.tensor([[[[2]], [[0]]]])  # two sampled actions of the one pixel
    a = torch.tensor([[[[0.5]], [[-1.5]]]])
    loss = adv.policy_loss(adv.log_probs(logits, actions), a)
    loss.backward()
    p = torch.softmax(logits.detach()[0, :, 0, 0], 0)
    onehot = torch.eye(3)
    want = -(0.5 * (onehot[2] - p) + -1.5 * (onehot[0] - p)) / 2
    assert torch.allclose(logits.grad[0, :, 0, 0], want, atol=1e-6)


# ----------------------------------------------------------------------------- PSD

def test_psd_advantage_is_reward_difference_where_maps_differ_and_zero_where_they_agree():
    a0 = torch.tensor([[0, 1], [2, 2]])
    a1 = torch.tensor([[0, 2], [2, 1]])  # differs from a0 at (0, 1) and (1, 1)
    actions = torch.stack([a0, a1])[None]  # (1, 2, 2, 2)
    r = torch.tensor([[0.7, 0.2]])
    out = adv.psd_advantages(actions, r)
    differ = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    assert torch.allclose(out[0, 0], 0.5 * differ) and torch.allclose(out[0, 1], -0.5 * differ)
    # three maps: map i's advantage is the mean over its partners
    a2 = torch.tensor([[1, 1], [2, 2]])  # differs from a0 at (0, 0) only
    actions = torch.stack([a0, a1, a2])[None]
    r = torch.tensor([[0.7, 0.2, 0.4]])
    out = adv.psd_advantages(actions, r)
    # map 0 at (0,0): only a2 differs -> (0.7-0.4)/2; at (0,1): a1 differs -> (0.7-0.2)/2;
    # at (1,0): nobody differs -> 0; at (1,1): a1 differs -> 0.25
    assert torch.allclose(out[0, 0], torch.tensor([[0.15, 0.25], [0.0, 0.25]]))
    assert torch.all(out[:, :, 1, 0] == 0)  # every map agrees there
    assert torch.all(adv.psd_advantages(actions[:, :1], r[:, :1]) == 0)  # one map: no pairs


# ----------------------------------------------------------------------------- PSR

def test_psr_shapes_and_schedule():
    logits = torch.randn(2, 9, 120, 160)
    assert adv.downsample_logits(logits, 0.125).shape == (2, 9, 15, 20)
    assert adv.downsample_logits(logits, 1.0) is logits
    assert adv.downsample_logits(logits, 2.0).shape == (2, 9, 240, 320)  # camera-size maps
    full = torch.randint(0, 9, (2, 240, 320))
    small = {'labels': full[:, ::2, ::2], 'labels_full': full}
    assert reward_labels(torch.zeros(2, 3, 240, 320, dtype=torch.long), small) is full
    assert reward_labels(torch.zeros(2, 3, 15, 20, dtype=torch.long), small) is small['labels']
    # area downsampling = mean over each 8x8 cell
    assert torch.allclose(adv.downsample_logits(logits, 0.125)[0, 3, 1, 2],
                          logits[0, 3, 8:16, 16:24].mean(), atol=1e-5)
    labels = torch.randint(0, 9, (2, 120, 160))
    assert adv.resize_labels(labels, (15, 20)).shape == (2, 15, 20)
    sched = [{'start': 0.0, 'scales': [0.125]}, {'start': 0.5, 'scales': [0.125, 1.0]}]
    assert adv.active_scales([1.0], sched, 0.2) == [0.125]
    assert adv.active_scales([1.0], sched, 0.7) == [0.125, 1.0]
    assert adv.active_scales([0.5], [], 0.7) == [0.5]
    m = MethodConfig(level='image', samples=3, psr=PSRConfig(scales=[0.125, 0.25]), psd=True)
    seen = []

    def reward(actions, batch):
        seen.append(tuple(actions.shape))
        return miou_reward(actions, batch['labels'], 9)

    step = image_level_step(logits.requires_grad_(), {'labels': labels}, [0.125, 0.25],
                            lambda s: [1, 2], reward, m)
    assert seen == [(2, 3, 15, 20), (2, 3, 30, 40)]
    assert step.advantages.shape == (2, 3, 30, 40) and set(step.logs) >= {'reward_x0.125'}
    step.loss.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


# ----------------------------------------------------------------------------- rewards

def test_miou_reward_by_hand_and_against_the_evaluation_code():
    labels = torch.tensor([[[0, 0], [1, 1]]])
    amap = torch.tensor([[[[0, 1], [1, 1]]]])  # class 0: 1/2, class 1: 2/3
    assert torch.allclose(miou_reward(amap, labels, 3), torch.tensor([[7 / 12]]))
    labels = torch.tensor([[[0, 255], [1, 1]]])  # the ignored pixel does not count
    amap = torch.tensor([[[[0, 2], [1, 1]], [[1, 1], [1, 1]]]])
    assert torch.allclose(miou_reward(amap, labels, 3), torch.tensor([[1.0, 1 / 3]]))
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 5, (2, 12, 16), generator=g)
    labels[0, :3] = 255
    maps = torch.randint(0, 5, (2, 4, 12, 16), generator=g)
    got = miou_reward(maps, labels, 5)
    for b in range(2):
        for i in range(4):
            want = mean_iou(confusion_matrix(maps[b, i], labels[b], 5))
            assert abs(float(got[b, i]) - want) < 1e-6
    # a map half the labels' size is scored against nearest-resized labels
    assert miou_reward(maps[:, :, ::2, ::2], labels, 5).shape == (2, 4)


def test_pixel_rewards_are_one_for_the_true_class():
    labels = torch.tensor([[[0, 1], [255, 2]]])
    actions = torch.tensor([[[[0, 0], [1, 2]], [[1, 1], [0, 0]]]])
    r, mask = pixel_rewards(actions, labels)
    assert torch.equal(r, torch.tensor([[[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [0.0, 0.0]]]]))
    assert torch.equal(mask, torch.tensor([[[[True, True], [False, True]]]]))


# ----------------------------------------------------------------------------- the policy

def test_sampling_follows_the_softmax_and_depends_on_the_sample_only():
    logits = torch.log(torch.tensor([0.7, 0.2, 0.1]))[None, :, None, None].repeat(2, 1, 40, 50)
    a = adv.sample_actions(logits, 10, [11, 12])
    freq = torch.bincount(a.flatten(), minlength=3).float() / a.numel()
    assert torch.allclose(freq, torch.tensor([0.7, 0.2, 0.1]), atol=0.01)
    alone = adv.sample_actions(logits[1:], 10, [12])  # same seed, other batch: same actions
    assert torch.equal(alone[0], a[1]) and not torch.equal(a[0], a[1])
    assert adv.sample_seed(0, 3, 7) == adv.sample_seed(0, 3, 7) != adv.sample_seed(0, 4, 7)
    noisy = logits + torch.randn_like(logits)  # log-probs equal Categorical's
    ref = torch.distributions.Categorical(logits=noisy.permute(0, 2, 3, 1))
    assert torch.allclose(adv.log_probs(noisy, a),
                          ref.log_prob(a.transpose(0, 1)).transpose(0, 1), atol=1e-5)


def test_pixel_level_reward_learns_a_label_map():
    """A free per-pixel policy trained from pixel rewards reaches the labels."""
    torch.manual_seed(0)
    labels = torch.randint(0, 4, (2, 6, 8))
    logits = torch.zeros(2, 4, 6, 8, requires_grad=True)
    opt = torch.optim.Adam([logits], lr=0.1)
    m = MethodConfig(level='pixel', samples=4)
    for step in range(60):
        loss = pixel_level_step(logits, labels, [step * 2, step * 2 + 1], m).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert (logits.argmax(1) == labels).float().mean() > 0.95


def test_image_level_psr_psd_learns_from_miou_alone():
    """Only one mIoU score per sampled map: PSR + PSD still recovers a 3-class label map,
    and does so better than the naive full-resolution pipeline with the same steps."""
    labels = torch.zeros(1, 16, 16, dtype=torch.long)
    labels[:, :, 6:11] = 1
    labels[:, 10:] = 2

    def train(scales: list[float], psd: bool) -> float:
        torch.manual_seed(0)
        logits = torch.zeros(1, 3, 16, 16, requires_grad=True)
        opt = torch.optim.Adam([logits], lr=0.1)
        m = MethodConfig(level='image', samples=8, psr=PSRConfig(scales=scales), psd=psd)
        for step in range(80):
            loss = image_level_step(logits, {'labels': labels}, scales,
                                    lambda s, step=step: [step * 10 + int(s * 8)],
                                    lambda a, b: miou_reward(a, b['labels'], 3), m).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
        return mean_iou(confusion_matrix(logits.argmax(1), labels, 3))

    psr_psd = train([0.25, 0.5, 1.0], True)
    assert psr_psd > 0.8
    assert psr_psd > train([1.0], False)


def test_last_layer_gets_the_lr_factor():
    from rmseg_ros.models.fusion import FusionConfig, FusionSegNet

    net = FusionSegNet(FusionConfig(num_classes=3, widths=(8, 16, 24, 32), depths=(1, 1, 1, 1),
                                    decoder_dim=16, attention_heads=2))
    groups = param_groups(net, 400.0)
    assert {id(p) for p in groups[1]['params']} == {id(p) for p in net.classifier.parameters()}
    assert groups[1]['lr_scale'] == 400.0 and 'lr_scale' not in groups[0]
    assert len(groups[0]['params']) + 2 == len(list(net.parameters()))


# ----------------------------------------------------------------------------- bag feedback

def _write_shard(path: Path, stamps: list[int], bag: Path, hw=(8, 8)) -> None:
    """A real cache shard (the format training.data.shards reads) with `stamps`."""
    n, (h, w) = len(stamps), hw
    path.mkdir(parents=True)
    arrays = {'rgb': np.zeros((n, h, w, 3), np.uint8), 'depth': np.zeros((n, 2, h, w), np.float16),
              'lidar': np.zeros((n, 3, h, w), np.float16),
              'event': np.zeros((n, 5, h, w), np.float16),
              'labels': np.zeros((n, h, w), np.uint8), 'robot': np.zeros((n, h, w), np.uint8),
              'presence': np.ones((n, 4), bool), 'labelled': np.ones(n, bool),
              'stamps': np.asarray(stamps, np.int64)}
    for k, v in arrays.items():
        np.save(path / f'{k}.npy', v)
    (path / 'meta.json').write_text(json.dumps({'format': 1, 'count': n, 'height': h, 'width': w,
                                                'event_bins': 5, 'bag': str(bag)}))


def test_feedback_scores_are_read_from_a_recorded_bag(tmp_path):
    from rmseg_ros.frontend.preprocess import FrontendConfig
    from training.data.dataset import ShardDataset

    t0, period = 1_700_000_000_000_000_000, 100_000_000
    float32 = bw.TYPESTORE.types['std_msgs/msg/Float32']
    bag = tmp_path / 'scene'
    scores = [0.1, 0.9, 0.4, 0.6]
    with bw.BagWriter(bag, 'mcap') as w:
        for i, s in enumerate(scores):  # the score arrives 3 ms after the frame
            w.write('feedback/score', t0 + i * period + 3_000_000, float32(data=s))
        w.write('other', t0, float32(data=5.0))
    stamps, values = read_feedback(bag, '/feedback/score')
    assert np.allclose(values, scores) and len(stamps) == 4
    with pytest.raises(KeyError):
        read_feedback(bag, 'feedback/missing')
    assert np.isnan(match_scores(np.array([t0 + 50 * period]), stamps, values, 10_000_000))[0]

    frames = [t0 + i * period for i in (2, 0, 3)]
    _write_shard(tmp_path / 'shard', frames, bag)
    ds = ShardDataset([tmp_path / 'shard'], FrontendConfig(height=8, width=8))
    reward = BagFeedbackReward(ds, 'feedback/score', tolerance_ns=10_000_000)
    batch = {'index': torch.tensor([2, 0])}
    got = reward(torch.zeros(2, 3, 4, 4, dtype=torch.long), batch)
    assert got.shape == (2, 3)
    assert torch.allclose(got, torch.tensor([[0.6] * 3, [0.4] * 3]))
    with pytest.raises(ValueError, match='no feedback/score score'):
        BagFeedbackReward(ds, 'feedback/score', tolerance_ns=1_000_000)  # 3 ms > 1 ms


# ----------------------------------------------------------------------------- configs + CLI

def test_configs_load_and_ablation_plan_has_every_row():
    cfg, _ = load_config(None)
    assert cfg.method.level == 'image' and cfg.method.psd and cfg.last_layer_lr_factor == 400
    names = [r.name for r in plan(yaml.safe_load(
        (REPO / 'training' / 'configs' / 'rss_ablation.yaml').read_text()))]
    for row in ('coldstart', 'psl', 'psl_cold', 'untrained', 'image_naive_fullres',
                'pixel', 'pixel_syncan', 'pixel_syncan_cold',
                'image_naive', 'image_psr_single', 'image_psr_multi', 'image_psd',
                'image_psr_psd', 'image_psr_psd_cold', 'image_psr_psd_lr1',
                'image_psr_psd_cold_lr40', 'image_psr_psd_cold_lr4'):
        assert row in names
    assert 'image_psr_psd_lr400' not in names  # the base row has factor 400 already
    with pytest.raises(ValueError):
        load_config(None, overrides={'method': {'level': 'bogus'}})


@pytest.fixture(scope='module')
def rss_config(tmp_path_factory) -> Path:
    """A tiny cache (48x64) built from a bag written here, and an rss config pointing at it."""
    from test_rmmss import _tiny_dataset_config, _write_bag  # four-modality bag, 48x64

    from training.data.bag_samples import DatasetConfig
    from training.data.cli import build_cache

    root = tmp_path_factory.mktemp('rss')
    dataset_yaml = _tiny_dataset_config(root)
    _write_bag(root / 'bags' / 'scene0', frames=5, seed=1)
    build_cache([root / 'bags' / 'scene0'], root / 'cache', DatasetConfig.load(dataset_yaml))
    raw = yaml.safe_load((REPO / 'training' / 'configs' / 'rss.yaml').read_text())
    raw['out_root'] = str(root / 'runs')
    raw['data'].update(train_shards=[str(root / 'cache' / '*')],
                       dataset_config=str(root / 'dataset.yaml'))
    raw['evaluate']['shards'] = [str(root / 'cache' / '*')]
    cfg = root / 'rss.yaml'
    cfg.write_text(yaml.safe_dump(raw, sort_keys=False))
    return cfg


@pytest.fixture(scope='module')
def supervised_init(rss_config) -> Path:
    """`rmseg-train rss --level supervised`: the cold-start weights of the reward runs."""
    from training.cli import main

    out = rss_config.parent / 'runs' / 'supervised'
    assert main(['rss', '--config', str(rss_config), '--smoke', '--out', str(out), '--',
                 '--level', 'supervised']) == 0
    return out / 'model.safetensors'


@pytest.mark.parametrize('level', ['pixel', 'image'])
def test_rmseg_train_rss_smoke_run_and_cold_start(rss_config, supervised_init, level):
    from training.cli import main
    from training.export import read_checkpoint

    runs, init = rss_config.parent / 'runs', supervised_init
    base = ['rss', '--config', str(rss_config), '--smoke']
    assert main([*base, '--out', str(runs / level), '--', '--level', level, '--init', str(init),
                 '--set', 'method.kl_weight=0.1']) == 0
    summary = json.loads((runs / level / 'eval.json').read_text())
    assert summary['step'] == 3 and summary['init_checkpoint'] == str(init)
    assert 0.0 <= summary['test']['miou'] <= 1.0
    records = [json.loads(x) for x in (runs / level / 'metrics.jsonl').read_text().splitlines()]
    assert all(math.isfinite(r['loss']) and 'reward' in r and 'kl' in r for r in records)
    assert_thread_policy_applied(runs / level)
    start, _ = read_checkpoint(init)
    end, meta = read_checkpoint(runs / level / 'model.safetensors')
    assert meta['arch'] == 'fusion' and meta['frontend']['height'] == 48
    assert not torch.equal(start['classifier.weight'], end['classifier.weight'])  # it trained


def test_rss_fine_tunes_the_deployed_fsm_student(rss_config, tmp_path):
    """Cold start from a deployed RMMSS FSM student: its trainable part (ending in the FSM's
    `classifier`) learns from rewards, the frozen teacher and robust model stay bit-identical."""
    from rmseg_ros.models.checkpoint import export_metadata, save_checkpoint
    from rmseg_ros.models.fsm import FSMConfig, FSMStudent
    from rmseg_ros.models.fusion import FusionConfig, FusionSegNet
    from training.cli import main
    from training.export import read_checkpoint
    from training.rmmss.config import class_table, frontend_of

    cfg, _ = load_config(rss_config, smoke=True)
    classes, fe = class_table(cfg.data), frontend_of(cfg.data)
    fc = FusionConfig.from_dict({**cfg.model, 'num_classes': len(classes.names),
                                 'event_bins': fe.event_bins})
    torch.manual_seed(0)
    student = FSMStudent(FusionSegNet(fc), FusionSegNet(fc), FSMConfig(hidden=8))
    path = tmp_path / 'student.safetensors'
    save_checkpoint(path, student.state_dict(), export_metadata(
        'fsm_student', student.model_config(), list(classes.names), classes.colors.tolist(),
        ['rgb', 'depth', 'lidar', 'event'], fe, 'test'))
    out = tmp_path / 'rss_fsm'
    assert main(['rss', '--config', str(rss_config), '--smoke', '--out', str(out), '--',
                 '--init', str(path), '--level', 'image']) == 0
    start, _ = read_checkpoint(path)
    end, meta = read_checkpoint(out / 'model.safetensors')
    assert meta['arch'] == 'fsm_student'
    frozen = [k for k in start if k.startswith(('teacher.', 'robust.'))]
    assert frozen and all(torch.equal(start[k], end[k]) for k in frozen)
    assert not torch.equal(start['fsm.classifier.weight'], end['fsm.classifier.weight'])


def test_ablation_runs_rows_skips_finished_ones_and_writes_the_rss_section(rss_config, tmp_path):
    """Smoke rows of the ablation for two seeds on the cache built here (two processes at once,
    a cold row after its seed's cold-start model), then the report section."""
    from training.rss import ablation

    budget = yaml.safe_load((REPO / 'training' / 'configs' / 'rss_ablation.yaml').read_text())
    raw_cfg = yaml.safe_load(rss_config.read_text())
    budget['config'] = str(rss_config)
    budget['common']['data'] = raw_cfg['data']
    budget['common']['evaluate'] = raw_cfg['evaluate']
    budget['coldstart']['overrides']['data'] = {'train_shards': raw_cfg['data']['train_shards']}
    budget['seeds'], budget['seed_rows'] = [0, 5], ['image_psr_psd_cold']
    path = tmp_path / 'budget.yaml'
    path.write_text(yaml.safe_dump(budget))
    runs = tmp_path / 'runs'
    args = ['--budget', str(path), '--out-root', str(runs), '--smoke',
            '--docs', str(tmp_path / 'docs'), '--rows', 'psl,image_psr_psd_cold', '--jobs', '2']
    assert ablation.main(args) == 0
    for seed in (0, 5):  # a cold row needs its own seed's cold-start model
        assert (runs / f'seed{seed}' / 'coldstart' / 'eval.json').exists()
        assert (runs / f'seed{seed}' / 'image_psr_psd_cold' / 'eval.json').exists()
        stored = yaml.safe_load((runs / f'seed{seed}' / 'image_psr_psd_cold' / 'config.yaml')
                                .read_text())
        assert stored['run']['seed'] == seed
        assert stored['init_checkpoint'] == str(runs / f'seed{seed}' / 'coldstart' /
                                                'model.safetensors')
    assert not (runs / 'seed5' / 'psl').exists()  # not a seed row: the first seed only
    first = (runs / 'seed0' / 'psl' / 'eval.json').stat().st_mtime_ns
    assert ablation.main([*args[:-2], '--jobs', '1']) == 0  # finished rows are skipped
    assert (runs / 'seed0' / 'psl' / 'eval.json').stat().st_mtime_ns == first
    figures = json.loads((tmp_path / 'docs' / 'results.json').read_text())['rss']
    assert {'psl_miou', 'image_psr_psd_cold_miou', 'image_psr_psd_cold_pct_of_psl',
            'image_psr_psd_cold_miou_se'} <= set(figures)
    per_seed = [100 * json.loads((runs / f'seed{s}' / 'image_psr_psd_cold' / 'eval.json')
                                 .read_text())['test']['miou'] for s in (0, 5)]
    assert figures['image_psr_psd_cold_miou'] == pytest.approx(np.mean(per_seed), abs=0.01)
    assert figures['image_psr_psd_cold_seeds'] == [0, 5] and figures['psl_seeds'] == [0]
    md = (tmp_path / 'docs' / 'results.md').read_text()
    assert '<!-- rss:begin -->' in md and f'{figures["psl_miou"]:.2f}' in md
