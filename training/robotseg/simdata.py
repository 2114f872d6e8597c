"""Render the RobotSeg train / held-out test videos with the simulator.

    python -m training.robotseg.simdata [--sets FILE] [--root DIR] [--only train test] [--smoke]

Each set of the sets file (training/configs/robotseg_sim.yaml) is its `config` merged over the
simulator's base config (rmseg_ros.config.merge_config: a set's `robots` table replaces the
default one), rendered by `rmseg-train sim` (resumable: complete scenes are kept) into
<root>/<set>/; the merged config is kept beside it as <root>/<set>.sim.yaml.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from rmseg_ros.config import load_yaml, merge_config
from training.sim.config import SimConfig

DEFAULT_SETS = Path(__file__).resolve().parents[1] / 'configs' / 'robotseg_sim.yaml'


def set_config(spec: dict, name: str) -> dict:
    """The simulator config (plain dict) of set `name` of a loaded sets file."""
    base = load_yaml(spec.get('base', 'training/configs/sim.yaml'))
    return merge_config(base, (spec['sets'][name] or {}).get('config'), SimConfig)


def render_sets(sets_file: str | Path | None, root: str | Path, only: list[str] | None = None,
                smoke: bool = False) -> dict[str, Path]:
    """Render every (or the `only`) set; returns set name -> output directory."""
    from training.sim import cli as sim_cli

    spec = load_yaml(sets_file or DEFAULT_SETS)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}
    for name, entry in (spec.get('sets') or {}).items():
        if only and name not in only:
            continue
        merged = set_config(spec, name)
        cfg_path = root / f'{name}.sim.yaml'
        cfg_path.write_text(yaml.safe_dump(merged, sort_keys=False))
        scenes, frames = int(entry.get('scenes', 1)), int(entry.get('frames', 30))
        if smoke:
            scenes, frames = 1, 6
        args = argparse.Namespace(config=str(cfg_path), out=str(root / name), smoke=smoke)
        extra = ['--scenes', str(scenes), '--frames', str(frames),
                 '--seed', str(int(entry.get('seed', 0))), '--no-progress']
        if sim_cli.run(args, extra) != 0:
            raise RuntimeError(f'rendering set {name!r} failed')
        out[name] = root / name
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog='python -m training.robotseg.simdata',
                                 description=__doc__.splitlines()[0])
    ap.add_argument('--sets', default=None, help='sets file (default robotseg_sim.yaml)')
    ap.add_argument('--root', default='data/robotseg')
    ap.add_argument('--only', nargs='+', default=None)
    ap.add_argument('--smoke', action='store_true', help='1 scene x 6 frames per set')
    args = ap.parse_args(argv)
    for name, path in render_sets(args.sets, args.root, args.only, args.smoke).items():
        print(f'{name}: {path}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
