"""The training engine's use of the machine (thread policy, channels-last, bf16 autocast, the
low-resolution phase) and the class-balanced loss."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from training_checks import assert_thread_policy_applied

from training import engine
from training.data.class_balance import ENET_C, class_weights, label_histogram
from training.rmmss.losses import ohem_cross_entropy
from training.run import machine

# ----------------------------------------------------------------------------- class weights

def test_class_weights_of_a_known_histogram():
    counts = np.array([500, 300, 150, 40, 10])  # pixel frequencies 0.5, 0.3, 0.15, 0.04, 0.01
    f = counts / counts.sum()
    w = class_weights(counts, 'enet_log', max_ratio=0)
    raw = 1.0 / np.log(ENET_C + f)
    np.testing.assert_allclose(w, raw / (f * raw).sum(), rtol=1e-6)
    assert float((f * w).sum()) == pytest.approx(1.0)  # the average pixel keeps weight 1
    assert list(np.argsort(w)) == [0, 1, 2, 3, 4]  # rarer classes weigh more
    inv = class_weights(counts, 'inverse_sqrt', max_ratio=0)
    assert inv[4] / inv[0] == pytest.approx(math.sqrt(50))
    med = class_weights(counts, 'median_frequency', max_ratio=0)
    assert med[2] / med[4] == pytest.approx(0.01 / 0.15)  # the median class: w = 1 before scaling
    clipped = class_weights(counts, 'median_frequency', max_ratio=10)
    assert clipped.max() / clipped.min() == pytest.approx(10.0)
    assert float((f * clipped).sum()) == pytest.approx(1.0)
    np.testing.assert_array_equal(class_weights(counts, 'none'), np.ones(5, np.float32))


def test_class_weights_absent_class_and_bad_input():
    w = class_weights(np.array([90, 10, 0]), 'enet_log', max_ratio=0)
    assert w[2] == pytest.approx(w[1]) and w[1] > w[0]  # no pixels: the largest weight
    with pytest.raises(ValueError, match='class weighting'):
        class_weights(np.array([1, 2]), 'focal')
    with pytest.raises(ValueError, match='non-negative'):
        class_weights(np.array([1, -2]), 'enet_log')


def test_label_histogram_ignores_255_and_out_of_range():
    a = np.array([[0, 1, 255], [2, 2, 9]], np.uint8)
    b = np.array([[1, 1]], np.int64)
    np.testing.assert_array_equal(label_histogram([a, b], 3), [1, 3, 2])


def test_weighted_ohem_averages_kept_pixels_by_class_weight():
    # two pixels, both hard (uniform logits over 2 classes: p = 0.5 < 0.7), classes 0 and 1
    logits = torch.zeros(1, 2, 1, 2)
    labels = torch.tensor([[[0, 1]]])
    per_pixel = math.log(2.0)
    w = torch.tensor([1.0, 3.0])
    assert ohem_cross_entropy(logits, labels, class_weights=w).item() == pytest.approx(per_pixel)
    # a pixel easier than the threshold is left out whatever its weight
    logits = torch.tensor([[[[0.0, 5.0]], [[0.0, -5.0]]]])  # pixel 1: class 0 with p ~ 1
    labels = torch.tensor([[[1, 0]]])
    loss = ohem_cross_entropy(logits, labels, min_kept_fraction=0.0, class_weights=w)
    assert loss.item() == pytest.approx(math.log(2.0), rel=1e-5)  # only pixel 0 (class 1)
    # unequal losses: the weighted mean
    logits = torch.tensor([[[[0.0, 1.0]], [[0.0, 0.0]]]])
    labels = torch.tensor([[[0, 1]]])
    l0 = math.log(2.0)
    l1 = -math.log(math.exp(0.0) / (math.exp(1.0) + 1.0))
    got = ohem_cross_entropy(logits, labels, class_weights=w).item()
    assert got == pytest.approx((1.0 * l0 + 3.0 * l1) / 4.0, rel=1e-5)


# ----------------------------------------------------------------------------- thread policy

def test_intra_op_threads_rule():
    assert machine.intra_op_threads(3, world_size=1, cores=2) == 3  # asked for: given
    assert machine.intra_op_threads(0, world_size=1, cores=2) == 2  # all cores: the tuner's top
    assert machine.intra_op_threads(0, world_size=2, cores=16) == 8
    assert machine.intra_op_threads(0, world_size=4, cores=2) == 1  # never below one


class StepClock:
    """A clock whose step durations depend on the thread count in force (set by the tuner)."""

    def __init__(self, cost: dict[int, float]) -> None:
        self.cost, self.now, self.threads, self.calls = dict(cost), 0.0, 0, []

    def set_threads(self, n: int) -> None:
        self.threads = n

    def __call__(self) -> float:
        return self.now

    def run_step(self, tuner: machine.ThreadTuner, step: int) -> int:
        tuner.before_step(step)
        used = self.threads
        self.now += self.cost[used]
        tuner.after_step(step)
        self.calls.append(used)
        return used


def test_thread_tuner_keeps_the_faster_count_and_follows_a_change_of_load():
    clock = StepClock({1: 0.30, 2: 0.18})  # idle host: two threads faster
    tuner = machine.ThreadTuner([2, 1, 2], every=10, start=3, probe_steps=2, clock=clock,
                                set_threads=clock.set_threads)
    assert tuner.candidates == [1, 2] and tuner.chosen == 2
    used = [clock.run_step(tuner, s) for s in range(1, 13)]
    assert used[:2] == [2, 2]  # before `start`: the largest count
    assert used[2:6] == [1, 1, 2, 2]  # steps 3-6 probe each count twice
    assert used[6:12] == [2] * 6 and tuner.chosen == 2
    assert tuner.history == [{'step': 6, 'threads': 2,
                              'median_step_s': {'1': 0.3, '2': 0.18}}]
    clock.cost = {1: 0.30, 2: 0.90}  # another process takes a core: one thread is faster
    used = [clock.run_step(tuner, s) for s in range(13, 24)]
    assert used[:4] == [1, 1, 2, 2]  # step 13 = start + every: probe again
    assert used[4:] == [1] * 7 and tuner.chosen == 1
    assert [h['threads'] for h in tuner.history] == [2, 1]


def test_thread_tuner_with_one_candidate_never_probes():
    clock = StepClock({1: 0.1})
    tuner = machine.ThreadTuner([1], every=1, start=1, clock=clock,
                                set_threads=clock.set_threads)
    assert [clock.run_step(tuner, s) for s in range(1, 6)] == [1] * 5 and tuner.history == []
    with pytest.raises(ValueError):
        machine.ThreadTuner([1, 2], every=0)


def test_trainer_steps_run_at_the_tuners_thread_counts(tmp_path):
    before = torch.get_num_threads()
    try:
        seen: list = []
        trainer = _conv_trainer(tmp_path / 'run', seen, threads=0, steps=6)
        if trainer.tuner is None:  # a 1-core host has nothing to choose from
            assert machine.usable_cores() == 1
            return
        clock = StepClock({1: 0.1, trainer.threads.intra_op: 0.5})
        trainer.tuner = machine.ThreadTuner([1, trainer.threads.intra_op], every=100, start=2,
                                            probe_steps=1, clock=clock,
                                            set_threads=lambda n: (clock.set_threads(n),
                                                                   torch.set_num_threads(n)))
        original = trainer.train_step

        def timed_step(batch, sctx):  # the fake clock advances by the cost of the count in force
            clock.now += clock.cost[torch.get_num_threads()]
            return original(batch, sctx)

        trainer.train_step = timed_step
        trainer.fit()
        top = trainer.threads.intra_op
        assert [s['threads'] for s in seen] == [top, 1, top, 1, 1, 1]
        rows = [json.loads(line) for line in (tmp_path / 'run' / 'metrics.jsonl').open()]
        assert [r['threads'] for r in rows if r['split'] == 'train'][-1] == 1
        assert json.loads((tmp_path / 'run' / 'machine.json').read_text())['policy']['tuned']
    finally:
        torch.set_num_threads(before)


class ConvSet(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(i)
        return {'x': torch.randn(3, 8, 12, generator=g),
                'labels': torch.randint(0, 2, (8, 12), generator=g), 'index': torch.tensor(i)}


def _conv_trainer(out: Path, seen: list, **run) -> engine.Trainer:
    def loss_fn(net, batch, ctx):
        logits = net(batch['x'])
        seen.append({'threads': torch.get_num_threads(), 'x_shape': tuple(batch['x'].shape),
                     'labels_shape': tuple(batch['labels'].shape),
                     'channels_last': batch['x'].is_contiguous(memory_format=torch.channels_last),
                     'logits_dtype': logits.dtype})
        return nn.functional.cross_entropy(logits.float(), batch['labels']), {}

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 1))
    run = {'ckpt_every': 10, 'steps': 4, **run}
    cfg = engine.RunConfig(batch_size=2, num_workers=0, log_every=1, device='cpu',
                           progress=False, **run)
    return engine.Trainer(model, loss_fn, ConvSet(), cfg, engine.OptimConfig(lr=0.01), out,
                          {'what': 'conv'})


def test_trainer_applies_the_thread_policy_and_records_it(tmp_path):
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        seen: list = []
        _conv_trainer(tmp_path / 'run', seen, threads=1).fit()
        assert {s['threads'] for s in seen} == {1}
        record = assert_thread_policy_applied(tmp_path / 'run', threads=1)
        assert record['loader_workers'] == 0 and record['amp'] == 'off'
    finally:
        torch.set_num_threads(before)


def test_trainer_channels_last_bf16_and_low_resolution_phase(tmp_path):
    before = torch.get_num_threads()
    try:
        seen: list = []
        trainer = _conv_trainer(tmp_path / 'run', seen, threads=1, channels_last=True,
                                amp='bf16', lowres_steps=2, lowres_scale=0.5)
        result = trainer.fit()
    finally:
        torch.set_num_threads(before)
    assert result.step == 4
    assert all(s['channels_last'] for s in seen)
    assert all(s['logits_dtype'] == torch.bfloat16 for s in seen)
    assert [s['x_shape'] for s in seen] == [(2, 3, 4, 6)] * 2 + [(2, 3, 8, 12)] * 2
    assert [s['labels_shape'] for s in seen] == [(2, 4, 6)] * 2 + [(2, 8, 12)] * 2
    assert json.loads((tmp_path / 'run' / 'machine.json').read_text())['amp'] == 'bfloat16'
    assert next(trainer.model.parameters()).is_contiguous(memory_format=torch.channels_last)


def test_scale_maps_keeps_label_values_and_other_entries():
    labels = torch.tensor([[[0, 0, 3, 3], [0, 0, 3, 3]]])
    batch = {'x': torch.zeros(1, 1, 2, 4), 'labels': labels, 'presence': torch.ones(1, 4),
             'index': torch.tensor([0])}
    out = engine.scale_maps(batch, 0.5)
    assert out['labels'].dtype == labels.dtype and out['labels'].tolist() == [[[0, 3]]]
    assert out['x'].shape == (1, 1, 1, 2)
    assert out['presence'].shape == (1, 4)  # not an image: unchanged


def test_autocast_dtype_modes():
    cpu = torch.device('cpu')
    assert machine.autocast_dtype('off', cpu) is None
    assert machine.autocast_dtype('bf16', cpu) is torch.bfloat16
    assert machine.autocast_dtype('auto', cpu) is (torch.bfloat16 if machine.cpu_has_bf16()
                                                   else None)
    assert machine.autocast_dtype('auto', torch.device('cuda', 0)) is None
    with pytest.raises(ValueError, match='amp'):
        machine.autocast_dtype('fp8', cpu)


def test_parse_set_values_and_errors():
    assert engine.parse_set(['run.threads=1', 'loss.class_weighting=none', 'a=[1, 2]']) == {
        'run': {'threads': 1}, 'loss': {'class_weighting': 'none'}, 'a': [1, 2]}
    assert engine.parse_set(['x.y=1', 'x.y=2']) == {'x': {'y': 2}}
    with pytest.raises(ValueError, match='KEY=VALUE'):
        engine.parse_set(['threads'])


def test_resume_is_exact_with_channels_last_and_bf16(tmp_path):
    """An interrupted run on the fast path (NHWC, bf16 autocast, one thread) resumes to the same
    weights as an uninterrupted one."""
    before = torch.get_num_threads()
    fast = {'threads': 1, 'channels_last': True, 'amp': 'bf16', 'ckpt_every': 2}
    try:
        full = _conv_trainer(tmp_path / 'full', [], **fast)
        full.fit()
        cut = _conv_trainer(tmp_path / 'cut', [], **fast)
        original = cut.loss_fn

        def crash_at_3(net, batch, ctx):
            if ctx.step == 3:
                raise KeyboardInterrupt('interrupted')
            return original(net, batch, ctx)

        cut.loss_fn = crash_at_3
        with pytest.raises(KeyboardInterrupt):
            cut.fit()
        resumed = _conv_trainer(tmp_path / 'cut', [], **fast)
        result = resumed.fit()
    finally:
        torch.set_num_threads(before)
    assert result.resumed_from == 2 and result.step == 4
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values(),
                    strict=True):
        assert torch.equal(a, b)
