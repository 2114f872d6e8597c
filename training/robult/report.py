"""The Robult results: `<runs>/<row>/eval.json` files -> the `robult` section of
docs/results.{json,md} (only that section is rewritten).

    python -m training.robult.report [--runs runs/robult] [--docs docs]

Rows are recognised by name (see training.robult.experiment): sup<pp>, robult<pp>, teacher<pp>,
rmmss<pp>, rmmss_robult<pp>, pp = 100 x label fraction. Figures are mIoU in %.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from rmseg_ros.modalities import all_subsets, subset_name
from training.results import write_section

SECTION = 'robult'
TARGET_GAIN = 2.0  # issue target: Robult >= supervised-only + 2.0 points at 10% labels
KINDS = {  # row prefix -> (description, base objective, Robult losses)
    'sup': ('supervised only', 'OHEM CE + modality dropout', 'no'),
    'robult': ('Robult', 'OHEM CE + modality dropout', 'yes'),
    'teacher': ('RMMSS teacher', 'OHEM CE, all modalities', 'no'),
    'rmmss': ('RMMSS robust stage', 'CE + dropout + pixel KL + HPDM', 'no'),
    'rmmss_robult': ('RMMSS robust stage + Robult', 'CE + dropout + pixel KL + HPDM', 'yes'),
}
ROW_RE = re.compile(r'^(sup|robult|teacher|rmmss_robult|rmmss)(\d+)$')
ORDER = ['sup', 'robult', 'teacher', 'rmmss', 'rmmss_robult']
LONG = 'long_'  # key prefix of the rows of a longer-budget experiment
REC = 'rec_'  # key prefix of the rows trained with whole recordings labelled (label_unit)


def long_prefix(i: int) -> str:
    """Key prefix of the i-th longer-budget experiment: long_, long2_, long3_, ..."""
    return LONG if i == 0 else f'long{i + 1}_'


def _long_prefixes(figures: dict[str, Any]) -> list[str]:
    out, i = [], 0
    while _names(figures, long_prefix(i)):
        out.append(long_prefix(i))
        i += 1
    return out
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
    'present modalities. Loss = OHEM CE (labelled frames only) + 0.1 x PU + 1.0 x '
    'reconstruction; labelled and unlabelled frames go through the network as two batches '
    '(`robult.separate_unlabelled_forward`), so BatchNorm normalises the supervised frames with '
    'labelled-frame statistics only; the deployed network is the plain fusion student (heads '
    'dropped).')


def _pct(v: float | None) -> float | None:
    return None if v is None else round(100.0 * v, 2)


def rows(runs: Path) -> list[str]:
    """Evaluated rows under `runs`, by label fraction then kind."""
    found = []
    for ev in runs.glob('*/eval.json'):
        m = ROW_RE.match(ev.parent.name)
        if m:
            found.append((int(m.group(2)), ORDER.index(m.group(1)), ev.parent.name))
    return [name for *_, name in sorted(found)]


def collect(runs: Path, prefix: str = '') -> dict[str, Any]:
    """Figures of every evaluated row under `runs`, keys prefixed by `prefix`."""
    figures: dict[str, Any] = {}
    subsets = [subset_name(s) for s in all_subsets()]
    found = rows(runs)
    for row in found:
        ev = json.loads((runs / row / 'eval.json').read_text())
        key = prefix + row
        figures[f'{key}_subset_mean'] = _pct(ev['mean_miou'])
        figures[f'{key}_full_miou'] = _pct(ev['subsets']['RDLE'])
        figures[f'{key}_subsets'] = {s: _pct(ev['subsets'][s]) for s in subsets}
        figures[f'{key}_train_steps'] = ev.get('steps')
        figures[f'{key}_label_fraction'] = ev.get('label_fraction')
        figures[f'{key}_labelled_frames'] = ev.get('labelled_frames')
        figures[f'{key}_label_unit'] = ev.get('label_unit', 'frame')
        if ev.get('label_unit') == 'recording':
            figures[f'{key}_labelled_recordings'] = ev.get('labelled_recordings')
        if ev.get('teacher'):
            figures[f'{key}_teacher'] = Path(ev['teacher']).parent.name
        figures['test_samples'] = ev['samples']
        figures['input_hw'] = ev.get('input_hw')
        figures[f'{prefix}batch_labelled'] = ev.get('config', {}).get('run', {}).get('batch_size')
    for row in found:
        m = ROW_RE.match(row)
        kind, p = m.group(1), m.group(2)
        base = {'robult': f'sup{p}', 'rmmss_robult': f'rmmss{p}'}.get(kind)
        if base and f'{prefix}{base}_subset_mean' in figures:
            figures[f'{prefix}{row}_gain'] = round(figures[f'{prefix}{row}_subset_mean']
                                                   - figures[f'{prefix}{base}_subset_mean'], 2)
    if f'{prefix}robult10_gain' in figures:
        figures[f'{prefix}target_met_10'] = figures[f'{prefix}robult10_gain'] >= TARGET_GAIN
        figures['target_gain_10'] = TARGET_GAIN
    return figures


def _names(figures: dict[str, Any], prefix: str) -> list[str]:
    """Row names (without prefix) with figures under `prefix`, by fraction then kind."""
    found = set()
    for k in figures:
        if k.startswith(prefix) and k.endswith('_subset_mean'):
            m = ROW_RE.match(k[len(prefix):-len('_subset_mean')])
            if m:
                found.add((int(m.group(2)), ORDER.index(m.group(1)), m.group(0)))
    return [name for *_, name in sorted(found)]


def _fmt(v: float | None) -> str:
    return '-' if v is None else f'{v:.2f}'


def tables(figures: dict[str, Any], prefix: str = '') -> list[str]:
    """Summary table, target verdict and 15-subset table of the rows under `prefix`."""
    names = _names(figures, prefix)
    f = {k[len(prefix):]: v for k, v in figures.items() if k.startswith(prefix)}
    lines = ['| row | labels | base objective | Robult losses | steps | all (RDLE) | '
             '15-subset mean | gain |', '|---|---|---|---|---|---|---|---|']
    for r in names:
        desc, base, rob = KINDS[ROW_RE.match(r).group(1)]
        if f.get(f'{r}_teacher'):
            base += f' (teacher: {f[f"{r}_teacher"]})'
        frac, n = f.get(f'{r}_label_fraction'), f.get(f'{r}_labelled_frames')
        recs = f.get(f'{r}_labelled_recordings')
        labels = '?' if frac is None else f'{100 * frac:.0f}%' + (
            f' of recordings ({recs} recordings, {n} frames)' if recs
            else f' ({n} frames)' if n else '')
        lines.append(f'| {r}: {desc} | {labels} | {base} | {rob} | '
                     f'{f.get(f"{r}_train_steps", "?")} | {_fmt(f[f"{r}_full_miou"])} | '
                     f'{_fmt(f[f"{r}_subset_mean"])} | {_fmt(f.get(f"{r}_gain"))} |')
    if 'robult10_gain' in f:
        verdict = 'met' if f['target_met_10'] else 'missed'
        lines += ['', f'Target at 10% labels (Robult >= supervised-only + {TARGET_GAIN:.1f} on '
                  f'the 15-subset mean): {verdict}, measured {f["robult10_gain"]:+.2f}.']
    lines += ['', '| subset | ' + ' | '.join(names) + ' |', '|---|' + '---|' * len(names)]
    for s in [subset_name(x) for x in all_subsets()]:
        lines.append(f'| {s} | ' + ' | '.join(_fmt(f[f'{r}_subsets'][s]) for r in names) + ' |')
    lines.append('| **mean** | ' + ' | '.join(_fmt(f[f'{r}_subset_mean']) for r in names)
                 + ' |')
    return lines


def observations(figures: dict[str, Any]) -> str:
    """What the measured figures say about the budget regime (text made from the figures)."""
    out = []
    if 'sup10_subset_mean' in figures and 'sup50_subset_mean' in figures:
        gap = figures['sup50_subset_mean'] - figures['sup10_subset_mean']
        out.append(f'Supervised-only with 50% vs 10% labels: {gap:+.2f} points on the 15-subset '
                   f'mean at {figures.get("sup10_train_steps")} steps' + (
                       ': at this budget more labels barely help, so training is limited by '
                       'steps rather than by labels, and unlabelled frames have little to add.'
                       if abs(gap) < 1.0 else '.'))
    gains = [(figures.get(f'{p}robult10_train_steps'), figures[f'{p}robult10_gain'])
             for p in ['', *_long_prefixes(figures)] if f'{p}robult10_gain' in figures]
    if len(gains) > 1:
        out.append('Robult minus supervised-only at 10% labels: ' + ', '.join(
            f'{gain:+.2f} at {steps} steps' for steps, gain in gains) + '.')
    return ' '.join(out)


def markdown(figures: dict[str, Any]) -> str:
    hw = figures.get('input_hw') or ['?', '?']
    lines = [
        '## Robult: semi-supervised training with the soft-PU contrastive and latent '
        'reconstruction losses', '',
        f'Test split of the default sim data ({figures.get("test_samples", "?")} evenly spaced '
        f'samples) at {hw[1]}x{hw[0]} (the 240x320 cache downscaled on load), mIoU in %; '
        'missing modalities are removed from fusion; the mean is over the 15 non-empty subsets. '
        'Labelled frames: a seeded selection (the same frames in every row of a label fraction), '
        'all other training frames unlabelled. Every row of a table: the same number of steps, '
        f'{figures.get("batch_labelled", "?")} labelled frames per step (Robult and RMMSS '
        'rows: + as many unlabelled ones), a random modality subset per frame, the same initial '
        'weights. Made with `python -m training.robult.experiment` (budget: the `experiment:` '
        'block of training/configs/robult.yaml; e.g. `--steps 2000` for a longer one), written '
        'by `python -m training.robult.report`.', '', *tables(figures), '',
        'gain: Robult row minus the same row without the Robult losses (robult - sup, '
        'rmmss_robult - rmmss). The RMMSS rows start from their teacher row\'s weights (trained '
        'first for the same number of steps) and distil from it.']
    notes = observations(figures)
    if notes:
        lines += ['', notes]
    for prefix in _long_prefixes(figures):
        steps = {figures.get(f'{prefix}{r}_train_steps') for r in _names(figures, prefix)}
        lines += ['', f'### Longer budget: {", ".join(str(s) for s in sorted(steps))} steps', '',
                  'The same rows and settings with more steps (`python -m '
                  'training.robult.experiment --rows robult10 sup10 --steps N --out-root DIR`); '
                  f'figures under `{prefix}` in results.json.', '',
                  *tables(figures, prefix)]
    if _names(figures, REC):
        steps = {figures.get(f'{REC}{r}_train_steps') for r in _names(figures, REC)}
        lines += ['', f'### Whole recordings labelled: {", ".join(str(s) for s in sorted(steps))}'
                  ' steps', '',
                  'The labelled fraction is one of the recordings (`data.label_unit: recording`, '
                  'each chosen recording labelled in full, the others not at all) instead of one '
                  'of the frames spread over every recording. The unlabelled frames then show '
                  'scenes no labelled frame shows, as when a team labels a few bags of many. '
                  '`python -m training.robult.experiment --rows robult10 sup10 --label-unit '
                  f'recording --out-root DIR`; figures under `{REC}` in results.json.', '',
                  *tables(figures, REC)]
    lines += ['', METHOD]
    return '\n'.join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--runs', default='runs/robult', help='experiment output root')
    parser.add_argument('--long-runs', nargs='+', default=[],
                        help='longer-budget experiments (figures long_*, long2_*, ...)')
    parser.add_argument('--recording-runs', default=None,
                        help='an experiment with whole recordings labelled (figures rec_*)')
    parser.add_argument('--docs', default='docs', help='where results.{md,json} live')
    args = parser.parse_args(argv)
    figures = collect(Path(args.runs))
    for i, long_runs in enumerate(args.long_runs):
        figures.update(collect(Path(long_runs), long_prefix(i)))
    if args.recording_runs:
        figures.update(collect(Path(args.recording_runs), REC))
    if not any(k.endswith('_subset_mean') for k in figures):
        print(f'no evaluated rows under {args.runs} (run python -m training.robult.experiment)',
              file=sys.stderr)
        return 1
    write_section(SECTION, figures, markdown(figures), args.docs)
    print(json.dumps({k: v for k, v in figures.items() if not isinstance(v, dict)}, indent=1))
    return 0


if __name__ == '__main__':
    sys.exit(main())
