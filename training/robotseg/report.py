"""The RobotSeg results table: eval_*.json -> the `robotseg` section of docs/results.{json,md}.

    python -m training.robotseg.report [--runs runs/robotseg] [--docs docs]

Figures are J&F (and J, F) in %, means over the held-out clips; targets of the issue: RobotSeg
>= flow baseline + 10 points and >= 90% of the fully supervised model.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from training.results import write_section
from training.robotseg.simdata import DEFAULT_SETS

SECTION = 'robotseg'
ROWS = {  # eval file name -> (row label, figure prefix)
    'robotseg': ('RobotSeg, first-frame masks (cycle + semantic + patch)', 'robotseg'),
    'flow': ('flow baseline: frame 0 true mask + Farneback', 'flow'),
    'supervised': ('fully supervised (every frame labelled), upper bound', 'supervised'),
    'no_sema': ('ablation: without SEMA', 'no_sema'),
    'no_rpg': ('ablation: without RPG (random tokens)', 'no_rpg'),
    'no_cycle': ('ablation: without cycle loss', 'no_cycle'),
}


def _pct(v: float | None) -> float | None:
    return None if v is None else round(100.0 * float(v), 2)


def collect(runs: Path, sim_sets: Path = DEFAULT_SETS) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    for name, (_, key) in ROWS.items():
        path = runs / f'eval_{name}.json'
        if not path.exists():
            continue
        ev = json.loads(path.read_text())
        figures[f'{key}_jf'] = _pct(ev['JF'])
        figures[f'{key}_j'] = _pct(ev['J'])
        figures[f'{key}_f'] = _pct(ev['F'])
        per_clip = [c['JF'] for c in ev['clips'].values()]
        if len(per_clip) > 1:  # standard error of the clip mean: how much a row can move
            figures[f'{key}_jf_se'] = _pct(float(np.std(per_clip, ddof=1)
                                                 / np.sqrt(len(per_clip))))
        figures['test_clips'] = ev['num_clips']
        figures['test_frames_scored'] = sum(c['frames'] for c in ev['clips'].values())
        train = ev.get('train') or {}
        if train.get('step') is not None:
            figures[f'{key}_train_steps'] = train['step']
            figures[f'{key}_labelled_frames'] = train.get('labelled_frames')
            figures['train_frames'] = train.get('frames')
            figures['train_videos'] = train.get('videos')
        if 'input_hw' in ev:
            figures['eval_hw'] = ev['input_hw']
    if 'robotseg_jf' in figures and 'flow_jf' in figures:
        figures['robotseg_minus_flow'] = round(figures['robotseg_jf'] - figures['flow_jf'], 2)
    if 'robotseg_jf' in figures and figures.get('supervised_jf'):
        figures['robotseg_over_supervised'] = round(
            figures['robotseg_jf'] / figures['supervised_jf'], 3)
    if sim_sets.exists():
        sets = yaml.safe_load(sim_sets.read_text()).get('sets', {})
        figures['protocol'] = {k: {'scenes': v.get('scenes'), 'seed': v.get('seed'),
                                   **(v.get('config', {}).get('scene', {}))}
                               for k, v in sets.items()}
    return figures


def _describe(p: dict[str, Any]) -> str:
    robots = ', '.join(sorted(p.get('robots', {}))) or '?'
    light = p.get('brightness', ['?', '?'])
    return (f'{robots}; light level {light[0]}-{light[1]}; joint offsets up to '
            f'{p.get("joint_amplitude", "?")} rad; {p.get("scenes", "?")} scenes from seed '
            f'{p.get("seed", "?")}')


def markdown(f: dict[str, Any]) -> str:
    fmt = lambda v: '-' if v is None else f'{v:.2f}'  # noqa: E731
    hw = f.get('eval_hw') or ['?', '?']
    proto = f.get('protocol') or {}
    lines = [
        '## RobotSeg: prompt-free robot video segmentation from first-frame masks', '',
        f'Held-out sim videos: {f.get("test_clips", "?")} clips (one scene each, '
        f'{f.get("test_frames_scored", "?")} scored frames, frame 0 left out). '
        f'Test: {_describe(proto.get("test", {}))}. Train: {_describe(proto.get("train", {}))}'
        ' (training/configs/robotseg_sim.yaml). '
        f'Evaluated at {hw[0]}x{hw[1]}; J = region IoU, F = boundary F-measure (DAVIS '
        'tolerance 0.008 x diagonal), J&F their mean, in %, averaged over clips. RobotSeg and '
        'its ablations get no mask at test time; the flow baseline gets frame 0\'s true mask. '
        f'Training: {f.get("train_videos", "?")} videos ({f.get("train_frames", "?")} frames); '
        'first-frame rows see the mask of frame 0 of each 10-frame clip only '
        f'({f.get("robotseg_labelled_frames", "?")} labelled frames). '
        'Written by `python -m training.robotseg.report`.', '',
        '| model | train steps | labelled frames | J&F | s.e. (clips) | J | F |',
        '|---|---|---|---|---|---|---|']
    for _, (label, key) in ROWS.items():
        if f'{key}_jf' not in f:
            continue
        lines.append(f'| {label} | {f.get(f"{key}_train_steps", "-")} | '
                     f'{f.get(f"{key}_labelled_frames", "-")} | {fmt(f[f"{key}_jf"])} | '
                     f'{fmt(f.get(f"{key}_jf_se"))} | {fmt(f[f"{key}_j"])} | '
                     f'{fmt(f[f"{key}_f"])} |')
    if 'robotseg_minus_flow' in f:
        ok = f['robotseg_minus_flow'] >= 10
        lines += ['', f'RobotSeg - flow baseline: {f["robotseg_minus_flow"]:+.2f} points '
                  f'(target >= +10: {"met" if ok else "missed"}).']
    if 'robotseg_over_supervised' in f:
        ok = f['robotseg_over_supervised'] >= 0.9
        lines.append(f'RobotSeg / fully supervised: {100 * f["robotseg_over_supervised"]:.1f}% '
                     f'(target >= 90%: {"met" if ok else "missed"}).')
    if 'robotseg_jf' in f:
        above = [label for name, (label, key) in ROWS.items()
                 if name.startswith('no_') and f.get(f'{key}_jf', -1) >= f['robotseg_jf']]
        if above:
            lines.append('Ablations scoring at or above the full model on these clips: '
                         + '; '.join(above) + '. With this few clips, differences within about '
                         'two standard errors are not evidence either way.')
    return '\n'.join(lines)


def write(figures: dict[str, Any], docs: Path) -> None:
    write_section(SECTION, figures, markdown(figures), docs)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--runs', default='runs/robotseg')
    ap.add_argument('--docs', default='docs')
    args = ap.parse_args(argv)
    figures = collect(Path(args.runs))
    if not any(k.endswith('_jf') for k in figures):
        print(f'no evaluations under {args.runs}', file=sys.stderr)
        return 1
    write(figures, Path(args.docs))
    print(json.dumps({k: v for k, v in figures.items() if not isinstance(v, dict)}, indent=1))
    return 0


if __name__ == '__main__':
    sys.exit(main())
