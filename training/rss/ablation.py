"""RSS ablation: the structure of the paper's Tables 1-3 on the default sim data.

  python -m training.rss.ablation [--budget training/configs/rss_ablation.yaml] [--rows a,b]
                                  [--seeds 0 1 2] [--jobs 2] [--out-root DIR] [--steps N]
                                  [--smoke] [--no-report]

Rows (same step budget each, defined in the budget YAML): supervised (PSL) with and without
cold start; pixel-level RSS without SyncAN, with SyncAN, with SyncAN + cold start (Table 1);
image-level naive, PSR single, PSR multi, PSD, PSR + PSD, PSR + PSD + cold start (Table 2); the
last-layer learning-rate factor sweep of PSR + PSD without and with cold start (Table 3); the
naive pipeline and PSL at three training resolutions (Table 4).

Cold start (paper 3.1.3: weights pre-trained on another dataset) is a supervised model trained
first on the other half of the training scenes; the rows train on the remaining half and are
scored on the test split. SyncAN off is measured on one process as `virtual_processes`
unsynchronised processes would compute it (each part of the batch normalised and averaged on its
own); test/test_rss_syncan.py checks that this equals a real 2-process run without SyncAN, and
that SyncAN on 2 processes equals one process on the concatenated batch.

Seeds: every seed of the budget's `seeds` (the run seed, and its own cold-start model) trains in
<out_root>/seed<s>; the first seed trains every row, the others the budget's `seed_rows`.
`--jobs N` trains N rows at once, each in its own process with one torch thread.

Each row is a resumable run directory; a finished row (eval.json with the same config) is
skipped, so an interrupted ablation continues where it stopped. The report (training.rss.report)
is written at the end.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from training.engine import RESUME_IGNORE, config_differences

from . import report
from .config import load_config
from .plan import (
    COLDSTART,
    Row,
    load_budget,
    plan,
    row_overrides,
    rows_for_seed,
    run_order,
    seed_dir,
    seeds_of,
)

log = logging.getLogger('rmseg-train.rss.ablation')


def run_row(budget: dict[str, Any], row: Row, out_root: str | Path, smoke: bool,
            steps: int | None, seed: int | None = None) -> dict[str, Any]:
    """Train, evaluate and describe one row (skipped when already finished with this config)."""
    from .trainer import train

    cfg, resolved = load_config(budget.get('config'), False,
                                row_overrides(budget, row, out_root, smoke, steps, seed))
    out = cfg.run_dir()
    done = out / 'eval.json'
    if done.exists() and (out / 'config.yaml').exists():
        old = yaml.safe_load((out / 'config.yaml').read_text()) or {}
        diff = config_differences(old, resolved, RESUME_IGNORE)
        if not diff and json.loads(done.read_text()).get('step') == cfg.run.steps:
            log.info('%s: finished already (%s)', row.name, done)
            return json.loads(done.read_text())
        if diff:
            raise ValueError(f'{out} holds a finished run with another config ({diff}); '
                             'use another --out-root')
    if row.cold and not Path(cfg.init_checkpoint).exists():
        raise FileNotFoundError(f'{row.name}: cold-start weights {cfg.init_checkpoint} missing')
    t0 = time.perf_counter()
    summary = train(cfg, resolved, out)
    (out / 'row.json').write_text(json.dumps(
        {'name': row.name, 'label': row.label, 'tables': row.tables, 'cold': row.cold}) + '\n')
    log.info('%s: test mIoU %.4f (%.0f s)', row.name, summary['test']['miou'],
             time.perf_counter() - t0)
    return summary


def _finished(out_root: str, seed: int, name: str) -> bool:
    return (seed_dir(out_root, seed) / name / 'eval.json').exists()


def run_parallel(jobs: list[tuple[int, Row]], args: argparse.Namespace, out_root: str,
                 poll_s: float = 2.0) -> int:
    """Train the (seed, row) jobs `args.jobs` at a time, in order, each as a child process of
    this module (`--seeds s --rows r`); a cold-start row starts once its seed's cold-start model
    is finished. Returns 0 when every job succeeded."""
    base = [sys.executable, '-m', 'training.rss.ablation', '--out-root', out_root, '--no-report',
            *(['--budget', args.budget] if args.budget else []),
            *(['--steps', str(args.steps)] if args.steps else []),
            *(['--smoke'] if args.smoke else [])]
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'TQDM_DISABLE': '1'}
    pending = [j for j in jobs if not _finished(out_root, j[0], j[1].name)]
    running: dict[tuple[int, str], subprocess.Popen] = {}
    failed: list[tuple[int, str]] = []
    while pending or running:
        for key, proc in list(running.items()):
            if proc.poll() is not None:
                del running[key]
                log.info('seed %d %s: exit %d', key[0], key[1], proc.returncode)
                if proc.returncode or not _finished(out_root, *key):
                    failed.append(key)
        for seed, row in list(pending):
            if len(running) >= args.jobs:
                break
            if row.cold and not _finished(out_root, seed, COLDSTART):
                if (seed, COLDSTART) in failed:
                    pending.remove((seed, row))
                    failed.append((seed, row.name))
                continue
            run_dir = seed_dir(out_root, seed) / row.name
            run_dir.mkdir(parents=True, exist_ok=True)
            with open(run_dir / 'ablation.log', 'a', encoding='utf-8') as out:
                running[seed, row.name] = subprocess.Popen(
                    [*base, '--seeds', str(seed), '--rows', row.name], stdout=out,
                    stderr=subprocess.STDOUT, env=env)
            log.info('seed %d %s: started', seed, row.name)
            pending.remove((seed, row))
        if pending or running:
            time.sleep(poll_s)
    for seed, name in failed:
        log.error('seed %d %s failed: %s', seed, name, seed_dir(out_root, seed) / name /
                  'ablation.log')
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--budget',
                        help='ablation YAML (default training/configs/rss_ablation.yaml)')
    parser.add_argument('--rows', help='comma-separated row names (default: all)')
    parser.add_argument('--out-root', help='where the runs go (default: the budget\'s out_root)')
    parser.add_argument('--steps', type=int, help='override the step budget of every row')
    parser.add_argument('--seeds', type=int, nargs='+',
                        help='train these of the budget\'s seeds (default: all of them)')
    parser.add_argument('--jobs', type=int, default=1,
                        help='rows trained at once, each in its own process (1 torch thread '
                             'each; a cold-start row waits for its seed\'s cold-start model)')
    parser.add_argument('--smoke', action='store_true', help='seconds-long rows (tests)')
    parser.add_argument('--docs', default='docs', help='where results.{md,json} live')
    parser.add_argument('--no-report', action='store_true', help='do not write docs/results.*')
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(name)s: %(message)s', stream=sys.stderr)
    budget = load_budget(args.budget)
    out_root = args.out_root or budget.get('out_root', 'runs/rss')
    rows = plan(budget)
    seeds = seeds_of(budget)
    unknown_seeds = set(args.seeds or []) - set(seeds)
    if unknown_seeds:
        raise SystemExit(f'seeds {sorted(unknown_seeds)} are not in the budget\'s {seeds}')
    per_seed = {seed: {r.name for r in rows_for_seed(budget, rows, seed)}
                for seed in args.seeds or seeds}
    wanted = set(args.rows.split(',')) if args.rows else None
    if wanted:
        unknown = wanted - {r.name for r in rows}
        if unknown:
            raise SystemExit(f'unknown rows {sorted(unknown)}; known: {[r.name for r in rows]}')
        for seed, names in per_seed.items():
            cold = any(r.cold for r in rows if r.name in wanted & names)
            per_seed[seed] = {n for n in names if n in wanted or (cold and n == COLDSTART)}
    # row by row (the cold-start models, then the headline rows), each for every seed, so a
    # budget cut short has the headline rows of every seed
    jobs = [(seed, row) for row in run_order(rows, budget.get('run_first') or [])
            for seed in per_seed if row.name in per_seed[seed]]
    if args.jobs > 1:
        if run_parallel(jobs, args, out_root) != 0:
            return 1
    else:
        for seed, row in jobs:
            run_row(budget, row, seed_dir(out_root, seed), args.smoke, args.steps, seed)
    if not args.no_report:
        report.main(['--runs', out_root, '--docs', args.docs,
                     *(['--budget', args.budget] if args.budget else [])])
    return 0


if __name__ == '__main__':
    sys.exit(main())
