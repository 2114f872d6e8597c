"""The RobotSeg experiment: render the held-out data, train every variant with the same step
budget, evaluate them and the flow baseline on the held-out videos, write the results section.

    python -m training.robotseg.experiment [--config FILE] [--steps N] [--jobs J]
        [--variants robotseg supervised ...] [--data-only] [--no-train] [--no-report] [--smoke]

Everything resumes: rendered scenes, decoded videos (npz cache), training runs (checkpoints)
and finished evaluations (eval_<name>.json, recomputed when the model file is newer) are kept.
Variants train in `--jobs` parallel processes (one torch thread each). Outputs go to
<out_root>/{<variant>/, eval_<name>.json, experiment.json}; the report goes to docs/.
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

from .config import load_config

log = logging.getLogger('robotseg.experiment')


def _train_command(config: str | None, variant: str, out: Path, steps: int | None,
                   smoke: bool) -> list[str]:
    cmd = [sys.executable, '-m', 'training.cli', 'robotseg', '--out', str(out)]
    if config:
        cmd += ['--config', config]
    if smoke:
        cmd.append('--smoke')
    cmd += ['--variant', variant]
    if steps:
        cmd += ['--steps', str(steps)]
    return cmd


def train_all(config: str | None, variants: list[str], steps: int | None, jobs: int,
              smoke: bool) -> dict[str, int]:
    """Train the variants in up to `jobs` child processes; returns variant -> exit status."""
    pending = list(variants)
    running: dict[str, tuple[subprocess.Popen, Any]] = {}
    status: dict[str, int] = {}
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get('OMP_NUM_THREADS', '1'))
    while pending or running:
        while pending and len(running) < max(1, jobs):
            v = pending.pop(0)
            cfg, _ = load_config(config, v, smoke)
            out = cfg.run_dir(v)
            out.mkdir(parents=True, exist_ok=True)
            logf = open(out / 'train_log.txt', 'a')  # closed when the child ends
            proc = subprocess.Popen(_train_command(config, v, out, steps, smoke), env=env,
                                    stdout=logf, stderr=subprocess.STDOUT)
            running[v] = (proc, logf)
            log.info('training %s -> %s (pid %d)', v, out, proc.pid)
        time.sleep(2)
        for v, (proc, logf) in list(running.items()):
            if proc.poll() is not None:
                logf.close()
                status[v] = proc.returncode
                del running[v]
                log.info('%s finished with status %d', v, proc.returncode)
    return status


def _fresh(result: Path, model: Path | None) -> bool:
    if not result.exists():
        return False
    return model is None or result.stat().st_mtime >= model.stat().st_mtime


def evaluate_all(config: str | None, variants: list[str], smoke: bool) -> dict[str, Any]:
    """eval_<variant>.json for each trained variant and eval_flow.json (the baseline)."""
    import torch

    from .clips import load_videos
    from .evaluate import evaluate_checkpoint, evaluate_flow

    torch.set_num_threads(int(os.environ.get('OMP_NUM_THREADS', '1')))
    base, _ = load_config(config, None, smoke)
    videos = load_videos(base.data.test, base.data, base.evaluate.max_videos)
    root = Path(base.out_root)
    results: dict[str, Any] = {}
    flow_path = root / 'eval_flow.json'
    if not _fresh(flow_path, None):
        flow_path.write_text(json.dumps(evaluate_flow(videos, base.evaluate, base.flow),
                                        indent=1))
    results['flow'] = json.loads(flow_path.read_text())
    for v in variants:
        cfg, _ = load_config(config, v, smoke)
        model = Path(cfg.evaluate.checkpoint) if cfg.evaluate.checkpoint else \
            cfg.run_dir(v) / 'model.safetensors'
        if not model.exists():
            log.warning('%s: no model at %s, not evaluated', v, model)
            continue
        path = root / f'eval_{v}.json'
        if not _fresh(path, model):
            res = evaluate_checkpoint(model, videos, cfg.evaluate)
            summary = json.loads((cfg.run_dir(v) / 'summary.json').read_text()) \
                if (cfg.run_dir(v) / 'summary.json').exists() else {}
            res['train'] = {k: summary.get(k) for k in ('step', 'videos', 'frames',
                                                        'labelled_frames')}
            path.write_text(json.dumps(res, indent=1))
        results[v] = json.loads(path.read_text())
        log.info('%s: J&F %.2f', v, 100 * results[v]['JF'])
    log.info('flow baseline: J&F %.2f', 100 * results['flow']['JF'])
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog='python -m training.robotseg.experiment',
                                 description=__doc__.split('\n\n')[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--config', default=None)
    ap.add_argument('--variants', nargs='+', default=None)
    ap.add_argument('--steps', type=int, default=None, help='override run.steps of every row')
    ap.add_argument('--jobs', type=int, default=1, help='variants trained at the same time')
    ap.add_argument('--data-only', action='store_true', help='only render the data sets')
    ap.add_argument('--no-data', action='store_true', help='do not render missing data')
    ap.add_argument('--no-train', action='store_true')
    ap.add_argument('--no-report', action='store_true')
    ap.add_argument('--docs', default='docs')
    ap.add_argument('--smoke', action='store_true', help='tiny data, models and budgets')
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(name)s: %(message)s', stream=sys.stderr)
    base, _ = load_config(args.config, None, args.smoke)
    variants = args.variants or base.experiment.variants
    t0 = time.time()
    if not args.no_data:
        from .simdata import render_sets

        render_sets(base.experiment.sim_config, base.experiment.data_root, smoke=args.smoke)
        if args.data_only:
            return 0
    if not args.no_train:  # decode the videos once, before parallel trainers read the cache
        from .clips import load_videos

        load_videos(base.data.train, base.data, base.data.max_train_videos)
    status = {} if args.no_train else train_all(args.config, variants, args.steps, args.jobs,
                                                args.smoke)
    failed = [v for v, s in status.items() if s != 0]
    results = evaluate_all(args.config, variants, args.smoke)
    root = Path(base.out_root)
    (root / 'experiment.json').write_text(json.dumps(
        {'variants': variants, 'train_status': status, 'wall_s': time.time() - t0,
         'steps_override': args.steps}, indent=1))
    if not args.no_report:
        from .report import collect, write

        write(collect(root), Path(args.docs))
    if failed:
        log.error('training failed for %s (see <run>/train_log.txt)', failed)
        return 1
    return 0 if results else 1


if __name__ == '__main__':
    sys.exit(main())
