"""The RMMSS results: evaluations of the teacher and of every seed's robust model, dropout-only
baseline and FSM student -> the `rmmss` section of docs/results.{json,md} and the validation
curves (docs/rmmss_curves.png).

`python -m training.rmmss.report --runs runs/rmmss --seeds 0 1 2` reads
`<runs>/eval_teacher/eval.json`, `<runs>/seed<S>/eval_{robust,dropout,fsm}/eval.json` (written by
`rmseg-train evaluate`), the budgets from each run's config.yaml and the validation records
from each run's metrics.jsonl, and rewrites only its own section of both files, so every figure
in the Markdown is also in the JSON, written by the code that read the measurement. Per seed
figures are averaged over the seeds; `_se` is the standard error of that mean (sample standard
deviation / sqrt(n)).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from rmseg_ros.label_metrics import confusion_shares
from rmseg_ros.modalities import all_subsets, subset_name
from training.results import (
    confusion_markdown,
    draw_curve_panels,
    last_fifth_change,
    mean_se,
    validation_curve,
    write_section,
)

SECTION = 'rmmss'
MODELS = {  # run name -> (row label, key prefix in results.json)
    'teacher': ('teacher (all modalities, class-weighted OHEM CE)', 'teacher'),
    'teacher_half': ('teacher, half the steps (convergence check; not distilled from)',
                     'teacher_half'),
    'teacher_long': ('teacher, twice the steps (convergence check; not distilled from)',
                     'teacher_long'),
    'dropout': ('dropout-only baseline, compute-matched (robust + FSM steps)', 'dropout'),
    'robust': ('HPDM robust model (dropout + pixel KL + prototypes)', 'hpdm'),
    'fsm': ('FSM student (deployed)', 'fsm'),
    'dropout_at_robust': ("dropout-only baseline at the HPDM's steps (its checkpoint there)",
                          'dropout_equal'),
}
SEEDED = ('robust', 'dropout', 'fsm', 'dropout_at_robust')
CONVERGENCE_RUNS = ('teacher_half', 'teacher_long')  # the teacher's run at other step counts
TEACHERS = ('teacher', *CONVERGENCE_RUNS)
CLASS_SUBSETS = ('RDLE', 'R', 'D')
CURVE_FILE = 'rmmss_curves.png'


def _pct(v: float | None) -> float | None:
    return None if v is None else round(100.0 * v, 2)


def _eval_figures(ev: dict[str, Any]) -> dict[str, Any]:
    """mIoU figures (in %) of one eval.json."""
    out: dict[str, Any] = {'full_miou': _pct(ev['full']['miou']),
                           'class_iou': {c: _pct(v) for c, v in ev['full']['iou'].items()}}
    emm = ev.get('emm', {}).get('remove')
    if emm:
        out['subset_mean'] = _pct(emm['mean_miou'])
        out['subsets'] = {s: _pct(emm['subsets'][s]['miou']) for s in emm['subsets']}
        out['subset_class_iou'] = {s: {c: _pct(v) for c, v in emm['subsets'][s]['iou'].items()}
                                   for s in CLASS_SUBSETS if s in emm['subsets']}
    if 'zero' in ev.get('emm', {}):
        out['zero_fill_subset_mean'] = _pct(ev['emm']['zero']['mean_miou'])
    for case in ('rmm', 'nm'):
        if case in ev:
            out[f'{case}_mean'] = _pct(ev[case]['mean_miou'])
    if ev.get('failures'):
        out['failures'] = {f: _pct(v['miou']) for f, v in ev['failures'].items()}
    out['samples'] = ev['samples']
    return out


def _steps(run_dir: Path) -> int | None:
    config = run_dir / 'config.yaml'
    return yaml.safe_load(config.read_text())['run']['steps'] if config.exists() else None


def _validated_mean(ev: dict[str, Any], validated: list[str]) -> float | None:
    """Mean mIoU (%) over the subsets the run validated (`validate.subsets` of its config):
    the figure of its validation curve."""
    subsets = ev.get('emm', {}).get('remove', {}).get('subsets', {})
    values = [subsets[s]['miou'] for s in validated if s in subsets]
    return _pct(sum(values) / len(values)) if values and len(values) == len(validated) else None


def fsm_second_half(runs: Path, seeds: list[int]) -> dict[str, dict[str, float | None]]:
    """seed -> change (points) of the FSM from its middle checkpoint to its end, scored on the
    validation samples (`make results` writes eval_fsm_half_val / eval_fsm_end_val): the FSM
    runs too few steps for more than one point on its validation curve."""
    out: dict[str, dict[str, float | None]] = {}
    for seed in seeds:
        half, end = (runs / f'seed{seed}' / f'eval_fsm_{p}_val' / 'eval.json'
                     for p in ('half', 'end'))
        config = runs / f'seed{seed}' / 'fsm' / 'config.yaml'
        if not (half.exists() and end.exists() and config.exists()):
            continue
        validated = yaml.safe_load(config.read_text())['validate']['subsets']
        a, b = (json.loads(p.read_text()) for p in (half, end))
        va, vb = _validated_mean(a, validated), _validated_mean(b, validated)
        ma, mb = (a['emm']['remove']['mean_miou'], b['emm']['remove']['mean_miou'])
        out[str(seed)] = {
            'validated_mean_half': va, 'validated_mean_end': vb,
            'validated_mean_change': None if va is None or vb is None else round(vb - va, 2),
            'subset_mean_change': round(100.0 * (mb - ma), 2)}
    return out


def hpdm_minus_dropout_by_step(curves: dict[str, list[tuple[int, float]]], seeds: list[int]
                               ) -> dict[str, dict[str, Any]]:
    """step -> HPDM minus the dropout-only baseline on the validation curves (points), mean and
    s.e. over the seeds that validated both at that step: when distillation helps."""
    by_step: dict[int, list[float]] = {}
    for seed in seeds:
        hpdm = dict(curves.get(f'robust seed {seed}', []))
        for step, value in curves.get(f'dropout seed {seed}', []):
            if step in hpdm:
                by_step.setdefault(step, []).append(100.0 * (hpdm[step] - value))
    out = {}
    for step in sorted(by_step):
        mean, se = mean_se(by_step[step])
        out[str(step)] = {'mean': mean, 'se': se, 'seeds': len(by_step[step])}
    return out


def collect(runs: Path, seeds: list[int]) -> dict[str, Any]:
    """Figures (mIoU in %) of every evaluated model under `runs`; seeded models averaged."""
    figures: dict[str, Any] = {'seeds': list(seeds)}
    per_seed: dict[str, list[dict[str, Any]]] = {m: [] for m in SEEDED}
    curves: dict[str, list[tuple[int, float]]] = {}
    for run in TEACHERS:  # one seed each; the convergence runs: the same run at other steps
        teacher_eval = runs / f'eval_{run}' / 'eval.json'
        if teacher_eval.exists():
            t = _eval_figures(json.loads(teacher_eval.read_text()))
            figures.update({f'{run}_{k}': v for k, v in t.items() if k != 'samples'})
            figures[f'{run}_train_steps'] = _steps(runs / run)
            figures['test_samples'] = t['samples']
            curves[run.replace('_', ' ')] = validation_curve(runs / run)
    for run in SEEDED:
        for seed in seeds:
            path = runs / f'seed{seed}' / f'eval_{run}' / 'eval.json'
            if path.exists():
                per_seed[run].append({'seed': seed,
                                      **_eval_figures(json.loads(path.read_text()))})
                if run != 'dropout_at_robust':  # a checkpoint of the dropout run
                    curves[f'{run} seed {seed}'] = validation_curve(runs / f'seed{seed}' / run)
    for run, rows in per_seed.items():
        if not rows:
            continue
        key = MODELS[run][1]
        figures[f'{key}_train_steps'] = _steps(
            runs / f'seed{rows[0]["seed"]}' / ('robust' if run == 'dropout_at_robust' else run))
        figures[f'{key}_seeds'] = [r['seed'] for r in rows]
        for fig in ('full_miou', 'subset_mean'):
            mean, se = mean_se([r.get(fig) for r in rows])
            figures[f'{key}_{fig}'], figures[f'{key}_{fig}_se'] = mean, se
            figures[f'{key}_{fig}_per_seed'] = [r.get(fig) for r in rows]
        classes = list(rows[0]['class_iou'])
        figures[f'{key}_class_iou'] = {c: mean_se([r['class_iou'][c] for r in rows])[0]
                                       for c in classes}
        figures[f'{key}_class_iou_se'] = {c: mean_se([r['class_iou'][c] for r in rows])[1]
                                          for c in classes}
        subsets = rows[0].get('subsets', {})
        figures[f'{key}_subsets'] = {s: mean_se([r['subsets'][s] for r in rows])[0]
                                     for s in subsets}
        figures[f'{key}_subset_class_iou'] = {
            s: {c: mean_se([r['subset_class_iou'][s][c] for r in rows])[0] for c in classes}
            for s in rows[0].get('subset_class_iou', {})}
        first = rows[0]  # cases evaluated on the shipped (first) seed only
        for fig in ('zero_fill_subset_mean', 'rmm_mean', 'nm_mean', 'failures'):
            if fig in first:
                figures[f'{key}_{fig}'] = first[fig]
    heldout = runs / 'eval_heldout' / 'eval.json'
    if heldout.exists():  # the shipped student on a set rendered outside the default splits
        ev = json.loads(heldout.read_text())
        h = _eval_figures(ev)
        figures['heldout'] = {'shards': ev.get('shards'), 'samples': h['samples'],
                              'full_miou': h['full_miou'], 'subset_mean': h.get('subset_mean'),
                              'subsets': h.get('subsets', {}), 'class_iou': h['class_iou'],
                              'subset_class_iou': h.get('subset_class_iou', {})}
    on_train = runs / 'eval_fsm_train' / 'eval.json'
    if on_train.exists():  # the shipped student on training frames: what it fitted
        ev = json.loads(on_train.read_text())
        h = _eval_figures(ev)
        figures['fsm_train_frames'] = {'shards': ev.get('shards'), 'samples': h['samples'],
                                       'full_miou': h['full_miou'], 'class_iou': h['class_iou']}
    ship_eval = runs / f'seed{seeds[0]}' / 'eval_fsm' / 'eval.json' if seeds else None
    if ship_eval is not None and ship_eval.exists():
        ev = json.loads(ship_eval.read_text())
        if ev['full'].get('confusion'):
            figures['fsm_confusion_pct'] = confusion_shares(ev['classes'],
                                                               ev['full']['confusion'])
    if 'dropout_subset_mean' in figures:  # the names for the compute-matched baseline
        figures['dropout_matched_subset_mean'] = figures['dropout_subset_mean']
        figures['dropout_matched_subset_mean_se'] = figures['dropout_subset_mean_se']
    if 'fsm_subset_mean' in figures and 'dropout_subset_mean' in figures:
        figures['fsm_minus_dropout_subset_mean'] = round(
            figures['fsm_subset_mean'] - figures['dropout_subset_mean'], 2)
    if 'hpdm_subset_mean' in figures and 'dropout_equal_subset_mean' in figures:
        # paired by seed: distillation at equal steps, and what the baseline's extra steps add
        figures['hpdm_minus_dropout_equal_subset_mean'] = _paired(
            figures, 'hpdm', 'dropout_equal')
        if 'dropout_subset_mean' in figures:
            figures['dropout_extra_steps_gain_subset_mean'] = _paired(
                figures, 'dropout', 'dropout_equal')
    if 'fsm_full_miou' in figures and 'teacher_full_miou' in figures:
        figures['fsm_minus_teacher_full_miou'] = round(
            figures['fsm_full_miou'] - figures['teacher_full_miou'], 2)
    for run in CONVERGENCE_RUNS:
        if f'{run}_full_miou' in figures and 'teacher_full_miou' in figures:
            figures[f'{run}_minus_teacher'] = {
                fig: round(figures[f'{run}_{fig}'] - figures[f'teacher_{fig}'], 2)
                for fig in ('full_miou', 'subset_mean')
                if figures.get(f'{run}_{fig}') is not None
                and figures.get(f'teacher_{fig}') is not None}
    figures['val_last_fifth_change'] = {name: last_fifth_change(c) for name, c in curves.items()
                                        if c}
    gap = hpdm_minus_dropout_by_step(curves, seeds)
    if gap:
        figures['val_hpdm_minus_dropout_by_step'] = gap
    half = fsm_second_half(runs, seeds)
    if half:
        figures['fsm_second_half_change'] = half
    figures['_curves'] = curves
    return figures


def _paired(figures: dict[str, Any], a: str, b: str, fig: str = 'subset_mean'
            ) -> dict[str, Any]:
    """Mean and standard error over the seeds both models ran of `a - b` in `fig`."""
    va = dict(zip(figures[f'{a}_seeds'], figures[f'{a}_{fig}_per_seed'], strict=True))
    vb = dict(zip(figures[f'{b}_seeds'], figures[f'{b}_{fig}_per_seed'], strict=True))
    seeds = [s for s in va if s in vb and va[s] is not None and vb[s] is not None]
    diffs = [round(va[s] - vb[s], 2) for s in seeds]
    mean, se = mean_se(diffs)
    return {'mean': mean, 'se': se, 'seeds': seeds, 'per_seed': diffs}


def _fmt(v: float | None, se: float | None = None) -> str:
    if v is None:
        return '-'
    return f'{v:.2f}' if se is None else f'{v:.2f} ± {se:.2f}'


def markdown(figures: dict[str, Any]) -> str:
    present = [(run, label, key) for run, (label, key) in MODELS.items()
               if f'{key}_full_miou' in figures]
    seeds = figures.get('seeds', [])
    lines = [
        '## RMMSS: teacher, baselines and the FSM student', '',
        f'Test split of the default sim data (`make data`: {figures.get("test_samples", "?")} '
        'samples), mIoU in %. Missing modalities are removed from fusion; the mean is over the '
        '15 non-empty subsets (R = rgb, D = depth, L = lidar, E = event). One teacher; the '
        f'robust model, the dropout-only baseline and the FSM student are trained with seeds '
        f'{", ".join(map(str, seeds))} (mean ± standard error over the seeds; zero-filled, RMM, '
        f'NM and the sensor failures, when `make results EVAL_CASES=all` scored them, are of '
        f'seed {seeds[0] if seeds else "?"}, the shipped one). '
        'Written by `python -m training.rmmss.report` from `make results`.', '',
        '| model | steps | all (RDLE) | 15-subset mean | zero-filled mean | RMM | NM |',
        '|---|---|---|---|---|---|---|']
    for _, label, key in present:
        lines.append(
            f'| {label} | {figures.get(f"{key}_train_steps", "?")} | '
            f'{_fmt(figures[f"{key}_full_miou"], figures.get(f"{key}_full_miou_se"))} | '
            f'{_fmt(figures.get(f"{key}_subset_mean"), figures.get(f"{key}_subset_mean_se"))} | '
            f'{_fmt(figures.get(f"{key}_zero_fill_subset_mean"))} | '
            f'{_fmt(figures.get(f"{key}_rmm_mean"))} | {_fmt(figures.get(f"{key}_nm_mean"))} |')
    if 'fsm_minus_dropout_subset_mean' in figures:
        lines += ['', f'FSM - compute-matched dropout baseline, 15-subset mean: '
                      f'{figures["fsm_minus_dropout_subset_mean"]:+.2f} points (per seed: FSM '
                      f'{figures["fsm_subset_mean_per_seed"]}, dropout '
                      f'{figures["dropout_subset_mean_per_seed"]}).']
    for key, text in (('hpdm_minus_dropout_equal_subset_mean',
                       'HPDM - dropout-only baseline at the same steps (what distillation adds)'),
                      ('dropout_extra_steps_gain_subset_mean',
                       'dropout-only baseline, compute-matched - at the HPDM\'s steps (what the '
                       'extra steps add)')):
        if key in figures:
            d = figures[key]
            lines.append(f'{text}, 15-subset mean: {_fmt(d["mean"], d["se"])} points, paired '
                         f'by seed (seeds {d["seeds"]}: {d["per_seed"]}).')
    if 'fsm_minus_teacher_full_miou' in figures:
        lines.append(f'FSM - teacher, all modalities: '
                     f'{figures["fsm_minus_teacher_full_miou"]:+.2f} points.')
    for run in CONVERGENCE_RUNS:
        if figures.get(f'{run}_minus_teacher'):
            d = figures[f'{run}_minus_teacher']
            lines.append(f'Teacher with {figures.get(f"{run}_train_steps", "?")} steps - with '
                         f'{figures.get("teacher_train_steps", "?")} (same seed, data and '
                         'schedule shape): ' + ', '.join(f'{fig} {v:+.2f}' for fig, v in d.items())
                         + ' points.')
    classes = list(next((figures[f'{k}_class_iou'] for _, _, k in present), {}))
    for subset, title in (('RDLE', 'all modalities'), ('R', 'RGB alone'),
                          ('D', 'depth alone')):
        cols = [(label, key) for _, label, key in present
                if subset in figures.get(f'{key}_subset_class_iou', {})]
        if not cols:
            continue
        lines += ['', f'IoU per class, {title} ({subset}), %:', '',
                  '| class | ' + ' | '.join(key for _, key in cols) + ' |',
                  '|---|' + '---|' * len(cols)]
        for c in classes:
            row = []
            for _, key in cols:
                v = figures[f'{key}_subset_class_iou'][subset].get(c)
                se = figures.get(f'{key}_class_iou_se', {}).get(c) if subset == 'RDLE' else None
                row.append(_fmt(v, se))
            lines.append(f'| {c} | ' + ' | '.join(row) + ' |')
    subsets = [subset_name(s) for s in all_subsets()]
    with_subsets = [(label, key) for _, label, key in present if f'{key}_subsets' in figures]
    lines += ['', '| subset | ' + ' | '.join(key for _, key in with_subsets) + ' |',
              '|---|' + '---|' * len(with_subsets)]
    for s in subsets:
        lines.append(f'| {s} | ' + ' | '.join(_fmt(figures[f'{key}_subsets'].get(s))
                                              for _, key in with_subsets) + ' |')
    with_failures = [(label, key) for _, label, key in present if f'{key}_failures' in figures]
    failures = sorted({f for _, key in with_failures for f in figures[f'{key}_failures']})
    if failures:
        lines += ['', '| sensor failure (all modalities) | ' + ' | '.join(
            key for _, key in with_failures) + ' |', '|---|' + '---|' * len(with_failures)]
        for f in failures:
            lines.append(f'| {f} | ' + ' | '.join(
                _fmt(figures[f'{key}_failures'].get(f)) for _, key in with_failures) + ' |')
    held = figures.get('heldout')
    if held:
        ship = figures['seeds'][0] if figures.get('seeds') else '?'
        test = figures.get('fsm_subset_class_iou', {}).get('RDLE', {})
        lines += ['', f'Held-out set ({held["samples"]} samples of `{held["shards"]}`: scenes '
                      'and light outside the default splits), the shipped student (seed '
                      f'{ship}) against the seeds\' mean on the test split, %:', '',
                      '| | all (RDLE) | 15-subset mean | ' + ' | '.join(held['class_iou']) + ' |',
                      '|---|---|---|' + '---|' * len(held['class_iou']),
                      f'| held-out | {_fmt(held["full_miou"])} | {_fmt(held["subset_mean"])} | '
                      + ' | '.join(_fmt(v) for v in held['class_iou'].values()) + ' |',
                      f'| test | {_fmt(figures.get("fsm_full_miou"))} | '
                      f'{_fmt(figures.get("fsm_subset_mean"))} | '
                      + ' | '.join(_fmt(test.get(c)) for c in held['class_iou']) + ' |']
    fitted = figures.get('fsm_train_frames')
    if fitted:
        test = figures.get('fsm_class_iou', {})
        lines += ['', f'The shipped student on {fitted["samples"]} evenly spaced training frames '
                      f'(`{fitted["shards"]}`) against the seeds\' mean on the test split, all '
                      'modalities, %: the gap between the rows is what it fitted of the training '
                      'scenes that does not carry to new ones.', '',
                  '| | all (RDLE) | ' + ' | '.join(fitted['class_iou']) + ' |',
                  '|---|---|' + '---|' * len(fitted['class_iou']),
                  f'| training frames | {_fmt(fitted["full_miou"])} | '
                  + ' | '.join(_fmt(v) for v in fitted['class_iou'].values()) + ' |',
                  f'| test | {_fmt(figures.get("fsm_full_miou"))} | '
                  + ' | '.join(_fmt(test.get(c)) for c in fitted['class_iou']) + ' |']
    confusion = figures.get('fsm_confusion_pct')
    if confusion:
        names = list(next(iter(confusion.values())))
        lines += ['', f'Where the shipped student\'s (seed {seeds[0] if seeds else "?"}) '
                      'pixels go on the test split, all modalities: % of each true class\'s '
                      'pixels (rows) predicted as each class (columns):', '',
                  confusion_markdown(names, confusion)]
    flat = figures.get('val_last_fifth_change') or {}
    if flat:
        lines += ['', f'Validation curves: `docs/{CURVE_FILE}` (mean mIoU over the validated '
                      'subsets RDLE, R, D, L, E on 120 validation samples, against the step). '
                      'Change over the last fifth of each run, in points: ' + ', '.join(
                          f'{name} {_fmt(v)}' for name, v in flat.items()) + '.']
    gap = figures.get('val_hpdm_minus_dropout_by_step') or {}
    if gap:
        lines += ['', 'HPDM minus the dropout-only baseline on the validation curves at the same '
                      'step (mean over the validated subsets, points, mean ± s.e. over the seeds): '
                      + ', '.join(f'step {step} {_fmt(v["mean"], v["se"])}'
                                  for step, v in gap.items()) + '.']
    half = figures.get('fsm_second_half_change') or {}
    if half:
        lines += ['', 'The FSM has one validation point per run; its middle and last checkpoints '
                      'scored on the same validation samples (mean over the validated subsets, '
                      'middle -> end, change; 15-subset mean change), in points: ' + ', '.join(
                          f'seed {s} {_fmt(v["validated_mean_half"])} -> '
                          f'{_fmt(v["validated_mean_end"])} ({_fmt(v["validated_mean_change"])}; '
                          f'{_fmt(v["subset_mean_change"])})' for s, v in half.items()) + '.']
    return '\n'.join(lines)


def draw_curves(curves: dict[str, list[tuple[int, float]]], path: Path) -> bool:
    """Validation mIoU against the step, one panel per stage (PNG)."""
    groups: dict[str, list[tuple[str, list[tuple[int, float]]]]] = {
        'teacher': [], 'robust': [], 'dropout': [], 'fsm': []}
    for name, curve in curves.items():
        if curve:
            groups[name.split()[0]].append((name, curve))
    return draw_curve_panels(groups, path)


def write(figures: dict[str, Any], docs: Path) -> None:
    curves = figures.pop('_curves', {})
    draw_curves(curves, docs / CURVE_FILE)
    write_section(SECTION, figures, markdown(figures), docs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--runs', default='runs/rmmss', help='RMMSS run root')
    parser.add_argument('--seeds', type=int, nargs='+', default=[0],
                        help='seeds of the robust / dropout / FSM runs (<runs>/seed<S>/...)')
    parser.add_argument('--docs', default='docs', help='where results.{md,json} live')
    args = parser.parse_args(argv)
    figures = collect(Path(args.runs), args.seeds)
    if 'teacher_full_miou' not in figures and 'fsm_full_miou' not in figures:
        print(f'no evaluations under {args.runs} (run `make results`)', file=sys.stderr)
        return 1
    write(figures, Path(args.docs))
    print(json.dumps({k: v for k, v in figures.items() if not isinstance(v, dict | list)},
                     indent=1))
    return 0


if __name__ == '__main__':
    sys.exit(main())
