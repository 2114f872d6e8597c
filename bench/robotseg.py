"""Per-frame time of streaming RobotSeg (`RobotSegTracker.step`) at 240x320 on this machine.

One frame = the whole node-side step: per-image standardisation + Canny, image encoder, memory
attention over a full memory (K frames), SEMA, RPG (clustering of masked memory), mask decoder,
memory encoder, mask at the frame size. The model is the config's (training/configs/
robotseg.yaml) with random weights unless --checkpoint is given; frames are a synthetic moving
"arm" clip; the memory is filled (K frames) before timing. Prints the median of `--runs` steps
after `--warmup`, plus min / p90, the time at the training resolution and a fixed 512^3 matmul
(to compare runs taken under different machine load).

Prints one `figure: value unit` line per figure; exits 1 if it could not measure.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def synthetic_clip(n: int, h: int, w: int):
    import cv2
    import numpy as np

    rng = np.random.default_rng(0)
    base = (rng.random((h, w, 3)) * 60 + 40).astype(np.uint8)
    frames = []
    for t in range(n):
        img = base.copy()
        a = 0.15 * t
        elbow = (int(w * 0.5 + 0.2 * w * np.cos(a)), int(h * 0.55 - 0.2 * h * np.sin(a)))
        cv2.line(img, (w // 2, h - 5), elbow, (230, 230, 235), max(3, w // 40))
        cv2.line(img, elbow, (elbow[0] + w // 8, elbow[1] - h // 10), (40, 40, 45), max(3, w // 50))
        frames.append(img)
    return frames


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--runs', type=int, default=40, help='timed frames (>= 10)')
    parser.add_argument('--warmup', type=int, default=10, help='untimed frames (memory fills)')
    parser.add_argument('--threads', type=int, default=2, help='torch threads')
    parser.add_argument('--height', type=int, default=240)
    parser.add_argument('--width', type=int, default=320)
    parser.add_argument('--config', default=None, help='RobotSeg pipeline config (model section)')
    parser.add_argument('--checkpoint', default=None, help='time a trained checkpoint instead')
    args = parser.parse_args(argv)
    if args.runs < 10:
        parser.error('--runs must be >= 10')
    try:
        import torch

        from bench.timing import median_ms
        from rmseg_ros.models.robotseg import (
            RobotSegConfig,
            RobotSegModel,
            RobotSegTracker,
            load_robotseg,
        )

        torch.set_num_threads(args.threads)
        torch.manual_seed(0)
        if args.checkpoint:
            model, meta = load_robotseg(args.checkpoint)
            train_hw = tuple(meta['input_hw'])
        else:
            from training.robotseg.config import load_config

            cfg, _ = load_config(args.config)
            model = RobotSegModel(RobotSegConfig.from_dict(cfg.model))
            train_hw = cfg.data.hw
        params = sum(p.numel() for p in model.parameters()) / 1e6  # before BatchNorm folding
        k = model.config.memory_size
        frames = synthetic_clip(args.warmup + args.runs + k + 1, args.height, args.width)

        def stepper(hw):
            tracker = RobotSegTracker(model, device='cpu', input_hw=hw)
            it = iter(frames * 1000)
            for _ in range(k):  # a full memory: the steady state of a stream
                tracker.step(next(it))

            def step() -> None:
                tracker.step(next(it))
            return step, tracker

        step, tracker = stepper(None)
        times = []
        for _ in range(args.warmup):
            step()
        for _ in range(args.runs):
            t0 = time.perf_counter()
            step()
            times.append((time.perf_counter() - t0) * 1e3)
        if len(tracker.memory) != k:
            raise RuntimeError(f'memory holds {len(tracker.memory)} frames, expected K={k}')
        train_step, _ = stepper(train_hw)
        train_ms = median_ms(train_step, max(10, args.runs // 2), args.warmup)
        a = torch.randn(512, 512)
        calib = median_ms(lambda: a @ a, 20, 3)
    except Exception as exc:  # report, exit non-zero: the figure could not be measured
        print(f'error: {type(exc).__name__}: {exc}', file=sys.stderr)
        return 1
    times.sort()
    p90 = times[min(len(times) - 1, int(0.9 * len(times)))]
    print(f'{args.runs} frames after {args.warmup} warm-up, memory K={k} full, '
          f'{args.threads} threads, {args.height}x{args.width}; load average '
          f'{os.getloadavg()[0]:.2f}', file=sys.stderr)
    print(f'robotseg_frame_ms: {statistics.median(times):.2f} ms')
    print(f'robotseg_frame_min_ms: {times[0]:.2f} ms')
    print(f'robotseg_frame_p90_ms: {p90:.2f} ms')
    print(f'robotseg_frame_ms_at_{train_hw[0]}x{train_hw[1]}: {train_ms:.2f} ms')
    print(f'robotseg_params_m: {params:.3f} M')
    print(f'calibration_matmul_ms: {calib:.3f} ms')
    return 0


if __name__ == '__main__':
    sys.exit(main())
