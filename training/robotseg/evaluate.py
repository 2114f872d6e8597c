"""Evaluation on held-out videos: J&F per clip of RobotSeg checkpoints and of the flow
baseline, all on the same videos at the same resolution.

Protocol: each test video (one scene) is one clip, processed from an empty memory. RobotSeg is
prompt-free (it gets no mask at all); the flow baseline gets frame 0's true mask. Frame 0 is
therefore left out of the score of every method (evaluate.skip_first).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rmseg_ros.models.robotseg import RobotSegTracker, load_robotseg

from .clips import Video
from .config import EvalConfig, FlowConfig
from .flow import propagate_mask
from .metrics import clip_jf


def summarize(clips: dict[str, dict[str, float]]) -> dict[str, Any]:
    """Means over clips (each clip weighs the same), in [0, 1]."""
    keys = ('J', 'F', 'JF')
    return {**{k: float(np.mean([c[k] for c in clips.values()])) for k in keys},
            'clips': clips, 'num_clips': len(clips)}


def predict_video(tracker: RobotSegTracker, video: Video) -> tuple[list[np.ndarray], float]:
    """Masks of every frame from a reset tracker, and the median ms per frame."""
    tracker.reset()
    preds, times = [], []
    for frame in video.frames:
        t0 = time.perf_counter()
        preds.append(tracker.step(frame))
        times.append(time.perf_counter() - t0)
    return preds, float(np.median(times) * 1e3)


def evaluate_checkpoint(path: str | Path, videos: list[Video], ev: EvalConfig
                        ) -> dict[str, Any]:
    model, meta = load_robotseg(path, ev.device)
    hw = tuple(meta['input_hw'])
    tracker = RobotSegTracker(model, device=ev.device, input_hw=hw, threshold=ev.threshold)
    clips, ms = {}, []
    for i, video in enumerate(videos):
        torch.manual_seed(ev.seed + i)  # the random tokens of the without-RPG ablation
        preds, frame_ms = predict_video(tracker, video)
        clips[video.name] = clip_jf(preds, list(video.masks), ev.skip_first,
                                    ev.boundary_tolerance)
        ms.append(frame_ms)
    out = summarize(clips)
    out.update({'checkpoint': str(path), 'variant': meta.get('extra', {}).get('variant'),
                'input_hw': list(hw), 'frame_ms_median': float(np.median(ms))})
    return out


def evaluate_given_masks(videos: list[Video], given: list[Video], ev: EvalConfig
                         ) -> dict[str, Any]:
    """J&F of masks made without the model (the kinematic self-filter), matched to the true
    ones by video name and stamp; a frame with no given mask scores as an empty prediction."""
    by_name = {v.name: v for v in given}
    clips = {}
    for video in videos:
        g = by_name.get(video.name)
        lookup = dict(zip(g.stamps.tolist(), g.masks, strict=True)) if g is not None else {}
        empty = np.zeros_like(video.masks[0])
        preds = [lookup.get(int(s), empty) for s in video.stamps]
        clips[video.name] = clip_jf(preds, list(video.masks), ev.skip_first,
                                    ev.boundary_tolerance)
    return summarize(clips)


def evaluate_flow(videos: list[Video], ev: EvalConfig, flow: FlowConfig) -> dict[str, Any]:
    clips = {}
    for video in videos:
        preds = propagate_mask(video.frames, video.masks[0], flow)
        clips[video.name] = clip_jf(preds, list(video.masks), ev.skip_first,
                                    ev.boundary_tolerance)
    return summarize(clips)
