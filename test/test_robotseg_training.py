"""RobotSeg training pipeline: first-frame-only labels, losses, J&F, the flow baseline, a smoke
run of `rmseg-train robotseg` on a real rosbag2 file (train, resume, export, evaluate) and the
results report."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from training_checks import assert_thread_policy_applied

from training.robotseg.clips import ClipDataset, Video, load_videos, log_uniform, read_video
from training.robotseg.config import AugmentConfig, DataConfig, FlowConfig, load_config
from training.robotseg.flow import propagate_mask
from training.robotseg.losses import (
    mask_loss,
    patch_pseudo_labels,
    semantic_consistency,
)
from training.robotseg.metrics import boundary_f, clip_jf, region_j

pytestmark = pytest.mark.filterwarnings('ignore::DeprecationWarning:lark.*')

H, W = 48, 64


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models: one thread is as fast, and spares the shared cores (restored after)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)



def moving_square_video(n: int = 12, name: str = 'v') -> Video:
    """A textured bright square moving right by 2 px per frame over a textured background."""
    rng = np.random.default_rng(1)
    bg = cv2.GaussianBlur((rng.random((H, W, 3)) * 120).astype(np.uint8), (5, 5), 0)
    tex = cv2.GaussianBlur((rng.random((16, 16, 3)) * 80 + 170).astype(np.uint8), (3, 3), 0)
    frames, masks = [], []
    for t in range(n):
        img, m = bg.copy(), np.zeros((H, W), np.uint8)
        x = 8 + 2 * t
        img[16:32, x:x + 16] = tex
        m[16:32, x:x + 16] = 1
        frames.append(img)
        masks.append(m)
    return Video(name, np.stack(frames), np.stack(masks), np.arange(n, dtype=np.int64))


# ----------------------------------------------------------------------------- data

def test_first_frame_mode_only_ever_hands_out_the_first_mask_of_each_clip() -> None:
    video = moving_square_video(20)
    ds = ClipDataset([video], clip_length=5, window=3, labels='first_frame',
                     augment=AugmentConfig(flip=False, gain=(1, 1), gamma=(1, 1)))
    assert len(ds) == 4 and ds.labelled_frames() == [(0, 0), (0, 5), (0, 10), (0, 15)]
    for epoch in range(3):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            rng = np.random.default_rng((0, epoch, i))
            idx = ds.window_indices(i, rng)
            start = 5 * i
            assert idx[0] == start and idx == sorted(idx) and len(set(idx)) == 3
            assert all(start <= j < start + 5 for j in idx)
            sample = ds[i]
            assert sample['labelled'].tolist() == [True, False, False]
            assert torch.equal(sample['masks'][0],
                               torch.from_numpy(video.masks[start].astype(np.float32)))
            assert float(sample['masks'][1:].abs().sum()) == 0.0
    assert sample['images'].shape == (3, 3, H, W) and sample['edges'].shape == (3, 1, H, W)


def test_supervised_mode_labels_every_frame() -> None:
    video = moving_square_video(10)
    ds = ClipDataset([video], 5, 3, 'all', None)
    assert len(ds.labelled_frames()) == 10
    s = ds[1]
    assert s['labelled'].all() and float(s['masks'].sum()) > 0


def test_gain_is_log_uniform_so_dim_windows_are_common() -> None:
    # P(gain < 0.5) is ln(2.5) / ln(6.5) = 0.49 for log-uniform on [0.2, 1.3], 0.27 for uniform
    rng = np.random.default_rng(0)
    gains = np.array([log_uniform(rng, 0.2, 1.3) for _ in range(4000)])
    assert gains.min() >= 0.2 and gains.max() <= 1.3
    assert abs(float(np.mean(gains < 0.5)) - np.log(2.5) / np.log(6.5)) < 0.03
    assert log_uniform(rng, 0.7, 0.7) == pytest.approx(0.7)


def test_read_video_from_a_bag_and_cache(tmp_path: Path) -> None:
    bag = write_bag(tmp_path / 'bags' / 'scene_a', moving_square_video(6))
    v = read_video(bag, (24, 32))
    assert v.frames.shape == (6, 24, 32, 3) and v.masks.shape == (6, 24, 32)
    assert list(v.stamps) == sorted(v.stamps)
    data = DataConfig(cache_dir=str(tmp_path / 'cache'), height=24, width=32)
    a = load_videos([str(tmp_path / 'bags' / '*')], data)
    b = load_videos([str(tmp_path / 'bags' / '*')], data)  # from the npz cache
    assert len(list((tmp_path / 'cache').glob('*.npz'))) == 1
    np.testing.assert_array_equal(a[0].frames, b[0].frames)
    np.testing.assert_array_equal(a[0].masks, v.masks)
    with pytest.raises(FileNotFoundError):
        load_videos([str(tmp_path / 'nothing' / '*')], data)


def test_masks_from_kinematic_pngs_replace_the_topic(tmp_path: Path) -> None:
    """`data.robot_masks` reads <bag>/<dir>/robot/<stamp>.png (what robot-masks writes) instead
    of the bag's mask topic; a frame without a PNG is left out; a re-render changes the cache."""
    video = moving_square_video(6)
    bag = write_bag(tmp_path / 'bags' / 'scene_a', video)
    stamps = read_video(bag, (24, 32)).stamps  # the bag's header stamps
    out = bag / 'labels_kin' / 'robot'
    out.mkdir(parents=True)
    for stamp, mask in list(zip(stamps, video.masks, strict=True))[:5]:
        cv2.imwrite(str(out / f'{stamp}.png'), np.roll(mask, 3, axis=1))  # shifted: not truth
    v = read_video(bag, (24, 32), mask_dir='labels_kin')
    assert list(v.stamps) == list(stamps[:5])
    shifted = [cv2.resize(np.roll(m, 3, axis=1), (32, 24), interpolation=cv2.INTER_NEAREST)
               for m in video.masks[:5]]
    np.testing.assert_array_equal(v.masks, np.stack(shifted))
    data = DataConfig(cache_dir=str(tmp_path / 'cache'), height=24, width=32,
                      robot_masks='labels_kin')
    assert len(load_videos([str(tmp_path / 'bags' / '*')], data)[0].stamps) == 5
    cv2.imwrite(str(out / f'{stamps[5]}.png'), video.masks[5])
    assert len(load_videos([str(tmp_path / 'bags' / '*')], data)[0].stamps) == 6
    with pytest.raises(ValueError, match='labels_none'):
        read_video(bag, (24, 32), mask_dir='labels_none')


def test_given_masks_scored_against_truth_by_stamp() -> None:
    """The kinematic baseline: masks made without the model, matched by video and stamp; a
    frame with no given mask counts as an empty prediction."""
    from training.robotseg.evaluate import evaluate_given_masks

    cfg, _ = load_config(None, 'robotseg', smoke=True)
    truth = moving_square_video(6, 'a')
    perfect = evaluate_given_masks([truth], [truth], cfg.evaluate)
    assert perfect['JF'] == pytest.approx(1.0)
    partial = Video('a', truth.frames[:3], truth.masks[:3], truth.stamps[:3])
    ev = evaluate_given_masks([truth], [partial], cfg.evaluate)
    assert ev['clips']['a']['J'] == pytest.approx(2 / 5)  # frames 1, 2 right; 3, 4, 5 empty
    assert evaluate_given_masks([truth], [], cfg.evaluate)['JF'] == pytest.approx(0.0)


# ----------------------------------------------------------------------------- losses

def test_mask_loss_prefers_the_right_mask() -> None:
    target = torch.zeros(1, 8, 8)
    target[0, 2:6, 2:6] = 1
    good = (target * 2 - 1) * 6
    assert mask_loss(good, target) < 0.05 < mask_loss(-good, target)


def test_semantic_consistency_rewards_masks_on_the_robot_embedding() -> None:
    torch.manual_seed(0)
    robot, back = torch.randn(8), torch.randn(8)
    emb0 = torch.stack([robot if i < 4 else back for i in range(10)])[None]
    mask0 = torch.tensor([[1.0] * 4 + [0.0] * 6])
    emb_t = torch.stack([back if i < 6 else robot for i in range(10)])[None]  # it moved
    right = torch.tensor([[0.0] * 6 + [1.0] * 4])
    wrong = 1 - right
    good = semantic_consistency(emb_t, right, emb0, mask0)
    bad = semantic_consistency(emb_t, wrong, emb0, mask0)
    assert good < 0.01 < bad


def test_patch_pseudo_labels_follow_similarity_to_frame0_patches() -> None:
    robot, back = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0])
    ambiguous = torch.tensor([0.7, 0.7, 0.0])
    f0 = torch.stack([robot, robot, back, back])[None]
    m0 = torch.tensor([[1.0, 0.9, 0.0, 0.0]])
    ft = torch.stack([back, robot, ambiguous, robot * 2])[None]
    labels, confident = patch_pseudo_labels(ft, f0, m0, margin=0.05)
    assert labels[0].tolist()[:2] == [0.0, 1.0] and labels[0, 3] == 1.0
    assert confident[0].tolist() == [True, True, False, True]
    # frame 0 without robot patches: nothing is pseudo-labelled
    _, none = patch_pseudo_labels(ft, f0, torch.zeros(1, 4))
    assert not none.any()


def test_loss_fn_terms_by_variant() -> None:
    from types import SimpleNamespace

    from rmseg_ros.models.robotseg import RobotSegConfig, RobotSegModel
    from training.robotseg.train import make_loss_fn

    cfg, _ = load_config(None, 'robotseg', smoke=True)
    model = RobotSegModel(RobotSegConfig.from_dict(cfg.model))
    ds = ClipDataset([moving_square_video(8)], 4, 3, 'first_frame', None)
    batch = torch.utils.data.default_collate([ds[0], ds[1]])
    loss, logs = make_loss_fn(cfg.loss, 'first_frame')(model, batch,
                                                       SimpleNamespace(module=model))
    assert set(logs) == {'supervised', 'cycle', 'semantic', 'patch'}
    loss.backward()
    assert torch.isfinite(loss)
    no_cycle, _ = load_config(None, 'no_cycle', smoke=True)
    _, logs = make_loss_fn(no_cycle.loss, 'first_frame')(model, batch,
                                                         SimpleNamespace(module=model))
    assert 'cycle' not in logs
    _, logs = make_loss_fn(cfg.loss, 'all')(model, batch, SimpleNamespace(module=model))
    assert set(logs) == {'supervised'}


def test_variants_differ_only_where_they_say() -> None:
    _base, rb = load_config(None, 'robotseg')
    for name, path, value in [('no_sema', 'model.use_sema', False),
                              ('no_rpg', 'model.prompt_mode', 'random'),
                              ('no_cycle', 'loss.cycle_weight', 0.0),
                              ('supervised', 'data.labels', 'all'),
                              ('kinematic', 'data.robot_masks', 'labels_kin'),
                              ('kinematic_all', 'data.robot_masks', 'labels_kin'),
                              ('kinematic_24', 'data.robot_masks', 'labels_kin'),
                              ('kinematic_long', 'data.robot_masks', 'labels_kin'),
                              ('robotseg_long', 'run.steps', 16000)]:
        _cfg, resolved = load_config(None, name)
        section, key = path.split('.')
        assert resolved[section][key] == value
        assert resolved['optim'] == rb['optim']
        assert resolved['run'] == rb['run'] or name in ('kinematic_24', 'kinematic_long',
                                                        'robotseg_long')
    for name, shorter in (('robotseg_long', 'robotseg'), ('kinematic_long', 'kinematic')):
        (longer, a), (_, b) = load_config(None, name), load_config(None, shorter)
        assert {k: v for k, v in a.items() if k not in ('run', 'variant')} == {
            k: v for k, v in b.items() if k not in ('run', 'variant')}
        assert longer.run.steps // 2 >= longer.run.steps - (
            longer.run.keep_checkpoints - 1) * longer.run.ckpt_every  # its half is kept
    kin, _ = load_config(None, 'kinematic')
    few, _ = load_config(None, 'kinematic_24')
    assert kin.data.train == [*few.data.train, 'data/robotseg/train_more/*/scene_*']
    assert (few.run.steps, kin.run.steps) == (6000, 10000)
    assert kin.experiment.training_sets == ['train', 'train_more']
    with pytest.raises(ValueError):
        load_config(None, 'nonsense')


# ----------------------------------------------------------------------------- metrics

def test_region_j_and_boundary_f() -> None:
    a = np.zeros((50, 50), np.uint8)
    a[10:30, 10:30] = 1
    b = np.zeros_like(a)
    b[10:30, 20:40] = 1
    assert region_j(a, a) == 1.0
    assert region_j(a, b) == pytest.approx(200 / 600)
    assert region_j(np.zeros_like(a), np.zeros_like(a)) == 1.0
    assert boundary_f(a, a) == 1.0
    shifted = np.roll(a, 1, axis=1)  # within the tolerance (ceil(0.008 * 70.7) = 1 px)
    assert boundary_f(shifted, a) == 1.0
    far = np.roll(a, 5, axis=1)
    assert boundary_f(far, a) < 0.6
    assert boundary_f(np.zeros_like(a), a) == 0.0


def test_clip_jf_leaves_out_frame0() -> None:
    gt = [np.ones((4, 4), np.uint8)] * 3
    pred = [np.zeros((4, 4), np.uint8), *gt[1:]]
    assert clip_jf(pred, gt)['JF'] == 1.0
    assert clip_jf(pred, gt, skip_first=False)['J'] == pytest.approx(2 / 3)


def test_flow_baseline_follows_motion() -> None:
    video = moving_square_video(8)
    preds = propagate_mask(video.frames, video.masks[0], FlowConfig())
    flow_score = clip_jf(preds, list(video.masks))['J']
    static = clip_jf([video.masks[0]] * 8, list(video.masks))['J']
    assert flow_score > 0.75 and flow_score > static + 0.2, (flow_score, static)


# ----------------------------------------------------------------------------- smoke run

def write_bag(path: Path, video: Video) -> Path:
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    from rmseg_ros import conversions

    ts = get_typestore(Stores.ROS2_KILTED)
    path.parent.mkdir(parents=True, exist_ok=True)
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        cam = writer.add_connection('camera/image', 'sensor_msgs/msg/Image', typestore=ts)
        rob = writer.add_connection('labels/robot', 'sensor_msgs/msg/Image', typestore=ts)
        for i, (f, m) in enumerate(zip(video.frames, video.masks, strict=True)):
            stamp = 10**18 + i * 10**8
            header = ts.types['std_msgs/msg/Header'](
                stamp=ts.types['builtin_interfaces/msg/Time'](sec=stamp // 10**9,
                                                              nanosec=stamp % 10**9),
                frame_id='cam')
            for conn, arr, enc in ((cam, f, 'rgb8'), (rob, m, 'mono8')):
                msg = conversions.numpy_to_image(np.ascontiguousarray(arr), enc, header,
                                                 msg_cls=ts)
                writer.write(conn, stamp, bytes(ts.serialize_cdr(msg, 'sensor_msgs/msg/Image')))
    return path


def test_smoke_train_resume_export_evaluate_report(tmp_path: Path, monkeypatch) -> None:
    from rmseg_ros.models.robotseg import load_robotseg
    from training.engine import list_checkpoints
    from training.robotseg.evaluate import evaluate_checkpoint, evaluate_flow
    from training.robotseg.report import collect, write
    from training.robotseg.train import run

    monkeypatch.chdir(tmp_path)
    write_bag(tmp_path / 'bags' / 'scene_1', moving_square_video(12))
    args = argparse.Namespace(config=None, out=str(tmp_path / 'run'), smoke=True)
    train = ['--train', str(tmp_path / 'bags' / '*')]
    assert run(args, ['--', '--variant', 'robotseg', *train]) == 0
    assert [s for s, _ in list_checkpoints(tmp_path / 'run')] == [3, 2]
    assert run(args, ['--variant', 'robotseg', '--steps', '5', *train]) == 0  # resumes
    metrics = [json.loads(x) for x in (tmp_path / 'run' / 'metrics.jsonl').read_text().split(
        '\n') if x]
    steps = [m['step'] for m in metrics if m.get('split') == 'train']
    assert steps == [1, 2, 3, 4, 5]  # resumed after step 3, no step trained twice
    assert_thread_policy_applied(tmp_path / 'run')
    summary = json.loads((tmp_path / 'run' / 'summary.json').read_text())
    assert summary['labelled_frames'] == 3 and summary['frames'] == 12  # 3 clips of 4 frames
    _model, meta = load_robotseg(tmp_path / 'run' / 'model.safetensors')
    assert meta['input_hw'] == [48, 64] and meta['extra']['variant'] == 'robotseg'

    cfg, _ = load_config(None, 'robotseg', smoke=True)
    videos = [moving_square_video(6, 'a')]
    ev = evaluate_checkpoint(tmp_path / 'run' / 'model.safetensors', videos, cfg.evaluate)
    assert 0.0 <= ev['JF'] <= 1.0 and ev['clips']['a']['frames'] == 5
    flow = evaluate_flow(videos, cfg.evaluate, cfg.flow)
    runs = tmp_path / 'runs'
    # two deployment sets and a stress set: the deployment row is the mean over sets, with the
    # standard error over sets; the stress row feeds unseen_robot_jf
    for name, shift in (('dep_a', 0.0), ('dep_b', 0.1), ('stress_s', -0.2)):
        (runs / name).mkdir(parents=True)
        (runs / name / 'eval_flow.json').write_text(json.dumps(flow))
        scored = {**ev, 'JF': ev['JF'] + shift,
                  'train': {'step': 5, 'labelled_frames': 3, 'videos': 1}}
        (runs / name / 'eval_robotseg.json').write_text(json.dumps(scored))
        half = {**scored, 'JF': scored['JF'] - 0.02}
        (runs / name / 'eval_robotseg_half.json').write_text(json.dumps(half))
        longer = {**scored, 'JF': scored['JF'] + 0.01, 'train': {'step': 8}}
        (runs / name / 'eval_robotseg_long.json').write_text(json.dumps(longer))
    for name, exact, calib, frames in (('tr_a', 99.4, 77.2, 720), ('tr_b', 99.9, 76.1, 2160)):
        (runs / f'masks_{name}.json').write_text(json.dumps(
            {'iou_exact': exact, 'iou_calib_error': calib, 'frames_scored': frames,
             'calib_error_deg': 1.0, 'calib_error_cm': 1.0, 'calib_error_draws': 2}))
    figures = collect(runs, deployment=['dep_a', 'dep_b'], stress=['stress_s'],
                      training=['tr_a', 'tr_b'])
    # the mask figures: the lowest over the training sets, each set's kept
    assert (figures['kinematic_mask_iou'], figures['kinematic_mask_iou_calib_error']) == (
        99.4, 76.1)
    assert figures['kinematic_mask_iou_by_set']['tr_b'] == {
        'iou_exact': 99.9, 'iou_calib_error': 76.1, 'frames': 2160}
    assert figures['kinematic_mask_calib_error']['frames'] == 2880
    assert figures['robotseg_jf'] == pytest.approx(100 * ev['JF'] + 5.0, abs=0.01)
    assert figures['robotseg_jf_se'] == pytest.approx(5.0, abs=0.01)  # std 7.07 / sqrt 2
    assert figures['unseen_robot_jf'] == pytest.approx(100 * ev['JF'] - 20.0, abs=0.01)
    assert figures['robotseg_minus_flow'] == pytest.approx(
        figures['robotseg_jf'] - figures['flow_jf'], abs=0.02)
    assert figures['robotseg_train_steps'] == 5 and figures['robotseg_train_videos'] == 1
    assert figures['robotseg_second_half_change'] == pytest.approx(2.0, abs=0.01)
    assert figures['robotseg_long_minus_robotseg'] == pytest.approx(1.0, abs=0.01)
    write(figures, tmp_path / 'docs')
    md = (tmp_path / 'docs' / 'results.md').read_text()
    js = json.loads((tmp_path / 'docs' / 'results.json').read_text())
    assert '<!-- robotseg:begin -->' in md and f'{figures["flow_jf"]:.2f}' in md
    assert '| model | train steps | videos | labelled frames |' in md
    assert '| 5 | 1 | 3 |' in md  # the row's own steps, videos and labelled frames
    assert 'tr_b: 99.90 / 76.10 % over 2160 frames' in md
    assert 'robotseg_long (8 steps) - robotseg (5): +1.00' in md
    assert js['robotseg']['flow_jf'] == figures['flow_jf']
