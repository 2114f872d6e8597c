"""Bag -> synchronised samples -> shards -> Dataset, on a bag written here with rosbags.

What is trained must be what runs: the cached tensors equal the node's preprocessing of the same
messages. Corrupt records are counted, unlabelled frames kept and flagged, cache reused.
"""

from pathlib import Path

import numpy as np
import pytest
import torch

from rmseg_ros.camera import CameraIntrinsics
from rmseg_ros.frontend.preprocess import build_model_input, frame_from_messages
from rmseg_ros.frontend.sensor_geometry import SensorGeometry
from rmseg_ros.modalities import MODALITIES
from training.data.bag_samples import BagSampleReader, DatasetConfig
from training.data.cli import build_cache, find_bags
from training.data.dataset import AugmentConfig, ShardDataset, random_modality_subset
from training.data.shards import Shard
from training.data.tensor_failures import TENSOR_FAILURES
from training.sim import bag_writer as bw

CAM = CameraIntrinsics.from_fov(160, 120, 80.0)
T_BASE_CAM = np.array([[0, 0, 1, 0.2], [-1, 0, 0, 0], [0, -1, 0, 1.0], [0, 0, 0, 1]], float)
T_BASE_LIDAR = np.eye(4)
T_BASE_LIDAR[:3, 3] = [0.1, 0.0, 1.2]
PERIOD_NS = 100_000_000
START_NS = 1_700_000_000_000_000_000


def _frame_messages(i: int, rng: np.random.Generator) -> dict[str, object]:
    stamp = START_NS + i * PERIOD_NS
    rgb = rng.integers(30, 220, (120, 160, 3)).astype(np.uint8)
    depth = rng.uniform(1.0, 5.0, (120, 160)).astype(np.float32)
    xyz = np.column_stack([rng.uniform(2, 6, 500), rng.uniform(-2, 2, 500),
                           rng.uniform(-1, 1, 500)]).astype(np.float32)
    n_ev = 300
    events = bw.events_array(rng.integers(0, 160, n_ev), rng.integers(0, 120, n_ev),
                             np.sort(stamp - rng.integers(0, 40_000_000, n_ev)),
                             rng.choice([-1, 1], n_ev))
    return {
        'camera/image': bw.image_msg(rgb, 'rgb8', stamp, 'camera_optical_frame'),
        'depth/image': bw.image_msg(depth, '32FC1', stamp + 3_000_000, 'camera_optical_frame'),
        'lidar/points': bw.lidar_msg(xyz, np.full(500, 40.0, np.float32), stamp - 5_000_000,
                                     'lidar'),
        'events': bw.events_msg(events, stamp, 'camera_optical_frame'),
        'labels/semantic': bw.image_msg(rng.integers(0, 9, (120, 160)).astype(np.uint8), 'mono8',
                                        stamp, 'camera_optical_frame'),
    }


def write_test_bag(path: Path, frames: int = 8, storage: str = 'mcap', corrupt_at: int = 3,
                   unlabelled: tuple[int, ...] = (5,)) -> list[dict[str, object]]:
    rng = np.random.default_rng(11)
    written = []
    with bw.BagWriter(path, storage) as writer:
        writer.write('/tf_static', START_NS, bw.tf_msg(
            [('base_link', 'camera_optical_frame', T_BASE_CAM), ('base_link', 'lidar',
                                                                  T_BASE_LIDAR)], START_NS),
                     latched=True)
        writer.write('camera/camera_info', START_NS, bw.camera_info_msg(CAM, START_NS,
                                                                        'camera_optical_frame'))
        for i in range(frames):
            msgs = _frame_messages(i, rng)
            if i in unlabelled:
                del msgs['labels/semantic']
            for topic, msg in msgs.items():
                writer.write(topic, START_NS + i * PERIOD_NS, msg)
            if i == corrupt_at:  # a record whose bytes are not a valid message
                writer.write_raw('depth/image', START_NS + i * PERIOD_NS + 1,
                                 b'\x00\x01\x00\x00garbage')
            written.append(msgs)
    return written


@pytest.mark.parametrize('storage', ['mcap', 'sqlite3'])
def test_bag_samples_match_online_preprocessing(tmp_path, storage):
    bag = tmp_path / 'bag'
    written = write_test_bag(bag, storage=storage)
    config = DatasetConfig.load()
    frontend = config.frontend()
    reader = BagSampleReader(bag, config, frontend)
    samples = list(reader)
    assert reader.stats.corrupt == 1
    # every frame but possibly the last (its partners may still be pending) becomes a sample
    assert len(samples) >= len(written) - 1
    T_cam_lidar = np.linalg.inv(T_BASE_CAM) @ T_BASE_LIDAR
    for s in samples:
        i = (s.model_input.stamp_ns - START_NS) // PERIOD_NS
        msgs = written[i]
        online = build_model_input(frame_from_messages(
            s.model_input.stamp_ns, {'rgb': msgs['camera/image'], 'depth': msgs['depth/image'],
                                     'lidar': msgs['lidar/points'], 'event': msgs['events']},
            SensorGeometry(CAM, T_cam_lidar)), frontend)
        assert s.model_input.presence.all()
        for m in MODALITIES:
            np.testing.assert_allclose(s.model_input.tensors[m], online.tensors[m], atol=1e-6)
        assert s.labelled == (i != 5)
        if s.labelled:
            assert s.labels.shape == frontend.hw and s.labels.max() < 9
        else:
            assert (s.labels == 255).all()


def test_cache_dataset_and_augmentations(tmp_path):
    write_test_bag(tmp_path / 'bags' / 'scene0', frames=6, corrupt_at=-1)
    config = DatasetConfig.load()
    frontend = config.frontend()
    bags = find_bags([str(tmp_path / 'bags')])
    assert [b.name for b in bags] == ['scene0']
    summary = build_cache(bags, tmp_path / 'cache', config)
    assert summary['built'] == 1 and summary['samples'] >= 5 and summary['failed'] == []
    again = build_cache(bags, tmp_path / 'cache', config)
    assert again['cached'] == 1 and again['built'] == 0

    shard = Shard.open(tmp_path / 'cache' / 'scene0')
    assert shard.arrays['rgb'].dtype == np.uint8 and shard.arrays['depth'].dtype == np.float16
    plain = ShardDataset([shard.path], frontend)
    item = plain[0]
    assert item['rgb'].shape == (3, *frontend.hw) and item['labels'].dtype == torch.int64
    assert item['presence'].all()
    # A flip moves the labels with the image.
    flipped = ShardDataset([shard.path], frontend, AugmentConfig(flip=True), seed=0)
    for idx in range(len(flipped)):
        a, b = plain[idx], flipped[idx]
        if not torch.equal(a['labels'], b['labels']):
            assert torch.equal(a['labels'].flip(-1), b['labels'])
            assert torch.allclose(a['rgb'].flip(-1), b['rgb'])
            assert torch.equal(a['lidar'].flip(-1), b['lidar'])
            break
    else:
        pytest.fail('no sample was flipped')
    # Same seed and epoch -> same augmentation; dropout keeps a non-empty subset, zeroes the rest.
    drop = ShardDataset([shard.path], frontend, AugmentConfig(flip=False, modality_dropout=1.0,
                                                              scale_range=(1.0, 1.5)), seed=3)
    seen = set()
    for idx in range(len(drop)):
        x, y = drop[idx], drop[idx]
        assert torch.equal(x['presence'], y['presence']) and torch.equal(x['rgb'], y['rgb'])
        assert x['presence'].any()
        for m, on in zip(MODALITIES, x['presence'].tolist(), strict=True):
            if not on:
                assert not x[m].any()
        seen.add(tuple(x['presence'].tolist()))
    assert len(seen) > 1


def test_dataset_without_bags_fails_loudly(tmp_path, capsys):
    """An empty directory, a directory of other files, a file that is not a bag, or only bags
    that cannot be read: `rmseg-train dataset` exits non-zero and says why (it exited 0)."""
    from training.cli import main

    (tmp_path / 'empty').mkdir()
    (tmp_path / 'other').mkdir()
    (tmp_path / 'other' / 'notes.txt').write_text('not a bag')
    (tmp_path / 'broken').mkdir()
    (tmp_path / 'broken' / 'metadata.yaml').write_text('rosbag2_bagfile_information: {}')
    out = ['--out', str(tmp_path / 'cache')]
    for target, code, words in [('empty', 2, 'no rosbag2 recording'),
                                ('other', 2, 'no rosbag2 recording'),
                                ('other/notes.txt', 2, 'neither a rosbag2 directory'),
                                ('broken', 1, 'no bag could be read')]:
        assert main(['dataset', *out, '--bags', str(tmp_path / target)]) == code, target
        err = capsys.readouterr().err
        assert words in err and 'rmseg-train dataset' in err, (target, err)


def test_truncated_bag_gives_the_samples_of_its_complete_chunks(tmp_path):
    """Half the mcap file (a killed recorder): the samples of the complete chunks, equal to
    those of the whole bag, and the cut counted (it gave 0 samples and dropped the bag)."""
    full = write_test_bag(tmp_path / 'bag', frames=24, corrupt_at=-1)
    config = DatasetConfig.load()
    frontend = config.frontend()
    whole = {s.model_input.stamp_ns: s for s in BagSampleReader(tmp_path / 'bag', config,
                                                                  frontend)}
    mcap = tmp_path / 'bag' / 'bag.mcap'
    data = mcap.read_bytes()
    mcap.write_bytes(data[:len(data) // 2])
    reader = BagSampleReader(tmp_path / 'bag', config, frontend)
    samples = list(reader)
    assert 4 <= len(samples) < len(full) - 4
    assert reader.stats.truncated and reader.stats.damaged_bytes > 0
    for s in samples:
        ref = whole[s.model_input.stamp_ns]
        assert np.array_equal(s.labels, ref.labels)
        for m in MODALITIES:
            np.testing.assert_array_equal(s.model_input.tensors[m], ref.model_input.tensors[m])
    summary = build_cache([tmp_path / 'bag'], tmp_path / 'cache', config)
    assert summary['built'] == 1 and summary['samples'] == len(samples)
    assert summary['truncated_bags'] == 1 and summary['damaged_bytes'] > 0


def test_random_modality_subset_is_non_empty_subset():
    rng = np.random.default_rng(0)
    presence = np.array([True, False, True, True])
    sizes = set()
    for _ in range(200):
        out = random_modality_subset(presence, rng)
        assert out.any() and not (out & ~presence).any()
        sizes.add(int(out.sum()))
    assert sizes == {1, 2, 3}


def test_bag_without_camera_info_is_a_clear_error(tmp_path):
    with bw.BagWriter(tmp_path / 'bag') as writer:
        msgs = _frame_messages(0, np.random.default_rng(0))
        writer.write('camera/image', START_NS, msgs['camera/image'])
    config = DatasetConfig.load()
    with pytest.raises(ValueError, match='no CameraInfo'):
        list(BagSampleReader(tmp_path / 'bag', config, config.frontend()))
    summary = build_cache([tmp_path / 'bag'], tmp_path / 'cache', config)
    assert summary['built'] == 0 and 'no CameraInfo' in summary['failed'][0]


def _row(frontend, rng):
    h, w = frontend.hw
    depth = np.stack([np.full((h, w), 3.0 / frontend.depth_max_m, np.float32),
                      np.ones((h, w), np.float32)])
    lidar = np.zeros((3, h, w), np.float32)
    lidar[0, ::4, ::4], lidar[2, ::4, ::4] = 10.0 / frontend.lidar_max_range_m, 1.0
    event = np.zeros((frontend.event_bins, h, w), np.float32)
    event[2, 10:14, 20:24] = 0.5
    return {'rgb': rng.integers(60, 200, (h, w, 3)).astype(np.uint8), 'depth': depth,
            'lidar': lidar, 'event': event}


@pytest.mark.parametrize('name', sorted(TENSOR_FAILURES))
def test_tensor_failures_change_only_their_modality(name):
    frontend = DatasetConfig.load().frontend()
    rng = np.random.default_rng(0)
    row = _row(frontend, rng)
    before = {k: v.copy() for k, v in row.items()}
    TENSOR_FAILURES[name](row, rng, frontend)
    target = {'depth_noise': 'depth', 'lidar_jitter': 'lidar', 'low_res_events': 'event',
              'event_noise': 'event'}.get(name, 'rgb')
    for key in row:
        changed = not np.array_equal(row[key], before[key])
        assert changed == (key == target), (name, key)


def test_tensor_failure_semantics():
    frontend = DatasetConfig.load().frontend()
    rng = np.random.default_rng(1)
    row = _row(frontend, rng)
    TENSOR_FAILURES['under_exposure'](row, rng, frontend)
    assert row['rgb'].mean() < 0.3 * 130
    row = _row(frontend, rng)
    mass = row['event'].sum()
    TENSOR_FAILURES['low_res_events'](row, rng, frontend)
    assert np.isclose(row['event'].sum(), mass) and (row['event'][2] > 0).sum() > 16
    row = _row(frontend, rng)
    hits = row['lidar'][2].copy()
    TENSOR_FAILURES['lidar_jitter'](row, rng, frontend)
    assert np.array_equal(row['lidar'][2], hits)  # points move in range, not in existence
    err = np.abs(row['lidar'][0][hits > 0] * frontend.lidar_max_range_m - 10.0)
    assert 0.02 < err.mean() < 0.08
