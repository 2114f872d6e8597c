"""The Robult results: `<runs>/seed<s>/<row>/eval.json` files -> the `robult` section of
docs/results.{json,md} (only that section is rewritten) and the validation curves
(docs/robult_curves.png).

    python -m training.robult.report [--runs runs/robult] [--docs docs]

Rows are recognised by name (see training.robult.experiment): sup<pp>, robult<pp>, teacher<pp>,
rmmss<pp>, rmmss_robult<pp>, pp = 100 x label fraction. Figures are mIoU in %, the mean over the
seeds with its standard error; a gain is the mean of the per-seed differences of two rows trained
with the same seed (the same labelled frames), with the standard error of those differences.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from rmseg_ros.modalities import all_subsets, subset_name
from training.results import (
    draw_curve_panels,
    last_fifth_change,
    mean_se,
    validation_curve,
    write_section,
)

SECTION = 'robult'
CURVE_FILE = 'robult_curves.png'
TARGET_GAIN = 2.0  # issue target: Robult >= supervised-only + 2.0 points at 10% (or 5%) labels
KINDS = {  # row prefix -> (description, base objective, Robult losses)
    'sup': ('supervised only', 'OHEM CE + modality dropout', 'no'),
    'robult': ('Robult', 'OHEM CE + modality dropout', 'yes'),
    'teacher': ('RMMSS teacher', 'OHEM CE, all modalities', 'no'),
    'rmmss': ('RMMSS robust stage', 'CE + dropout + pixel KL + HPDM', 'no'),
    'rmmss_robult': ('RMMSS robust stage + Robult', 'CE + dropout + pixel KL + HPDM', 'yes'),
    'robult_pu': ('Robult, soft-PU loss only', 'OHEM CE + modality dropout', 'PU only'),
    'robult_recon': ('Robult, reconstruction loss only', 'OHEM CE + modality dropout',
                     'reconstruction only'),
}
ROW_RE = re.compile(r'^(sup|robult_pu|robult_recon|robult|teacher|rmmss_robult|rmmss)(\d+)$')
SEED_RE = re.compile(r'^seed(\d+)$')
ORDER = ['sup', 'robult', 'robult_pu', 'robult_recon', 'teacher', 'rmmss', 'rmmss_robult']
BASE = {'robult': 'sup', 'robult_pu': 'sup', 'robult_recon': 'sup',
        'rmmss_robult': 'rmmss'}  # the row a gain is measured against
CLASS_SUBSETS = ('RDLE', 'R', 'D')

METHOD = (
    'Method (training/robult): region latents = a 1x1-conv head over 6x8 average-pooled cells '
    'of the stride-16 encoder stage, per modality and for the fused map (cells, not pixels or '
    'class prototypes: the same cell of two camera-aligned modalities is a known positive in '
    'any frame, unlabelled frames need no classes, and 48 tokens per frame keep the pair count '
    'small). Soft PU contrastive loss (anchors: modality cells, candidates: fused cells of the '
    'batch): known positives = same cell of the same frame, or same class in labelled frames; '
    'known negatives = different classes in labelled frames; every other pair has weight '
    'w = exp(-d^2 / 2 sigma^2) on the unit latents and counts as a positive with weight w and a '
    'negative with weight 1 - w (tau 0.2, sigma 0.5). Latent reconstruction: 1 - cos between '
    "each recorded modality's latent (detached; for modalities dropped in the step, from a "
    'no-grad encoder pass) and its prediction from the fused latent and the mean of the other '
    'present modalities. Loss = class-weighted OHEM CE (labelled frames only) + 0.1 x PU + 1.0 x '
    'reconstruction; labelled and unlabelled frames go through the network as two batches '
    '(`robult.separate_unlabelled_forward`), so BatchNorm normalises the supervised frames with '
    'labelled-frame statistics only; the deployed network is the plain fusion student (heads '
    'dropped).')


def _pct(v: float | None) -> float | None:
    return None if v is None else 100.0 * v


def _row_key(name: str) -> tuple[int, int]:
    m = ROW_RE.match(name)
    assert m
    return -int(m.group(2)), ORDER.index(m.group(1))


def evaluated(runs: Path) -> dict[str, dict[int, Path]]:
    """row -> seed -> run directory, for every evaluated run under runs/seed<s>/<row>."""
    found: dict[str, dict[int, Path]] = {}
    for ev in runs.glob('seed*/*/eval.json'):
        seed, row = SEED_RE.match(ev.parent.parent.name), ROW_RE.match(ev.parent.name)
        if seed and row:
            found.setdefault(row.group(0), {})[int(seed.group(1))] = ev.parent
    return {r: dict(sorted(found[r].items())) for r in sorted(found, key=_row_key)}


def _mean_curve(curves: list[list[tuple[int, float]]]) -> list[tuple[int, float]]:
    """Point-wise mean over the seeds' validation curves, at the steps all of them have."""
    steps = set.intersection(*[{s for s, _ in c} for c in curves]) if curves else set()
    return [(s, sum(dict(c)[s] for c in curves) / len(curves)) for s in sorted(steps)]


def collect(runs: Path) -> dict[str, Any]:
    """Figures of every evaluated row under `runs` (means over seeds, s.e., paired gains)."""
    figures: dict[str, Any] = {}
    rows = evaluated(runs)
    subsets = [subset_name(s) for s in all_subsets()]
    evals = {r: {s: json.loads((d / 'eval.json').read_text()) for s, d in seeds.items()}
             for r, seeds in rows.items()}
    curves: dict[str, list[tuple[int, float]]] = {}
    for row, by_seed in evals.items():
        evs = list(by_seed.values())
        figures[f'{row}_seeds'] = list(by_seed)
        figures[f'{row}_subset_mean_per_seed'] = [round(_pct(e['mean_miou']), 2) for e in evs]
        figures[f'{row}_subset_mean'], figures[f'{row}_subset_mean_se'] = mean_se(
            [_pct(e['mean_miou']) for e in evs])
        figures[f'{row}_full_miou'], figures[f'{row}_full_miou_se'] = mean_se(
            [_pct(e['subsets']['RDLE']) for e in evs])
        figures[f'{row}_subsets'] = {s: mean_se([_pct(e['subsets'][s]) for e in evs])[0]
                                     for s in subsets}
        if all('class_iou' in e for e in evs):
            names = list(evs[0]['class_iou']['RDLE'])
            figures[f'{row}_class_iou'] = {
                sub: {c: mean_se([_pct(e['class_iou'][sub][c]) for e in evs])[0] for c in names}
                for sub in CLASS_SUBSETS}
        first = evs[0]
        figures[f'{row}_train_steps'] = first.get('steps')
        figures[f'{row}_label_fraction'] = first.get('label_fraction')
        figures[f'{row}_label_unit'] = first.get('label_unit', 'frame')
        figures[f'{row}_labelled_frames'] = [e.get('labelled_frames') for e in evs]
        figures[f'{row}_labelled_recordings'] = [e.get('labelled_recordings') for e in evs]
        if first.get('teacher'):
            figures[f'{row}_teacher'] = Path(first['teacher']).parent.name
        figures['test_samples'] = first['samples']
        figures['input_hw'] = first.get('input_hw')
        figures['batch_labelled'] = first.get('config', {}).get('run', {}).get('batch_size')
        curve = _mean_curve([validation_curve(rows[row][s]) for s in by_seed])
        curves[row] = curve
        figures[f'{row}_val_last_fifth_change'] = last_fifth_change(curve)
    for row in evals:
        m = ROW_RE.match(row)
        base = f'{BASE[m.group(1)]}{m.group(2)}' if m.group(1) in BASE else None
        if base not in evals:
            continue
        paired = sorted(set(evals[row]) & set(evals[base]))
        diffs = [_pct(evals[row][s]['mean_miou']) - _pct(evals[base][s]['mean_miou'])
                 for s in paired]
        figures[f'{row}_gain'], figures[f'{row}_gain_se'] = mean_se(diffs)
        figures[f'{row}_gain_seeds'] = paired
        if m.group(1) == 'robult':
            figures[f'target_met_{m.group(2)}'] = figures[f'{row}_gain'] >= TARGET_GAIN
    full = next((r for r in evals if r == 'sup100'), None)
    for row in evals:
        m = ROW_RE.match(row)
        if full and m.group(1) == 'sup' and row != full:
            # every label of the same recordings against this fraction's: what labels can add
            paired = sorted(set(evals[row]) & set(evals[full]))
            figures[f'all_labels_gain_{m.group(2)}'], figures[f'all_labels_gain_{m.group(2)}_se'] \
                = mean_se([_pct(evals[full][s]['mean_miou']) - _pct(evals[row][s]['mean_miou'])
                           for s in paired])
    figures['target_gain'] = TARGET_GAIN
    figures['seeds'] = sorted({s for by_seed in evals.values() for s in by_seed})
    figures['_curves'] = curves
    return figures


def _fmt(v: float | None, se: float | None = None) -> str:
    if v is None:
        return '-'
    return f'{v:.2f}' if se is None else f'{v:.2f} ± {se:.2f}'


def _names(figures: dict[str, Any]) -> list[str]:
    names = [k[:-len('_subset_mean')] for k in figures
             if k.endswith('_subset_mean') and ROW_RE.match(k[:-len('_subset_mean')])]
    return sorted(names, key=_row_key)


def tables(figures: dict[str, Any]) -> list[str]:
    """Summary table with the target verdicts, the 15-subset table, the per-class tables."""
    f = figures
    names = _names(f)
    lines = ['| row | labels | base objective | Robult losses | steps | seeds | all (RDLE) | '
             '15-subset mean | gain (paired) | val change, last fifth |',
             '|---|---|---|---|---|---|---|---|---|---|']
    for r in names:
        desc, base, rob = KINDS[ROW_RE.match(r).group(1)]
        if f.get(f'{r}_teacher'):
            base += f' (teacher: {f[f"{r}_teacher"]})'
        frac, unit = f.get(f'{r}_label_fraction'), f.get(f'{r}_label_unit')
        frames = sorted(set(f.get(f'{r}_labelled_frames') or []))
        recs = sorted(set(f.get(f'{r}_labelled_recordings') or []))
        labels = '?' if frac is None else f'{100 * frac:g}% of {unit}s (' + (
            f'{"/".join(map(str, recs))} recordings, ' if unit == 'recording' else '') + \
            f'{"/".join(map(str, frames))} frames)'
        lines.append(
            f'| {r}: {desc} | {labels} | {base} | {rob} | {f.get(f"{r}_train_steps", "?")} | '
            f'{len(f[f"{r}_seeds"])} | {_fmt(f[f"{r}_full_miou"], f[f"{r}_full_miou_se"])} | '
            f'{_fmt(f[f"{r}_subset_mean"], f[f"{r}_subset_mean_se"])} | '
            f'{_fmt(f.get(f"{r}_gain"), f.get(f"{r}_gain_se"))} | '
            f'{_fmt(f.get(f"{r}_val_last_fifth_change"))} |')
    verdicts = [(k[len('target_met_'):], v) for k, v in f.items() if k.startswith('target_met_')]
    for pp, met in sorted(verdicts, key=lambda kv: -int(kv[0])):
        g = f'robult{pp}'
        lines += ['', f'Target at {pp}% labels (Robult >= supervised-only + '
                  f'{TARGET_GAIN:.1f} on the 15-subset mean): **{"met" if met else "missed"}**, '
                  f'measured {f[f"{g}_gain"]:+.2f} ± {f[f"{g}_gain_se"] or 0:.2f} (seeds '
                  f'{f[f"{g}_gain_seeds"]}; per seed: robult '
                  f'{f[f"{g}_subset_mean_per_seed"]}, sup {f[f"sup{pp}_subset_mean_per_seed"]}).']
    ceilings = sorted(((k[len('all_labels_gain_'):], v) for k, v in f.items()
                       if k.startswith('all_labels_gain_') and not k.endswith('_se')),
                      key=lambda kv: -int(kv[0]))
    if ceilings:
        lines += ['', 'What labels can add at this budget: supervised-only with every training '
                  'frame labelled (`sup100`) minus supervised-only with ' + ', '.join(
                      f'{pp}% ({_fmt(v, f.get(f"all_labels_gain_{pp}_se"))})'
                      for pp, v in ceilings) + ' of the recordings labelled, seed by seed. A '
                  'semi-supervised method closes at most this gap with its unlabelled frames.']
    lines += ['', '15 modality subsets (mean over seeds):', '',
              '| subset | ' + ' | '.join(names) + ' |', '|---|' + '---|' * len(names)]
    for s in [subset_name(x) for x in all_subsets()]:
        lines.append(f'| {s} | ' + ' | '.join(_fmt(f[f'{r}_subsets'][s]) for r in names) + ' |')
    lines.append('| **mean** | ' + ' | '.join(_fmt(f[f'{r}_subset_mean']) for r in names)
                 + ' |')
    with_classes = [r for r in names if f.get(f'{r}_class_iou')]
    for sub in CLASS_SUBSETS:
        if not with_classes:
            break
        classes = list(f[f'{with_classes[0]}_class_iou'][sub])
        lines += ['', f'Per-class IoU, {sub} {"(all modalities)" if sub == "RDLE" else "alone"} '
                  '(mean over seeds):', '', '| class | ' + ' | '.join(with_classes) + ' |',
                  '|---|' + '---|' * len(with_classes)]
        for c in classes:
            lines.append(f'| {c} | ' + ' | '.join(_fmt(f[f'{r}_class_iou'][sub][c])
                                                  for r in with_classes) + ' |')
    return lines


def markdown(figures: dict[str, Any], curves_drawn: bool) -> str:
    hw = figures.get('input_hw') or ['?', '?']
    lines = [
        '## Robult: semi-supervised training with the soft-PU contrastive and latent '
        'reconstruction losses', '',
        f'Test split of the default sim data ({figures.get("test_samples", "?")} samples) at '
        f'{hw[1]}x{hw[0]} (the 240x320 cache downscaled on load), mIoU in %; missing '
        'modalities are removed from fusion; the mean is over the 15 non-empty subsets. Each '
        f'row was trained once per seed ({figures.get("seeds")}); a seed sets both the run '
        '(initial weights, order, dropout) and which recordings are labelled, so a seed\'s '
        'rows share their labelled frames and the gain is a paired difference. Every row: the '
        f'same number of steps, {figures.get("batch_labelled", "?")} labelled frames per step '
        '(Robult and RMMSS rows: + as many unlabelled ones), a random modality subset per '
        'frame, class-weighted OHEM cross-entropy (weights from the labelled frames only), RGB '
        'standardisation (as the RMMSS student). Made with `make robult-results` (`python -m '
        'training.robult.experiment`, budget in the `experiment:` block of '
        'training/configs/robult.yaml), written by `python -m training.robult.report`.', '',
        *tables(figures), '',
        'gain: the Robult row minus the same row without the Robult losses (robult, robult_pu, '
        'robult_recon - sup; rmmss_robult - rmmss), seed by seed. val change, last fifth: the '
        'validation mean (30 frames, 5 subsets, mean of the seeds\' curves) at the end minus at '
        '80 % of the steps.']
    if curves_drawn:
        lines += ['', f'Validation curves: [{CURVE_FILE}]({CURVE_FILE}).']
    lines += ['', METHOD]
    return '\n'.join(lines)


def write(figures: dict[str, Any], docs: Path) -> None:
    curves = figures.pop('_curves', {})
    panels: dict[str, list[tuple[str, list[tuple[int, float]]]]] = {}
    for row, curve in curves.items():
        if curve:
            panels.setdefault(f'{ROW_RE.match(row).group(2)}% labels', []).append((row, curve))
    drawn = draw_curve_panels(panels, docs / CURVE_FILE)
    write_section(SECTION, figures, markdown(figures, drawn), docs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--runs', default='runs/robult', help='experiment output root')
    parser.add_argument('--docs', default='docs', help='where results.{md,json} live')
    args = parser.parse_args(argv)
    figures = collect(Path(args.runs))
    if not _names(figures):
        print(f'no evaluated rows under {args.runs}/seed<s>/ (run python -m '
              'training.robult.experiment)', file=sys.stderr)
        return 1
    write(figures, Path(args.docs))
    print(json.dumps({k: v for k, v in figures.items() if not isinstance(v, dict)}, indent=1))
    return 0


if __name__ == '__main__':
    sys.exit(main())
