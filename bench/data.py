"""Data benchmark: simulator speed and cached-sample throughput.

Prints (DESIGN.md section 7 format):
  sim_frames_per_s: frames rendered and written per second (320x240 RGB + depth + labels, 16x512
                    LiDAR, events), median over scenes, one process
  bag_to_samples_per_s: samples per second out of the cached shards through ShardDataset (four
                    modalities at 320x240, no augmentation), median of passes
  bag_to_samples_aug_per_s: the same with flip + scale/crop + modality dropout
Target: bag_to_samples_per_s >= 200.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from timing import median_ms

from training.data.bag_samples import DatasetConfig
from training.data.cli import build_cache
from training.data.dataset import AugmentConfig, ShardDataset
from training.sim.config import load_config
from training.sim.record import record_scene


def sample_rate(dataset: ShardDataset, passes: int) -> float:
    """Samples per second of the median pass over the whole dataset."""
    def one_pass() -> None:
        for i in range(len(dataset)):
            dataset[i]
    return len(dataset) / (median_ms(one_pass, passes, warmup=0) * 1e-3)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--scenes', type=int, default=3, help='scenes rendered for the sim rate')
    parser.add_argument('--frames', type=int, default=20, help='frames per scene')
    parser.add_argument('--passes', type=int, default=5, help='passes over the cached samples')
    args = parser.parse_args()
    if min(args.scenes, args.frames, args.passes) < 1:
        parser.error('--scenes, --frames and --passes must be >= 1')
    try:
        with tempfile.TemporaryDirectory() as tmp:
            sim_cfg = load_config()
            rates, bags = [], []
            for seed in range(args.scenes):
                result = record_scene(seed, sim_cfg, Path(tmp) / 'bags', frames=args.frames)
                rates.append(result.frames_per_s)
                bags.append(Path(result.path))
            print(f'sim_frames_per_s: {statistics.median(rates):.2f} frames/s')
            config = DatasetConfig.load()
            summary = build_cache(bags, Path(tmp) / 'cache', config)
            if summary['failed'] or summary['samples'] == 0:
                raise RuntimeError(f'caching failed: {summary}')
            shards = sorted((Path(tmp) / 'cache').iterdir())
            frontend = config.frontend()
            plain = ShardDataset(shards, frontend)
            print(f'bag_to_samples_per_s: {sample_rate(plain, args.passes):.0f} samples/s')
            augmented = ShardDataset(shards, frontend, AugmentConfig(
                flip=True, scale_range=(1.0, 1.5), modality_dropout=0.5))
            print(f'bag_to_samples_aug_per_s: {sample_rate(augmented, args.passes):.0f} '
                  'samples/s')
    except Exception as exc:  # a benchmark that cannot measure must say so and fail
        print(f'bench/data.py: could not measure: {exc}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
