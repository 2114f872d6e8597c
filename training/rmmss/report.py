"""The RMMSS results table: four evaluations -> the `rmmss` section of docs/results.{json,md}.

`python -m training.rmmss.report --runs runs/rmmss` reads `<runs>/eval_{teacher,dropout,robust,
fsm}/eval.json` (written by `rmseg-train evaluate`) and the training budgets from each run's
config, and rewrites only its own section of both files, so every figure in the Markdown is also
in the JSON, written by the code that read the measurement.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from rmseg_ros.modalities import all_subsets, subset_name
from training.results import write_section

MODELS = {  # run name -> (row label, key prefix in results.json)
    'teacher': ('teacher (all modalities, OHEM CE)', 'teacher'),
    'dropout': ('dropout-only baseline (AnySeg-style)', 'dropout'),
    'robust': ('HPDM robust model (dropout + pixel KL + prototypes)', 'hpdm'),
    'fsm': ('FSM student (deployed)', 'fsm'),
}
SECTION = 'rmmss'


def _pct(v: float | None) -> float | None:
    return None if v is None else round(100.0 * v, 2)


def collect(runs: Path) -> dict[str, Any]:
    """Figures (mIoU in %) of every evaluated model found under `runs`."""
    figures: dict[str, Any] = {}
    subsets = [subset_name(s) for s in all_subsets()]
    for run, (_, key) in MODELS.items():
        path = runs / f'eval_{run}' / 'eval.json'
        if not path.exists():
            continue
        ev = json.loads(path.read_text())
        emm = ev['emm']['remove']
        figures[f'{key}_full_miou'] = _pct(ev['full']['miou'])
        figures[f'{key}_subset_mean'] = _pct(emm['mean_miou'])
        figures[f'{key}_subsets'] = {s: _pct(emm['subsets'][s]['miou']) for s in subsets}
        if 'zero' in ev['emm']:
            figures[f'{key}_zero_fill_subset_mean'] = _pct(ev['emm']['zero']['mean_miou'])
        figures[f'{key}_rmm_mean'] = _pct(ev['rmm']['mean_miou'])
        figures[f'{key}_nm_mean'] = _pct(ev['nm']['mean_miou'])
        figures[f'{key}_failures'] = {f: _pct(v['miou']) for f, v in ev['failures'].items()}
        figures['test_samples'] = ev['samples']
        config = runs / run / 'config.yaml'
        if config.exists():
            figures[f'{key}_train_steps'] = yaml.safe_load(config.read_text())['run']['steps']
    return figures


def markdown(figures: dict[str, Any]) -> str:
    present = [(label, key) for label, key in MODELS.values() if f'{key}_subset_mean' in figures]
    subsets = [subset_name(s) for s in all_subsets()]
    fmt = lambda v: '-' if v is None else f'{v:.2f}'  # noqa: E731
    lines = [
        '## RMMSS: teacher, baselines and the FSM student', '',
        f'Test split of the default sim data ({figures.get("test_samples", "?")} evenly spaced '
        'samples), mIoU in %. Missing modalities are removed from fusion; the mean is over the '
        '15 non-empty subsets (R = rgb, D = depth, L = lidar, E = event). Written by '
        '`python -m training.rmmss.report` from `make results`.', '',
        '| model | steps | all (RDLE) | 15-subset mean | zero-filled mean | RMM | NM |',
        '|---|---|---|---|---|---|---|']
    for label, key in present:
        lines.append(f'| {label} | {figures.get(f"{key}_train_steps", "?")} | '
                     f'{fmt(figures[f"{key}_full_miou"])} | '
                     f'{fmt(figures[f"{key}_subset_mean"])} | '
                     f'{fmt(figures.get(f"{key}_zero_fill_subset_mean"))} | '
                     f'{fmt(figures[f"{key}_rmm_mean"])} | {fmt(figures[f"{key}_nm_mean"])} |')
    lines += ['', '| subset | ' + ' | '.join(key for _, key in present) + ' |',
              '|---|' + '---|' * len(present)]
    for s in subsets:
        lines.append(f'| {s} | ' + ' | '.join(fmt(figures[f'{key}_subsets'][s])
                                              for _, key in present) + ' |')
    failures = sorted({f for _, key in present for f in figures[f'{key}_failures']})
    if failures:
        lines += ['', '| sensor failure (all modalities) | ' + ' | '.join(
            key for _, key in present) + ' |', '|---|' + '---|' * len(present)]
        for f in failures:
            lines.append(f'| {f} | ' + ' | '.join(
                fmt(figures[f'{key}_failures'].get(f)) for _, key in present) + ' |')
    return '\n'.join(lines)


def write(figures: dict[str, Any], docs: Path) -> None:
    write_section(SECTION, figures, markdown(figures), docs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--runs', default='runs/rmmss', help='RMMSS run root')
    parser.add_argument('--docs', default='docs', help='where results.{md,json} live')
    args = parser.parse_args(argv)
    figures = collect(Path(args.runs))
    if not figures:
        print(f'no evaluations under {args.runs} (run `make results`)', file=sys.stderr)
        return 1
    write(figures, Path(args.docs))
    print(json.dumps({k: v for k, v in figures.items() if not isinstance(v, dict)}, indent=1))
    return 0


if __name__ == '__main__':
    sys.exit(main())
