"""RSS ablation report: runs/rss/seed<s>/<row>/eval.json -> the `rss` section of
docs/results.{json,md} and the validation curves (docs/rss_curves.png).

  python -m training.rss.report [--runs runs/rss] [--budget training/configs/rss_ablation.yaml]

mIoU in % on the test split, the mean over the seeds with its standard error. Ratios to
supervised learning are given against PSL with the same initialisation (the paper's convention:
PSR + PSD + cold start 57.93 vs PSL + cold start 59.81 = 96.9%) and against PSL from scratch,
each taken within a seed and then averaged.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml

from training.results import (
    draw_curve_panels,
    last_fifth_change,
    mean_se,
    validation_curve,
    write_section,
)

from .plan import COLDSTART, load_budget, plan, seed_dir, seeds_of

SECTION = 'rss'
CURVE_FILE = 'rss_curves.png'
# (figure, reference row, bound, direction): the targets
TARGETS = [('image_naive', 'psl', 0.20, '<='),
           ('image_naive_fullres', 'psl', 0.20, '<='),
           ('image_naive_res240', 'psl_res240', 0.20, '<='),
           ('image_psr_psd_cold', 'psl_cold', 0.85, '>='),
           ('pixel_syncan_cold', 'psl_cold', 0.95, '>=')]


def _pct(v: float | None) -> float | None:
    return None if v is None else 100.0 * float(v)


def _evals(runs: Path, budget: dict[str, Any]) -> dict[str, dict[int, dict]]:
    """row -> seed -> eval summary, for the finished rows of the plan under runs/seed<s>/."""
    rows = plan(budget)
    out: dict[str, dict[int, dict]] = {}
    for seed in seeds_of(budget):
        for row in rows:
            path = seed_dir(runs, seed) / row.name / 'eval.json'
            if path.exists():
                ev = json.loads(path.read_text())
                ev['row'], ev['dir'] = row, path.parent
                out.setdefault(row.name, {})[seed] = ev
    return out


def _mean_curve(curves: list[list[tuple[int, float]]]) -> list[tuple[int, float]]:
    curves = [c for c in curves if c]
    if not curves:
        return []
    steps = set.intersection(*[{s for s, _ in c} for c in curves])
    return [(s, sum(dict(c)[s] for c in curves) / len(curves)) for s in sorted(steps)]


def collect(runs: Path, budget: dict[str, Any]) -> tuple[dict[str, Any], dict[str, dict]]:
    """(figures, row -> seed -> eval summary) of the finished rows. Figures of a row are means
    over its seeds with the standard error; a ratio to a reference row is taken seed by seed
    (the same seed's reference) and then averaged."""
    by_row = _evals(runs, budget)
    figures: dict[str, Any] = {}
    curves: dict[str, list[tuple[int, float]]] = {}
    for name, seeds in by_row.items():
        evs = list(seeds.values())
        figures[f'{name}_seeds'] = list(seeds)
        figures[f'{name}_miou'], figures[f'{name}_miou_se'] = mean_se(
            [_pct(ev['test']['miou']) for ev in evs])
        figures[f'{name}_miou_per_seed'] = [round(_pct(ev['test']['miou']), 2) for ev in evs]
        figures[f'{name}_train_seconds'] = round(
            sum(ev['train_seconds'] for ev in evs) / len(evs), 1)
        classes = list(evs[0]['test'].get('iou') or {})
        figures[f'{name}_class_iou'] = {c: mean_se([_pct(ev['test']['iou'][c]) for ev in evs])[0]
                                        for c in classes}
        curve = _mean_curve([validation_curve(ev['dir']) for ev in evs])
        if curve:
            curves[name] = curve
            figures[f'{name}_val_last_fifth_change'] = last_fifth_change(curve)
    any_ev = next((ev for n, seeds in by_row.items() if n != COLDSTART
                   for ev in seeds.values()), None)
    if any_ev is not None:
        figures['steps_per_row'] = any_ev['step']
        figures['resolution'] = any_ev['resolution']
        figures['train_samples'] = any_ev['train_samples']
        figures['test_samples'] = any_ev['test']['samples']
        every = [ev for seeds in by_row.values() for ev in seeds.values()]
        multi = [ev['method']['psr']['scales'] for ev in every
                 if ev['method']['level'] == 'image' and len(ev['method']['psr']['scales']) > 1]
        if multi:
            figures['psr_scales'] = multi[0]
        for level in ('pixel', 'image'):
            found = [ev['method']['samples'] for ev in every if ev['method']['level'] == level]
            if found:
                figures[f'{level}_samples'] = found[0]
        config = any_ev['dir'] / 'config.yaml'
        if config.exists():
            figures['batch_size'] = yaml.safe_load(config.read_text())['run']['batch_size']
    for name, seeds in by_row.items():
        for ref in _references(name, by_row):
            ratios = [100.0 * ev['test']['miou'] / by_row[ref][s]['test']['miou']
                      for s, ev in seeds.items()
                      if s in by_row[ref] and by_row[ref][s]['test']['miou'] > 0]
            if ratios:
                figures[f'{name}_pct_of_{ref}'], figures[f'{name}_pct_of_{ref}_se'] = \
                    mean_se(ratios, 1)
    for name, ref, bound, op in TARGETS:
        key = f'{name}_pct_of_{ref}'
        if key in figures:
            ratio = figures[key] / 100.0
            figures[f'target_{name}_met'] = bool(ratio <= bound if op == '<=' else ratio >= bound)
    figures['seeds'] = sorted({s for seeds in by_row.values() for s in seeds})
    figures['_curves'] = curves
    return figures, by_row


def _references(name: str, by_row: dict[str, dict]) -> list[str]:
    """The PSL rows a row is compared with: psl and psl_cold; a Table 4 row (`_res<N>`) with
    the PSL row of its own resolution."""
    if name == COLDSTART:
        return []
    m = re.search(r'_res\d+$', name)
    if m:
        ref = f'psl{m.group(0)}'
        return [ref] if ref in by_row and ref != name else []
    return [r for r in ('psl', 'psl_cold') if r in by_row and r != name]


def _flags(ev: dict) -> dict[str, bool]:
    m = ev['method']
    scales = [float(s) for s in m['psr']['scales']]
    image = m['level'] == 'image'
    return {'cold': ev.get('init_checkpoint') is not None,
            'syncan': bool(m['sync_an']) and int(m['virtual_processes']) == 1,
            'psr_single': image and len(scales) == 1 and scales[0] < 1.0,
            'psr_multi': image and len(scales) > 1,
            'psd': image and bool(m['psd'])}


def _kind(ev: dict) -> str:
    if ev['step'] == 0:
        return 'untrained'
    return 'PSL' if ev['method']['level'] == 'supervised' else 'RSS'


def _fmt(v: float | None, se: float | None = None, digits: int = 2) -> str:
    if v is None:
        return '-'
    return f'{v:.{digits}f}' if se is None else f'{v:.{digits}f} ± {se:.{digits}f}'


def markdown(figures: dict[str, Any], by_row: dict[str, dict], curves_drawn: bool) -> str:
    tick = lambda b: 'x' if b else ''  # noqa: E731
    first = {n: next(iter(seeds.values())) for n, seeds in by_row.items()}

    def miou(n: str) -> str:
        return _fmt(figures[f'{n}_miou'], figures[f'{n}_miou_se'])

    def pct(n: str) -> str:
        m = re.search(r'_res\d+$', n)
        ref = f'psl{m.group(0)}' if m else 'psl_cold' if _flags(first[n])['cold'] else 'psl'
        v = figures.get(f'{n}_pct_of_{ref}')
        return '-' if v is None else \
            f'{_fmt(v, figures.get(f"{n}_pct_of_{ref}_se"), 1)}% of {ref}'

    def rows_of(table: int) -> list[str]:
        return [n for n, ev in first.items() if table in ev['row'].tables]

    def seeds(n: str) -> str:
        return str(len(figures[f'{n}_seeds']))

    res = figures.get('resolution') or []
    cs = COLDSTART in by_row
    lines = ['## RSS: segmentation from rewards', '',
             f'Default sim data, mIoU in % on the test split ({figures.get("test_samples", "?")} '
             f'samples, prediction at {"x".join(map(str, res))} upsampled to the labels), the '
             'mean over the seeds ± its standard error; a ratio to supervised learning is taken '
             'within each seed and then averaged. '
             f'Every row: {figures.get("steps_per_row", "?")} steps of batch '
             f'{figures.get("batch_size", "?")} on split B '
             f'({figures.get("train_samples", "?")} frames, the recordings with scene ids '
             '200-399), FusionSegNet (the RMMSS student architecture, RGB standardised), '
             f'{figures.get("pixel_samples", "?")} sampled actions per pixel (pixel level) or '
             f'{figures.get("image_samples", "?")} sampled maps per image and scale (image '
             'level). Cold start = weights of a supervised model trained first, per seed, on '
             'split A (scene ids 0-199, the same step budget'
             + (f'; {miou(COLDSTART)} mIoU on its own)' if cs else ')')
             + '. SyncAN off = 4 processes x 2 images normalising their own advantages '
             '(emulated on one process, equal to a real unsynchronised run: '
             'test/test_rss_syncan.py). Seeds: the rows the targets name ran with seeds '
             f'{figures.get("seeds")}, the other rows with the first. Written by `make '
             'rss-results` (`python -m training.rss.ablation`, training/configs/'
             'rss_ablation.yaml).', '']
    t1 = rows_of(1)
    if t1:
        lines += ['Table 1 (pixel-level reward):', '',
                  '| row | type | SyncAN | cold start | seeds | mIoU | vs supervised |',
                  '|---|---|---|---|---|---|---|']
        for n in t1:
            f = _flags(first[n])
            kind = _kind(first[n])
            lines.append(f'| `{n}` | {kind} | {"-" if kind != "RSS" else tick(f["syncan"])} | '
                         f'{tick(f["cold"])} | {seeds(n)} | {miou(n)} | {pct(n)} |')
        lines.append('')
    t2 = rows_of(2)
    if t2:
        lines += ['Table 2 (image-level reward = mIoU of each sampled map):', '',
                  '| row | type | PSR (single) | PSR (multi) | PSD | cold start | seeds | mIoU | '
                  'vs supervised |', '|---|---|---|---|---|---|---|---|---|']
        for n in t2:
            f = _flags(first[n])
            kind = _kind(first[n])
            lines.append(f'| `{n}` | {kind} | {tick(f["psr_single"])} | {tick(f["psr_multi"])} | '
                         f'{tick(f["psd"])} | {tick(f["cold"])} | {seeds(n)} | {miou(n)} | '
                         f'{pct(n)} |')
        lines.append('')
    t3 = rows_of(3)
    if t3:
        factors = sorted({float(first[n]['lr_factor']) for n in t3})
        lines += ['Table 3 (PSR + PSD, last-layer learning-rate factor):', '',
                  '| | ' + ' | '.join(f'{f:g}' for f in factors) + ' |',
                  '|---|' + '---|' * len(factors)]
        for cold in (False, True):
            cells = []
            for f in factors:
                hit = [n for n in t3 if float(first[n]['lr_factor']) == f
                       and _flags(first[n])['cold'] == cold]
                cells.append(miou(hit[0]) if hit else '-')
            lines.append(f'| {"w/" if cold else "w/o"} cold start | ' + ' | '.join(cells) + ' |')
        lines.append('')
    t4 = rows_of(4)
    if t4:
        lines += ['Table 4 (the naive image-level pipeline against the number of independent '
                  'logit cells in a sampled map; the model predicts at stride 4 and upsamples):',
                  '', '| row | training resolution | logit cells | maps sampled at | seeds | '
                  'mIoU | vs supervised |', '|---|---|---|---|---|---|---|']
        for n in sorted(t4, key=lambda n: (first[n]['resolution'][0], n)):
            h, w = first[n]['resolution']
            m = first[n]['method']
            at = '-' if m['level'] != 'image' else \
                'x'.join(str(round(v * float(m['psr']['scales'][0]))) for v in (h, w))
            lines.append(f'| `{n}` | {h}x{w} | {h // 4}x{w // 4} | {at} | {seeds(n)} | '
                         f'{miou(n)} | {pct(n)} |')
        trend = [(first[n]['resolution'], figures[f'{n}_pct_of_{ref}'])
                 for n, ref in (('image_naive_res60', 'psl_res60'), ('image_naive', 'psl'),
                                ('image_naive_res240', 'psl_res240'))
                 if f'{n}_pct_of_{ref}' in figures]
        if len(trend) > 1:
            lines += ['', 'The naive pipeline as a share of PSL at the same training resolution: '
                      + ', '.join(f'{v:.1f}% with {h // 4}x{w // 4} logit cells ({h}x{w})'
                                  for (h, w), v in trend) + '.']
        lines.append('')
    headline = [n for n in ('psl', 'psl_cold', 'image_naive', 'image_psr_psd_cold', 'pixel',
                            'pixel_syncan_cold') if figures.get(f'{n}_class_iou')]
    if headline:
        classes = list(figures[f'{headline[0]}_class_iou'])
        lines += ['Per-class IoU of the headline rows (mean over seeds):', '',
                  '| class | ' + ' | '.join(f'`{n}`' for n in headline) + ' |',
                  '|---|' + '---|' * len(headline)]
        for c in classes:
            lines.append(f'| {c} | ' + ' | '.join(_fmt(figures[f'{n}_class_iou'][c])
                                                  for n in headline) + ' |')
        lines.append('')
    flat = {n: figures.get(f'{n}_val_last_fifth_change') for n in by_row
            if figures.get(f'{n}_val_last_fifth_change') is not None}
    if flat:
        lines += ['Convergence: validation mIoU (40 frames, all modalities, mean of the seeds\' '
                  'curves) at the end minus at 80 % of the steps: ' + ', '.join(
                      f'`{n}` {v:+.2f}' for n, v in flat.items()) + '.'
                  + (f' Curves: [{CURVE_FILE}]({CURVE_FILE}).' if curves_drawn else ''), '']
    lines += [
        'How the rows are built: the policy is the per-pixel softmax (actions sampled with '
        '`torch.distributions.Categorical`), loss = -advantage x log-prob (GRPO style, no value '
        'model). Pixel level: reward 1 for the true class; advantages normalised over every '
        '(image, action, labelled pixel) of the batch, which is the group SyncAN all-reduces. '
        'Image level: reward = mIoU of each sampled map against the labels (nearest-resized to '
        'the map); without PSD the advantages are normalised over the maps of one image (GRPO '
        'group); PSD gives map i the mean over partners j of (r_i - r_j) on the pixels where the '
        'maps differ (rewards divided by their group\'s std first), 0 where they agree; PSR '
        'samples maps from area-downsampled logits at 1/8, 1/4, 1/2 and 1 of the training '
        'resolution and averages the per-scale losses. `image_naive` samples at the training '
        'resolution, `image_naive_fullres` from logits upsampled to the camera resolution '
        '(scored against the full-resolution labels). The supervised rows use cross-entropy and '
        'lr factor 1, the pixel-level rows lr factor 1 (the paper: not sensitive), the '
        'image-level rows the factor of Table 3\'s last column unless the row says otherwise. '
        'AdamW, poly schedule, same initial weights for every row of a seed without cold '
        'start.', '']
    checks = []
    for name, ref, bound, op in TARGETS:
        key = f'target_{name}_met'
        if key in figures:
            ratio = _fmt(figures[f'{name}_pct_of_{ref}'],
                         figures.get(f'{name}_pct_of_{ref}_se'), 1)
            checks.append(f'- `{name}` {op} {bound:.0%} of `{ref}`: {ratio}% '
                          f'({"met" if figures[key] else "missed"})')
    if checks:
        lines += ['Targets (against supervised learning with the same initialisation):', '',
                  *checks]
    return '\n'.join(lines)


def write(figures: dict[str, Any], by_row: dict[str, dict], docs: Path) -> None:
    curves = figures.pop('_curves', {})
    groups = {'supervised': ['psl', 'psl_cold', 'coldstart'],
              'pixel level': ['pixel', 'pixel_syncan', 'pixel_syncan_cold'],
              'image level': ['image_naive', 'image_naive_fullres', 'image_psr_psd',
                              'image_psr_psd_cold']}
    panels = {title: [(n, curves[n]) for n in names if n in curves]
              for title, names in groups.items()}
    drawn = draw_curve_panels(panels, docs / CURVE_FILE)
    write_section(SECTION, figures, markdown(figures, by_row, drawn), docs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--runs', default='runs/rss', help='ablation out_root')
    parser.add_argument('--budget', help='ablation YAML (row definitions)')
    parser.add_argument('--docs', default='docs', help='where results.{md,json} live')
    args = parser.parse_args(argv)
    figures, by_row = collect(Path(args.runs), load_budget(args.budget))
    if not [n for n in by_row if n != COLDSTART]:
        print(f'no finished RSS rows under {args.runs}/seed<s>/', file=sys.stderr)
        return 1
    write(figures, by_row, Path(args.docs))
    print(json.dumps({k: v for k, v in figures.items() if k.endswith(('_miou', '_met'))},
                     indent=1))
    return 0


if __name__ == '__main__':
    sys.exit(main())
