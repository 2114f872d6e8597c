"""`rmseg-train sim`: render N scenes x M frames into rosbag2 recordings.

    rmseg-train sim --out DIR [--config FILE] [--smoke] --scenes N --frames M --seed S
                    [--failures NAME[:key=value,...] ...] [--storage mcap|sqlite3]
                    [--compression none|zstd]
                    [--split all|train|val|test] [--width W --height H] [--force]

Scene seeds are S, S+1, ... (with --split, only the seeds that belong to that split, until N
are found); each scene goes to DIR/<split>/scene_<seed>/ by `record.split_of(seed)`. Scenes whose
bag is complete are kept (a run resumes), unless --force. DIR gets the resolved config
(sim_config.yaml) and manifest.json (one entry per scene: seed, split, path, counts, failures).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import yaml

from rmseg_ros.classes import ClassTable
from rmseg_ros.config import to_dict
from training.sim.config import SimConfig, load_config
from training.sim.record import (
    bag_path,
    is_complete,
    parse_failures,
    record_scene,
    scene_seeds,
)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog='rmseg-train sim', description=__doc__.splitlines()[0])
    ap.add_argument('--scenes', type=int, default=1)
    ap.add_argument('--frames', type=int, default=50)
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--failures', nargs='+', action='extend', default=[],
                    help='NAME or NAME:key=value,key=value (lists with +: '
                         'drop:modalities=lidar+rgb,gap_s=2)')
    ap.add_argument('--storage', choices=('mcap', 'sqlite3'), default=None)
    ap.add_argument('--compression', choices=('none', 'zstd'), default=None)
    ap.add_argument('--split', choices=('all', 'train', 'val', 'test'), default='all')
    ap.add_argument('--width', type=int, default=None)
    ap.add_argument('--height', type=int, default=None)
    ap.add_argument('--rate', type=float, default=None, help='camera rate in Hz')
    ap.add_argument('--camera-motion', choices=('random', 'static', 'moving'), default=None)
    ap.add_argument('--no-robot-motion', action='store_true')
    ap.add_argument('--force', action='store_true', help='re-render scenes that exist')
    ap.add_argument('--no-progress', action='store_true')
    return ap


def resolve_config(path: str | None, opts: argparse.Namespace, smoke: bool) -> SimConfig:
    cfg = load_config(path)
    if smoke:
        cfg.camera.width, cfg.camera.height = 160, 120
    if opts.width:
        cfg.camera.width = opts.width
    if opts.height:
        cfg.camera.height = opts.height
    if opts.rate:
        cfg.camera.rate_hz = opts.rate
    if opts.camera_motion:
        cfg.scene.camera_motion = opts.camera_motion
    if opts.no_robot_motion:
        cfg.scene.robot_motion = False
    if opts.storage:
        cfg.storage = opts.storage
    if opts.compression:
        cfg.compression = opts.compression
    return cfg


def write_manifest(out: Path) -> list[dict[str, Any]]:
    """manifest.json from every complete scene's sidecar under `out`."""
    entries = []
    for sidecar in sorted(out.glob('*/scene_*.json')):
        if sidecar.with_suffix('').is_dir():
            entries.append(json.loads(sidecar.read_text()))
    (out / 'manifest.json').write_text(json.dumps({'scenes': entries}, indent=1))
    return entries


def run(args: argparse.Namespace, extra: list[str]) -> int:
    opts = build_parser().parse_args(extra)
    if not args.out:
        sys.stderr.write('rmseg-train sim: --out DIR is required\n')
        return 2
    smoke = bool(getattr(args, 'smoke', False))
    if smoke and '--frames' not in extra:
        opts.frames = 6
    cfg = resolve_config(args.config, opts, smoke)
    failures = parse_failures(opts.failures, cfg.failures)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / 'sim_config.yaml').write_text(yaml.safe_dump(
        {**to_dict(cfg), 'run': {'scenes': opts.scenes, 'frames': opts.frames, 'seed': opts.seed,
                                 'split': opts.split, 'failures': [asdict(f) for f in failures]}},
        sort_keys=False))
    seeds = scene_seeds(opts.seed, opts.scenes, opts.split, cfg.split)
    todo = [s for s in seeds if opts.force or not is_complete(out, s, cfg.split)]
    classes = ClassTable.load()
    from tqdm import tqdm

    bar = tqdm(total=len(todo) * opts.frames, unit='frame', disable=opts.no_progress,
               desc='sim')
    t0, frames = time.perf_counter(), 0
    try:
        for seed in todo:
            bar.set_postfix_str(f'scene {seed}')
            record_scene(seed, cfg, out, failures, cfg.storage, opts.frames, classes,
                         on_frame=bar.update)
            frames += opts.frames
    finally:
        bar.close()
    elapsed = time.perf_counter() - t0
    write_manifest(out)
    skipped = len(seeds) - len(todo)
    rate = frames / elapsed if frames else 0.0
    print(f'sim: {len(todo)} scene(s) x {opts.frames} frames -> {out} '
          f'({skipped} already complete); sim_frames_per_s: {rate:.2f}')
    for seed in seeds:
        print(f'  {bag_path(out, seed, cfg.split)}')
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m training.sim.cli --out DIR ...` (same options; --help lists them all)."""
    ap = argparse.ArgumentParser(add_help=False)
    ap.add_argument('--config')
    ap.add_argument('--out')
    ap.add_argument('--smoke', action='store_true')
    argv = sys.argv[1:] if argv is None else argv
    if '-h' in argv or '--help' in argv:
        build_parser().print_help()
        print('\n  --config FILE, --out DIR, --smoke: as for every rmseg-train stage')
        return 0
    args, extra = ap.parse_known_args(argv)
    return run(args, extra)


if __name__ == '__main__':
    sys.exit(main())
