"""The RobotSeg experiment: render the data sets and their kinematic robot masks, train every
variant with the same step budget, evaluate them and the baselines on every held-out set
(deployment sets: the robot trained for; stress sets: a robot never seen), write the results.

    python -m training.robotseg.experiment [--config FILE] [--steps N] [--jobs J]
        [--variants robotseg supervised ...] [--data-only] [--no-train] [--no-report] [--smoke]

Everything resumes: rendered scenes, kinematic masks (masks_<set>.json), decoded videos (npz
cache), training runs (checkpoints) and finished evaluations (<set>/eval_<name>.json, recomputed
when the model file is newer) are kept. Variants train in `--jobs` parallel processes (one torch
thread each). Outputs go to <out_root>/{<variant>/, <set>/eval_<name>.json, masks_<set>.json,
experiment.json}; the report goes to docs/.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from .config import RobotSegTrainConfig, load_config

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


def kinematic_masks(base: RobotSegTrainConfig, sets: list[str]) -> dict[str, Any]:
    """Robot masks rendered from the kinematics (`rmseg-train robot-masks --sim-robots`): exact
    ones into the training bags (the labels of the kinematic variants) and ones with the
    configured calibration error into the test sets' bags (a baseline), each scored against the
    simulator's labels/robot. One masks_<set>.json per set; a set already done is kept."""
    from .clips import bag_dirs
    from .robot_masks import build_parser, make_masks

    ex = base.experiment
    root = Path(base.out_root)
    root.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {}
    for name in [*ex.training_sets, *sets]:
        path = root / f'masks_{name}.json'
        if not path.exists():
            bags = [str(b) for b in bag_dirs(ex.set_bags(name))]
            if not bags:
                raise FileNotFoundError(f'set {name!r}: no bags under {ex.data_root}/{name}')
            train = name in ex.training_sets
            argv = ['--bags', *bags, '--sim-robots', '--iou-against', base.data.robot_topic,
                    '--label-dir', ex.kinematic_masks if train else ex.calib_masks,
                    '--calib-error-deg', str(ex.calib_error_deg),
                    '--calib-error-cm', str(ex.calib_error_cm), '--calib-error-draws', '2']
            res = make_masks(build_parser().parse_args(
                argv if train else [*argv, '--write-calib-error']))
            path.write_text(json.dumps(res, indent=1))
            log.info('kinematic masks of %s: IoU %.2f %% exact, %.2f %% with the calibration '
                     'error', name, res['iou_exact'], res['iou_calib_error'])
        out[name] = json.loads(path.read_text())
    return out


def half_model(cfg: RobotSegTrainConfig, variant: str) -> Path | None:
    """<run>/model_half.safetensors exported from the run's checkpoint at half its steps (None
    when that checkpoint was not kept: run.ckpt_every / keep_checkpoints)."""
    from training.engine import list_checkpoints

    from .train import export

    run = cfg.run_dir(variant)
    src = dict(list_checkpoints(run)).get(cfg.run.steps // 2)
    if src is None:
        return None
    dst = run / 'model_half.safetensors'
    if not dst.exists() or dst.stat().st_mtime < Path(src).stat().st_mtime:
        export(run, dst, Path(src))
    return dst


def evaluate_set(config: str | None, variants: list[str], name: str, smoke: bool
                 ) -> dict[str, Any]:
    """eval_<variant>.json of each trained variant, eval_flow.json and eval_kinematic_calib.json
    (the test bags' masks rendered with the calibration error) on one set, under
    <out_root>/<set>/."""
    import torch

    from .clips import load_videos
    from .evaluate import evaluate_checkpoint, evaluate_flow, evaluate_given_masks

    torch.set_num_threads(int(os.environ.get('OMP_NUM_THREADS', '1')))
    base, _ = load_config(config, None, smoke)
    ex = base.experiment
    videos = load_videos(ex.set_bags(name), base.data, base.evaluate.max_videos)
    root = Path(base.out_root) / name
    root.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    flow_path = root / 'eval_flow.json'
    if not _fresh(flow_path, None):
        flow_path.write_text(json.dumps(evaluate_flow(videos, base.evaluate, base.flow),
                                        indent=1))
    results['flow'] = json.loads(flow_path.read_text())
    calib_path = root / 'eval_kinematic_calib.json'
    if not _fresh(calib_path, None):
        given = load_videos(ex.set_bags(name), replace(base.data, robot_masks=ex.calib_masks),
                            base.evaluate.max_videos)
        calib_path.write_text(json.dumps(evaluate_given_masks(videos, given, base.evaluate),
                                         indent=1))
    results['kinematic_calib'] = json.loads(calib_path.read_text())
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
        half = half_model(cfg, v)  # convergence: the same model half-way through its run
        half_path = root / f'eval_{v}_half.json'
        if half is not None and not _fresh(half_path, half):
            res = evaluate_checkpoint(half, videos, cfg.evaluate)
            res['train'] = {'step': cfg.run.steps // 2}
            half_path.write_text(json.dumps(res, indent=1))
        log.info('%s on %s: J&F %.2f', v, name, 100 * results[v]['JF'])
    log.info('%s: flow baseline J&F %.2f, kinematic masks with calibration error %.2f', name,
             100 * results['flow']['JF'], 100 * results['kinematic_calib']['JF'])
    return results


def evaluate_all(config: str | None, variants: list[str], smoke: bool
                 ) -> dict[str, dict[str, Any]]:
    """evaluate_set over every deployment and stress set: set -> results."""
    base, _ = load_config(config, None, smoke)
    ex = base.experiment
    return {name: evaluate_set(config, variants, name, smoke)
            for name in [*ex.deployment_sets, *ex.stress_sets]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog='python -m training.robotseg.experiment',
                                 description=__doc__.split('\n\n')[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--config', default=None)
    ap.add_argument('--variants', nargs='+', default=None)
    ap.add_argument('--steps', type=int, default=None, help='override run.steps of every row')
    ap.add_argument('--jobs', type=int, default=1, help='variants trained at the same time')
    ap.add_argument('--data-only', action='store_true',
                    help='only render the data sets and their kinematic masks')
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
        kinematic_masks(base, [*base.experiment.deployment_sets, *base.experiment.stress_sets])
        if args.data_only:
            return 0
    if not args.no_train:  # decode the videos once, before parallel trainers read the cache
        from .clips import load_videos

        for v in variants:
            cfg, _ = load_config(args.config, v, args.smoke)
            load_videos(cfg.data.train, cfg.data, cfg.data.max_train_videos)
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

        ex = base.experiment
        write(collect(root, Path(ex.sim_config), ex.deployment_sets, ex.stress_sets,
                      ex.training_sets),
              Path(args.docs))
    if failed:
        log.error('training failed for %s (see <run>/train_log.txt)', failed)
        return 1
    return 0 if results else 1


if __name__ == '__main__':
    sys.exit(main())
