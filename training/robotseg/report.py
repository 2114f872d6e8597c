"""The RobotSeg results table: eval_*.json -> the `robotseg` section of docs/results.{json,md}.

    python -m training.robotseg.report [--config FILE] [--runs DIR] [--docs docs]

Figures are J&F (and J, F) in %, means over the held-out clips of a set; the deployment row is
the mean over the deployment sets with the standard error over sets. Targets: RobotSeg >= flow
baseline + 5 (deployment), RobotSeg trained from kinematic masks within 3 points of RobotSeg
trained from true first-frame masks, kinematic mask IoU >= 95 % with the exact calibration.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from training.results import mean_se, write_section
from training.robotseg.simdata import DEFAULT_SETS

SECTION = 'robotseg'
ROWS = {  # eval file name -> (row label, figure prefix)
    'robotseg': ('RobotSeg, first-frame true masks (cycle + semantic + patch)', 'robotseg'),
    'kinematic': ('RobotSeg, first-frame kinematic masks (no manual label)',
                  'kinematic_trained'),
    'kinematic_all': ('RobotSeg, every frame\'s kinematic mask (no manual label)',
                      'kinematic_all'),
    'kinematic_24': ('RobotSeg, first-frame kinematic masks, the train set\'s 24 videos only',
                     'kinematic_24'),
    'robotseg_long': ('RobotSeg, first-frame true masks, 1.6x the steps (convergence check)',
                      'robotseg_long'),
    'kinematic_long': ('RobotSeg, first-frame kinematic masks, 1.6x the steps (convergence '
                       'check)', 'kinematic_long'),
    'supervised': ('fully supervised (every frame truly labelled), upper bound', 'supervised'),
    'no_sema': ('ablation: without SEMA', 'no_sema'),
    'no_rpg': ('ablation: without RPG (random tokens)', 'no_rpg'),
    'no_cycle': ('ablation: without cycle loss', 'no_cycle'),
    'flow': ('baseline: frame 0 true mask + Farneback flow', 'flow'),
    'kinematic_calib': ('baseline: kinematic masks, camera calibration off', 'kinematic_calib'),
}
BASELINES = ('flow', 'kinematic_calib')  # given something at test time; RobotSeg gets nothing
LONGER = {'robotseg_long': 'robotseg', 'kinematic_long': 'kinematic_trained'}  # -> its run


def _pct(v: float | None) -> float | None:
    return None if v is None else round(100.0 * float(v), 2)


def _set_scores(root: Path) -> dict[str, dict[str, Any]]:
    """method -> J&F, J, F (%), clip s.e. and training facts, of one set directory."""
    out: dict[str, dict[str, Any]] = {}
    for name in ROWS:
        path = root / f'eval_{name}.json'
        if not path.exists():
            continue
        ev = json.loads(path.read_text())
        per_clip = [c['JF'] for c in ev['clips'].values()]
        se = mean_se(per_clip, digits=None)[1]  # of the clip mean
        out[name] = {'jf': _pct(ev['JF']), 'j': _pct(ev['J']), 'f': _pct(ev['F']),
                     'jf_se_clips': _pct(se), 'clips': ev['num_clips'],
                     'frames_scored': sum(c['frames'] for c in ev['clips'].values()),
                     'train': ev.get('train') or {}, 'input_hw': ev.get('input_hw')}
        half = root / f'eval_{name}_half.json'  # the same run at half its steps
        if half.exists():
            out[name]['jf_half'] = _pct(json.loads(half.read_text())['JF'])
    return out


def collect(runs: Path, sim_sets: Path = DEFAULT_SETS, deployment: list[str] | None = None,
            stress: list[str] | None = None, training: list[str] | None = None
            ) -> dict[str, Any]:
    """Figures of the section from <runs>/<set>/eval_*.json and <runs>/masks_*.json. The
    deployment row of a method is its mean J&F over the deployment sets, with the standard
    error over those sets; the stress row its mean over the stress sets. The kinematic mask
    IoU is the lowest over the training sets (each set's in `kinematic_mask_iou_by_set`)."""
    from .config import ExperimentConfig

    ex = ExperimentConfig()  # the default sets
    deployment = list(deployment if deployment is not None else ex.deployment_sets)
    stress = list(stress if stress is not None else ex.stress_sets)
    training = list(training if training is not None else ex.training_sets)
    sets = {name: _set_scores(runs / name) for name in [*deployment, *stress]
            if (runs / name).is_dir()}
    figures: dict[str, Any] = {'deployment_sets': [s for s in deployment if s in sets],
                               'stress_sets': [s for s in stress if s in sets],
                               'sets': {n: {m: {k: v for k, v in r.items() if k != 'train'}
                                            for m, r in rows.items()}
                                        for n, rows in sets.items()}}
    for name, (_, key) in ROWS.items():
        dep = [sets[s][name]['jf'] for s in figures['deployment_sets'] if name in sets[s]]
        if dep and len(dep) == len(figures['deployment_sets']):
            figures[f'{key}_jf'], figures[f'{key}_jf_se'] = mean_se(dep)
        half = [sets[s][name].get('jf_half') for s in figures['deployment_sets']
                if name in sets[s]]
        if half and None not in half and f'{key}_jf' in figures:
            figures[f'{key}_second_half_change'] = round(
                figures[f'{key}_jf'] - float(np.mean(half)), 2)
        st = [sets[s][name]['jf'] for s in figures['stress_sets'] if name in sets[s]]
        if st and len(st) == len(figures['stress_sets']):
            figures[f'{key}_stress_jf'] = round(float(np.mean(st)), 2)
        for rows in sets.values():
            train = (rows.get(name) or {}).get('train') or {}
            if train.get('step') is not None:
                figures[f'{key}_train_steps'] = train['step']
                figures[f'{key}_labelled_frames'] = train.get('labelled_frames')
                figures[f'{key}_train_videos'] = train.get('videos')
                # the protocol's training set: the first row's (variants may add videos)
                figures.setdefault('train_frames', train.get('frames'))
                figures.setdefault('train_videos', train.get('videos'))
            if (rows.get(name) or {}).get('input_hw'):
                figures['eval_hw'] = rows[name]['input_hw']
    if 'robotseg_stress_jf' in figures:
        figures['unseen_robot_jf'] = figures['robotseg_stress_jf']
    if 'robotseg_jf' in figures and 'flow_jf' in figures:
        figures['robotseg_minus_flow'] = round(figures['robotseg_jf'] - figures['flow_jf'], 2)
    if 'kinematic_trained_jf' in figures and 'flow_jf' in figures:  # the shipped variant
        figures['kinematic_minus_flow'] = round(
            figures['kinematic_trained_jf'] - figures['flow_jf'], 2)
    if 'robotseg_jf' in figures and 'kinematic_trained_jf' in figures:
        figures['kinematic_minus_true_masks'] = round(
            figures['kinematic_trained_jf'] - figures['robotseg_jf'], 2)
    for longer, key in LONGER.items():  # convergence: the same run with more steps
        if f'{longer}_jf' in figures and f'{key}_jf' in figures:
            figures[f'{longer}_minus_{key}'] = round(figures[f'{longer}_jf']
                                                     - figures[f'{key}_jf'], 2)
    masks = {name: json.loads((runs / f'masks_{name}.json').read_text()) for name in training
             if (runs / f'masks_{name}.json').exists()}
    if masks:
        by_set = {name: {'iou_exact': round(m['iou_exact'], 2),
                         'iou_calib_error': round(m['iou_calib_error'], 2),
                         'frames': m['frames_scored']} for name, m in masks.items()}
        first = next(iter(masks.values()))
        figures['kinematic_mask_iou'] = min(v['iou_exact'] for v in by_set.values())
        figures['kinematic_mask_iou_calib_error'] = min(
            v['iou_calib_error'] for v in by_set.values())
        figures['kinematic_mask_iou_by_set'] = by_set
        figures['kinematic_mask_calib_error'] = {'deg': first['calib_error_deg'],
                                                 'cm': first['calib_error_cm'],
                                                 'draws_per_bag': first['calib_error_draws'],
                                                 'frames': sum(v['frames']
                                                               for v in by_set.values())}
    if sim_sets.exists():
        spec = yaml.safe_load(sim_sets.read_text()).get('sets', {})
        figures['protocol'] = {k: {'scenes': v.get('scenes'), 'seed': v.get('seed'),
                                   **(v.get('config', {}).get('scene', {}))}
                               for k, v in spec.items()}
    return figures


def _describe(p: dict[str, Any]) -> str:
    robots = ', '.join(sorted(p.get('robots', {}))) or '?'
    light = p.get('brightness', ['?', '?'])
    return (f'{robots}; light {light[0]}-{light[1]}; joint offsets up to '
            f'{p.get("joint_amplitude", "?")} rad; {p.get("scenes", "?")} scenes from seed '
            f'{p.get("seed", "?")}')


def markdown(f: dict[str, Any]) -> str:
    fmt = lambda v: '-' if v is None else f'{v:.2f}'  # noqa: E731
    hw = f.get('eval_hw') or ['?', '?']
    proto = f.get('protocol') or {}
    dep, stress = f.get('deployment_sets', []), f.get('stress_sets', [])
    lines = [
        '## RobotSeg: prompt-free robot video segmentation, for the robot you own', '',
        'Training sets: ' + '; '.join(f'{s}: {_describe(proto[s])}' for s in proto
                                      if s.startswith('train'))
        + f' ({f.get("train_videos", "?")} videos, {f.get("train_frames", "?")} frames, unless '
        'a row says otherwise). Deployment sets (the same robot in new scenes, light and '
        'poses): '
        + '; '.join(f'{s}: {_describe(proto.get(s, {}))}' for s in dep)
        + '. Stress sets (a robot never seen): '
        + ('; '.join(f'{s}: {_describe(proto.get(s, {}))}' for s in stress) or '-')
        + f' (training/configs/robotseg_sim.yaml). Each scene is one 30-frame clip scored at '
        f'{hw[0]}x{hw[1]} from an empty memory, frame 0 left out; J = region IoU, F = boundary '
        'F-measure (DAVIS tolerance 0.008 x diagonal), J&F their mean, in %, averaged over '
        'clips. RobotSeg gets no mask at test time; the flow baseline gets frame 0\'s true '
        'mask; the kinematic baseline renders every frame from the joint states with the '
        'camera calibration off. Deployment = mean over the deployment sets, s.e. over sets. '
        'Written by `python -m training.robotseg.report`.', '',
        '| ' + ' | '.join(['model', 'train steps', 'videos', 'labelled frames', *dep,
                           'deployment', 's.e.', *stress]) + ' |',
        '|---' * (6 + len(dep) + len(stress)) + '|']
    sets = f.get('sets', {})
    for name, (label, key) in ROWS.items():
        if f'{key}_jf' not in f:
            continue
        per = [fmt((sets.get(s, {}).get(name) or {}).get('jf')) for s in [*dep, *stress]]
        steps = '-' if name in BASELINES else f.get(f'{key}_train_steps', '-')
        labelled = '-' if name in BASELINES else f.get(f'{key}_labelled_frames', '-')
        videos = '-' if name in BASELINES else f.get(f'{key}_train_videos', '-')
        cells = [label, str(steps), str(videos), str(labelled), *per[:len(dep)],
                 fmt(f[f'{key}_jf']),
                 fmt(f.get(f'{key}_jf_se')), *per[len(dep):]]
        lines.append('| ' + ' | '.join(cells) + ' |')
    lines.append('')
    if 'robotseg_minus_flow' in f:
        ok = f['robotseg_minus_flow'] >= 5
        lines.append(f'RobotSeg - flow baseline (deployment): {f["robotseg_minus_flow"]:+.2f} '
                     f'points (target >= +5: {"met" if ok else "missed"}).')
    if 'kinematic_minus_flow' in f:
        ok = f['kinematic_minus_flow'] >= 5
        lines.append(f'RobotSeg from kinematic masks (shipped) - flow baseline (deployment): '
                     f'{f["kinematic_minus_flow"]:+.2f} points (target >= +5: '
                     f'{"met" if ok else "missed"}).')
    if 'kinematic_minus_true_masks' in f:
        ok = f['kinematic_minus_true_masks'] >= -3
        lines.append('RobotSeg from kinematic masks - from true first-frame masks: '
                     f'{f["kinematic_minus_true_masks"]:+.2f} points (target >= -3: '
                     f'{"met" if ok else "missed"}).')
    changes = [f'{key} {f[f"{key}_second_half_change"]:+.2f}'
               for key in (k for _, k in ROWS.values()) if f'{key}_second_half_change' in f]
    if changes:
        lines.append('Convergence, deployment J&F at the end minus half-way through the same '
                     'run: ' + '; '.join(changes) + '.')
    longer = [f'{key} ({f.get(f"{key}_train_steps", "?")} steps) - {base} '
              f'({f.get(f"{base}_train_steps", "?")}): {f[f"{key}_minus_{base}"]:+.2f}'
              for key, base in LONGER.items() if f'{key}_minus_{base}' in f]
    if longer:
        lines.append('Convergence, deployment J&F of a variant trained longer minus the same '
                     'variant at the table\'s budget: ' + '; '.join(longer) + '.')
    if 'kinematic_mask_iou' in f:
        c = f.get('kinematic_mask_calib_error') or {}
        ok = f['kinematic_mask_iou'] >= 95
        sets = f.get('kinematic_mask_iou_by_set') or {}
        detail = '; '.join(f'{s}: {v["iou_exact"]:.2f} / {v["iou_calib_error"]:.2f} % over '
                           f'{v["frames"]} frames' for s, v in sets.items())
        lines.append(f'Kinematic masks of the training bags against the simulator\'s labels '
                     f'(lowest over the training sets): IoU {f["kinematic_mask_iou"]:.2f} % with '
                     f'the exact calibration (target >= 95: {"met" if ok else "missed"}), '
                     f'{f["kinematic_mask_iou_calib_error"]:.2f} % with the camera off by '
                     f'{c.get("deg", "?")} deg / {c.get("cm", "?")} cm'
                     + (f' ({detail})' if detail else '') + '.')
    return '\n'.join(lines)


def write(figures: dict[str, Any], docs: Path) -> None:
    write_section(SECTION, figures, markdown(figures), docs)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--config', default=None, help='robotseg config (its experiment sets; '
                    'default training/configs/robotseg.yaml)')
    ap.add_argument('--runs', default=None, help='default: the config\'s out_root')
    ap.add_argument('--docs', default='docs')
    args = ap.parse_args(argv)
    from .config import load_config

    base, _ = load_config(args.config)
    ex = base.experiment
    args.runs = args.runs or base.out_root
    figures = collect(Path(args.runs), Path(ex.sim_config), ex.deployment_sets, ex.stress_sets,
                      ex.training_sets)
    if not any(k.endswith('_jf') for k in figures):
        print(f'no evaluations under {args.runs}', file=sys.stderr)
        return 1
    write(figures, Path(args.docs))
    print(json.dumps({k: v for k, v in figures.items() if not isinstance(v, dict)}, indent=1))
    return 0


if __name__ == '__main__':
    sys.exit(main())
