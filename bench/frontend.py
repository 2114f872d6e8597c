"""Sensor front-end benchmark: synchroniser throughput and model-input build time.

Prints (DESIGN.md section 7 format):
  sync_msgs_per_s: messages per second through ModalitySynchronizer.add, 4 topics at
                   30/15/10/20 Hz with +-3 ms jitter, pivot mode with timeouts (median of runs)
  model_input_build_ms: median time to build the full model input (240x320) from a 640x480 RGB
                   + 16UC1 depth, a 32x1024 LiDAR cloud and 50k events (decode excluded)
Targets: >= 20000 msgs/s, <= 8 ms.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np
from timing import median_ms

from rmseg_ros.camera import CameraIntrinsics
from rmseg_ros.frontend.preprocess import EventBatch, FrontendConfig, RawFrame, build_model_input
from rmseg_ros.runtime import tune_malloc
from rmseg_ros.sync.core import ModalitySynchronizer, SyncConfig

RATES_HZ = {'rgb': 30, 'depth': 15, 'lidar': 10, 'event': 20}


def sync_stream(seconds: float, seed: int = 0) -> list[tuple[str, int]]:
    rng = np.random.default_rng(seed)
    items = []
    for modality, rate in RATES_HZ.items():
        n = int(seconds * rate)
        stamps = (1.0 + np.arange(n) / rate) * 1e9 + rng.integers(-3_000_000, 3_000_000, n)
        items += [(int(s), modality) for s in stamps]
    items.sort()
    return [(m, s) for s, m in items]


def bench_sync(repeat: int) -> float:
    stream = sync_stream(2000.0)
    config = SyncConfig(timeouts={'depth': 0.5, 'lidar': 0.5, 'event': 0.5})
    rates = []
    for _ in range(repeat):
        sync = ModalitySynchronizer(config)
        add = sync.add
        sets = 0
        t0 = time.perf_counter()
        for modality, stamp in stream:
            sets += len(add(modality, stamp, None))
        rates.append(len(stream) / (time.perf_counter() - t0))
        if sets < 0.95 * RATES_HZ['rgb'] * 2000:
            raise RuntimeError(f'synchroniser emitted only {sets} sets')
    return statistics.median(rates)


def full_frame() -> RawFrame:
    rng = np.random.default_rng(1)
    camera = CameraIntrinsics.from_fov(640, 480, 90.0)
    az = np.linspace(-np.pi, np.pi, 1024, endpoint=False)
    el = np.deg2rad(np.linspace(-15, 15, 32))
    az, el = np.meshgrid(az, el)
    r = rng.uniform(2.0, 30.0, az.shape)
    xyz = np.stack([r * np.cos(el) * np.cos(az), r * np.cos(el) * np.sin(az), r * np.sin(el)],
                   axis=-1).reshape(-1, 3).astype(np.float32)
    T_cam_lidar = np.array([[0, -1, 0, 0], [0, 0, -1, 0], [1, 0, 0, 0], [0, 0, 0, 1]], float)
    n_ev = 50_000
    # the dtypes frame_from_messages gives for the standard event cloud (x, y uint16; p int8)
    events = EventBatch(rng.integers(0, 640, n_ev, dtype=np.uint16),
                        rng.integers(0, 480, n_ev, dtype=np.uint16),
                        np.sort(rng.integers(0, 50_000_000, n_ev)),
                        rng.choice(np.array([-1, 1], np.int8), n_ev))
    return RawFrame(
        stamp_ns=0, camera=camera,
        rgb=rng.integers(0, 255, (480, 640, 3)).astype(np.uint8),
        depth=rng.integers(200, 10_000, (480, 640)).astype(np.uint16), depth_encoding='16UC1',
        lidar_xyz=xyz, lidar_intensity=rng.uniform(0, 255, len(xyz)).astype(np.float32),
        T_cam_lidar=T_cam_lidar, events=events)


def bench_model_input(repeat: int) -> float:
    frame = full_frame()
    cfg = FrontendConfig(height=240, width=320)
    result = build_model_input(frame, cfg)
    if not result.presence.all():
        raise RuntimeError(f'not every modality present: {result.degraded}')
    return median_ms(lambda: build_model_input(frame, cfg), repeat, warmup=0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--repeat', type=int, default=50, help='runs of the model-input build')
    parser.add_argument('--sync-repeat', type=int, default=3, help='runs of the sync stream')
    args = parser.parse_args()
    if args.repeat < 1 or args.sync_repeat < 1:
        parser.error('repeats must be >= 1')
    tune_malloc()  # as the nodes do: reuse large buffers instead of page-faulting them in
    try:
        print(f'sync_msgs_per_s: {bench_sync(args.sync_repeat):.0f} msgs/s')
        print(f'model_input_build_ms: {bench_model_input(args.repeat):.2f} ms')
    except Exception as exc:  # a benchmark that cannot measure must say so and fail
        print(f'bench/frontend.py: could not measure: {exc}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
