"""RSS ablation: the structure of the paper's Tables 1-3 on the default sim data.

  python -m training.rss.ablation [--budget training/configs/rss_ablation.yaml] [--rows a,b]
                                  [--out-root DIR] [--steps N] [--smoke] [--no-report]

Rows (same step budget each, defined in the budget YAML): supervised (PSL) with and without
cold start; pixel-level RSS without SyncAN, with SyncAN, with SyncAN + cold start (Table 1);
image-level naive, PSR single, PSR multi, PSD, PSR + PSD, PSR + PSD + cold start (Table 2); the
last-layer learning-rate factor sweep of PSR + PSD without and with cold start (Table 3).

Cold start (paper 3.1.3: weights pre-trained on another dataset) is a supervised model trained
first on the other half of the training scenes; the rows train on the remaining half and are
scored on the test split. SyncAN off is measured on one process as `virtual_processes`
unsynchronised processes would compute it (each part of the batch normalised and averaged on its
own); test/test_rss_syncan.py checks that this equals a real 2-process run without SyncAN, and
that SyncAN on 2 processes equals one process on the concatenated batch.

Each row is a resumable run directory under out_root; a finished row (eval.json with the same
config) is skipped, so an interrupted ablation continues where it stopped. The report
(training.rss.report) is written at the end.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from training.engine import RESUME_IGNORE, config_differences

from . import report
from .config import load_config
from .plan import COLDSTART, Row, load_budget, plan, row_overrides, run_order

log = logging.getLogger('rmseg-train.rss.ablation')


def run_row(budget: dict[str, Any], row: Row, out_root: str, smoke: bool,
            steps: int | None) -> dict[str, Any]:
    """Train, evaluate and describe one row (skipped when already finished with this config)."""
    from .trainer import train

    cfg, resolved = load_config(budget.get('config'), False,
                                row_overrides(budget, row, out_root, smoke, steps))
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--budget',
                        help='ablation YAML (default training/configs/rss_ablation.yaml)')
    parser.add_argument('--rows', help='comma-separated row names (default: all)')
    parser.add_argument('--out-root', help='where the runs go (default: the budget\'s out_root)')
    parser.add_argument('--steps', type=int, help='override the step budget of every row')
    parser.add_argument('--smoke', action='store_true', help='seconds-long rows (tests)')
    parser.add_argument('--docs', default='docs', help='where results.{md,json} live')
    parser.add_argument('--no-report', action='store_true', help='do not write docs/results.*')
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(name)s: %(message)s', stream=sys.stderr)
    budget = load_budget(args.budget)
    out_root = args.out_root or budget.get('out_root', 'runs/rss')
    rows = plan(budget)
    wanted = set(args.rows.split(',')) if args.rows else None
    if wanted:
        unknown = wanted - {r.name for r in rows}
        if unknown:
            raise SystemExit(f'unknown rows {sorted(unknown)}; known: {[r.name for r in rows]}')
        needs_cold = any(r.cold for r in rows if r.name in wanted)
        rows = [r for r in rows if r.name in wanted or (needs_cold and r.name == COLDSTART)]
    for row in run_order(rows, budget.get('run_first') or []):
        run_row(budget, row, out_root, args.smoke, args.steps)
    if not args.no_report:
        report.main(['--runs', out_root, '--docs', args.docs,
                     *(['--budget', args.budget] if args.budget else [])])
    return 0


if __name__ == '__main__':
    sys.exit(main())
