"""RobotSeg model: SEMA formula, bounded memory, reset, token clustering, streaming, checkpoints,
and the ROS-free stream logic (scene cuts, stamp jumps, overlay)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rmseg_ros.models.robotseg import (
    MemoryBank,
    MemoryEntry,
    RobotSegConfig,
    RobotSegModel,
    RobotSegTracker,
    canny_edges,
    cluster_tokens,
    load_robotseg,
    prepare_frame,
    save_robotseg,
    sema_modulate,
)
from rmseg_ros.models.robotseg.sema import SEMA
from rmseg_ros.pipeline.robotseg_stream import (
    RobotSegStream,
    SceneCutDetector,
    StampJumpDetector,
    overlay,
)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models: one thread is as fast, and spares the shared cores (restored after)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


TINY = dict(widths=(8, 8, 16, 16), depths=(1, 1, 1, 1), dim=16, memory_dim=8, heads=2,
            attention_layers=1, upsample_dim=8, object_tokens=3)


def tiny_model(**kw) -> RobotSegModel:
    torch.manual_seed(0)
    return RobotSegModel(RobotSegConfig(**{**TINY, **kw})).eval()


def clip(n: int = 6, h: int = 48, w: int = 64, seed: int = 0) -> np.ndarray:
    """A dark background with a bright bar that rotates: a crude moving 'arm'."""
    import cv2

    rng = np.random.default_rng(seed)
    frames = []
    for t in range(n):
        img = (rng.random((h, w, 3)) * 40).astype(np.uint8)
        angle = 0.3 * t
        end = (int(w / 2 + 20 * np.cos(angle)), int(h - 20 * np.sin(angle) - 4))
        cv2.line(img, (w // 2, h - 2), end, (220, 220, 230), 5)
        frames.append(img)
    return np.stack(frames)


# ----------------------------------------------------------------------------- SEMA

def test_sema_modulation_formula_on_known_tensors() -> None:
    f = torch.tensor([[1.0, -2.0], [3.0, 0.5]])
    s = torch.tensor([[0.0, 1.0], [0.5, 0.25]])
    out = sema_modulate(f, s, 0.4)
    # by hand: f * (1 + 0.4 * s)
    expected = torch.tensor([[1.0, -2.0 * 1.4], [3.0 * 1.2, 0.5 * 1.1]])
    assert torch.allclose(out, expected)
    # S = 0 leaves the features unchanged, whatever alpha
    assert torch.equal(sema_modulate(f, torch.zeros_like(s), 7.0), f)


def test_sema_module_applies_the_formula_with_its_own_structure_map() -> None:
    torch.manual_seed(1)
    sema = SEMA(dim=8, memory_dim=4, heads=2, alpha=0.7).eval()
    feats = torch.randn(2, 12, 8)  # a 3 x 4 token grid
    edges = (torch.rand(2, 1, 48, 64) > 0.8).float()
    pos = torch.zeros(12, 8)
    mem = torch.randn(2, 5, 4)
    with torch.no_grad():
        out, s = sema(feats, edges, pos, mem, mem)
        assert s.shape == feats.shape
        assert float(s.min()) >= 0.0 and float(s.max()) <= 1.0
        assert torch.allclose(out, feats * (1 + 0.7 * s), atol=1e-6)
        # the structure map depends on the edges and on the memory
        _, s_edges = sema(feats, torch.zeros_like(edges), pos, mem, mem)
        _, s_mem = sema(feats, edges, pos, mem * 3, mem * 3)
    assert not torch.allclose(s, s_edges)
    assert not torch.allclose(s, s_mem)


def test_canny_edges_do_not_depend_on_the_light_level() -> None:
    import cv2

    frame = np.zeros((48, 64, 3), np.uint8)
    frame[:] = np.linspace(20, 60, 64, dtype=np.uint8)[None, :, None]  # smooth background
    cv2.line(frame, (32, 46), (50, 10), (220, 220, 230), 5)
    cv2.rectangle(frame, (5, 5), (15, 20), (120, 40, 40), -1)
    bright = canny_edges(frame)
    dark = canny_edges((frame * 0.25).astype(np.uint8))
    assert bright.dtype == np.uint8 and set(np.unique(bright)) <= {0, 1}
    assert bright.sum() > 0
    agree = (bright == dark).mean()
    assert agree > 0.97, agree


def test_prepare_frame_standardises_each_channel() -> None:
    frame = clip(1)[0]
    image, edges = prepare_frame(frame)
    assert image.shape == (3, 48, 64) and edges.shape == (1, 48, 64)
    assert np.allclose(image.mean((1, 2)), 0, atol=1e-4)
    assert np.allclose(image.std((1, 2)), 1, atol=1e-3)
    dark, _ = prepare_frame((frame // 4).astype(np.uint8))
    assert np.abs(dark - image).mean() < 0.1  # standardisation removes the light level


# ----------------------------------------------------------------------------- memory

def entry(n: int = 4, value: float = 0.0) -> MemoryEntry:
    return MemoryEntry(torch.full((1, n, 8), value), torch.ones(1, n), (2, 2))


def test_memory_bank_never_exceeds_k() -> None:
    bank = MemoryBank(3)
    for i in range(10):
        bank.append(entry(value=float(i)))
        assert len(bank) == min(i + 1, 3)
    assert [float(e.features[0, 0, 0]) for e in bank] == [7.0, 8.0, 9.0]  # newest kept
    with pytest.raises(ValueError):
        MemoryBank(0)


@pytest.mark.parametrize('k', [1, 2, 4])
def test_tracker_memory_never_exceeds_k_and_reset_clears_it(k: int) -> None:
    model = tiny_model(memory_size=4)
    tracker = RobotSegTracker(model, memory_size=k)
    frames = clip(7)
    sizes = []
    for f in frames:
        mask = tracker.step(f)
        assert mask.shape == f.shape[:2] and mask.dtype == np.uint8
        sizes.append(len(tracker.memory))
    assert sizes == [min(i + 1, k) for i in range(7)]
    assert tracker.frames_since_reset == 7
    tracker.reset()
    assert len(tracker.memory) == 0 and tracker.frames_since_reset == 0
    assert tracker.last_prob is None


def test_reset_restores_the_first_frame_output() -> None:
    """After reset() the stream behaves exactly like a fresh one (no hidden state)."""
    model = tiny_model()
    frames = clip(5)
    tracker = RobotSegTracker(model)
    first = tracker.step_prob(frames[0])
    for f in frames[1:]:
        tracker.step_prob(f)
    tracker.reset()
    again = tracker.step_prob(frames[0])
    np.testing.assert_allclose(again, first, atol=1e-6)
    # with memory, the same frame gives another answer (the memory is used)
    assert np.abs(tracker.step_prob(frames[0]) - first).max() > 1e-4


def test_tracker_rejects_k_above_the_trained_one() -> None:
    with pytest.raises(ValueError):
        RobotSegTracker(tiny_model(memory_size=3), memory_size=4)


def test_tracker_resizes_to_the_model_input_and_back() -> None:
    tracker = RobotSegTracker(tiny_model(), input_hw=(32, 48))
    frame = clip(1, h=60, w=80)[0]
    assert tracker.step(frame).shape == (60, 80)
    assert tracker.memory.entries[0].hw == (1, 2)  # 32x48 / 16 = 2x3 tokens, pooled by 2


# ----------------------------------------------------------------------------- RPG

@pytest.mark.parametrize('k', [1, 3, 5])
def test_cluster_tokens_returns_the_requested_number(k: int) -> None:
    torch.manual_seed(0)
    # three well separated blobs
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    points = torch.cat([c + 0.1 * torch.randn(20, 2) for c in centres])
    tokens = cluster_tokens(points, k)
    assert tokens.shape == (k, 2)
    if k == 3:  # each blob found: every centre has a centroid within 0.5
        d = torch.cdist(centres, tokens)
        assert float(d.min(1).values.max()) < 0.5


def test_cluster_tokens_with_fewer_points_than_tokens() -> None:
    points = torch.randn(2, 4)
    assert cluster_tokens(points, 5).shape == (2, 4)
    assert cluster_tokens(points[:0], 5).shape == (0, 4)


def test_rpg_gives_class_plus_object_tokens_from_masked_memory() -> None:
    model = tiny_model(object_tokens=3)
    rpg = model.rpg
    assert rpg.num_tokens == 3 + 3  # arm, gripper, robot + 3 object tokens
    empty = rpg([], 2)
    assert empty.shape == (2, 6, 16)
    # no memory: object tokens are the learned "no object" token
    assert torch.allclose(empty[:, 3:], rpg.empty_object.expand(2, 3, 16))
    feats = torch.randn(2, 10, 8)
    mask = torch.zeros(2, 10)
    mask[0, :6] = 1.0  # stream 0 saw a robot, stream 1 did not
    tokens = rpg([MemoryEntry(feats, mask, (2, 5))], 2)
    assert tokens.shape == (2, 6, 16)
    assert not torch.allclose(tokens[0, 3:], empty[0, 3:])
    assert torch.allclose(tokens[1, 3:], empty[1, 3:])
    # class tokens are the learned ones, the same for both streams
    assert torch.allclose(tokens[:, :3], rpg.class_tokens.expand(2, 3, 16))


def test_random_prompt_mode_ignores_the_learned_tokens() -> None:
    model = tiny_model(prompt_mode='random')
    torch.manual_seed(3)
    a = model.rpg([], 1)
    torch.manual_seed(4)
    b = model.rpg([], 1)
    assert a.shape == (1, 6, 16) and not torch.allclose(a, b)


# ----------------------------------------------------------------------------- model

def test_model_trains_through_memory_and_prompts() -> None:
    """Gradients of a later frame's output reach the memory encoder and RPG projections."""
    model = tiny_model().train()
    frames = clip(3)
    prep = [prepare_frame(f) for f in frames]
    images = torch.from_numpy(np.stack([p[0] for p in prep]))[None]
    edges = torch.from_numpy(np.stack([p[1] for p in prep]))[None]
    logits = model(images, edges)
    assert logits.shape == (1, 3, 1, 48, 64)
    model.zero_grad()
    logits[0, 2].sum().backward()
    assert model.memory_encoder.out.weight.grad.abs().sum() > 0
    assert model.sema.alpha.grad is not None
    assert model.rpg.class_tokens.grad.abs().sum() > 0


def test_checkpoint_round_trip(tmp_path) -> None:
    model = tiny_model(use_sema=False)
    path = tmp_path / 'robotseg.safetensors'
    save_robotseg(path, model, (48, 64), {'variant': 'no_sema'})
    loaded, meta = load_robotseg(path)
    assert meta['arch'] == 'robotseg' and meta['input_hw'] == [48, 64]
    assert meta['extra']['variant'] == 'no_sema' and loaded.sema is None
    frame = clip(1)[0]
    a = RobotSegTracker(model).step_prob(frame)
    b = RobotSegTracker(loaded).step_prob(frame)
    np.testing.assert_allclose(a, b, atol=1e-6)


# ----------------------------------------------------------------------------- stream

def test_scene_cut_detector() -> None:
    frames = clip(4)
    det = SceneCutDetector(0.3)
    assert not det.update(frames[0])
    assert not det.update(frames[1])  # the arm moved a little
    assert not det.update((frames[2] * 0.5).astype(np.uint8))  # darker: not a cut
    other = np.full_like(frames[0], 200)
    other[:, :20] = 0
    assert det.update(other)
    assert det.last_score > 0.3
    assert not SceneCutDetector(0.0).update(frames[0])  # 0 disables


def test_stamp_jump_detector() -> None:
    det = StampJumpDetector(tolerance_ns=5)
    assert [det.update(s) for s in (100, 200, 197, 150, 400)] == [False, False, False, True,
                                                                  False]


def test_stream_resets_on_scene_cut_and_stamp_jump() -> None:
    stream = RobotSegStream(RobotSegTracker(tiny_model(memory_size=3)), scene_cut_threshold=0.3)
    frames = clip(5)
    for i, f in enumerate(frames):
        res = stream.process(f, 1000 + i)
        assert res.reset_reason is None
    assert stream.memory_frames == 3
    res = stream.process(frames[0], 10)  # stamps went backwards: a replay restarted
    assert res.reset_reason == 'stamp_jump' and res.memory_frames == 1
    stream.process(frames[1], 20)
    cut = np.full_like(frames[0], 230)
    res = stream.process(cut, 30)
    assert res.reset_reason == 'scene_cut' and res.memory_frames == 1
    assert stream.reset() == 1 and stream.memory_frames == 0
    assert stream.stats.resets == {'manual': 1, 'scene_cut': 1, 'stamp_jump': 1}
    med, mx = stream.stats.latency_summary()
    assert 0 < med <= mx


def test_overlay_blends_only_the_mask() -> None:
    rgb = np.full((4, 5, 3), 100, np.uint8)
    mask = np.zeros((4, 5), np.uint8)
    mask[1, 2] = 1
    out = overlay(rgb, mask, (200, 0, 100), 0.5)
    assert out[1, 2].tolist() == [150, 50, 100]
    keep = np.ones((4, 5), bool)
    keep[1, 2] = False
    assert (out[keep] == 100).all()
