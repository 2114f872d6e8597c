"""The Robult experiment: supervised-only vs Robult at several label fractions, and Robult as an
auxiliary objective of the RMMSS robust stage; every row trained for the same number of steps,
evaluated on the 15 modality subsets of the test split, then the `robult` results section.

    python -m training.robult.experiment [--config training/configs/robult.yaml]
                                         [--steps N] [--rows sup10 robult10 ...] [--parallel N]
                                         [--seeds 0 1 2] [--fractions 0.1 0.05]

Rows (pp = 100 x label fraction; the same seeded labelled frames in every row of a fraction):
  sup<pp>           supervised only: labelled frames, modality dropout, OHEM CE
  robult<pp>        + one unlabelled frame per labelled frame, + soft-PU and reconstruction losses
  teacher<pp>       all modalities, labelled frames only (the RMMSS teacher at that fraction;
                    with `experiment.rmmss_teacher: sup` the sup<pp> row is the teacher instead)
  rmmss<pp>         RMMSS robust stage from that teacher: dropout + pixel KL + HPDM, unlabelled
                    frames included (the teacher's KL reaches them)
  rmmss_robult<pp>  the same + the Robult losses (the `robult:` switch of the robust stage)
  robult_pu<pp>     Robult with the soft-PU loss only (reconstruction weight 0)
  robult_recon<pp>  Robult with the latent reconstruction loss only (PU weight 0)
Each row runs once per seed (`experiment.seeds`: the run seed and the labelled selection's seed)
as `rmseg-train robult ... --evaluate` in its own process (OMP_NUM_THREADS=1), its run directory
`<experiment.out_root>/seed<s>/<row>`; a finished row (eval.json present) is not run again, an
interrupted one resumes from its last checkpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .config import ExperimentConfig, load_config


@dataclass
class Row:
    name: str
    args: list[str]
    after: list[str] = field(default_factory=list)  # rows whose model this one needs


def pct(fraction: float) -> int:
    return round(100 * fraction)


def plan(exp: ExperimentConfig) -> list[Row]:
    """Every row of the experiment once per seed (named seed<s>/<row>), in the order they
    start: the headline label fraction of every seed first, the longer row of each pair before
    the shorter, the RMMSS rows once their teacher exists."""
    if exp.rmmss_teacher not in ('teacher', 'sup'):
        raise ValueError(f"experiment.rmmss_teacher must be 'teacher' or 'sup', "
                         f'got {exp.rmmss_teacher!r}')
    if not exp.seeds or len(set(exp.seeds)) != len(exp.seeds):
        raise ValueError(f'experiment.seeds must be distinct and not empty, got {exp.seeds}')
    per_seed = [_seed_rows(exp, s) for s in exp.seeds]
    head = [r for rows in per_seed for r in rows[0]]
    rest = [r for rows in per_seed for r in rows[1]]
    return head + rest


def _seed_rows(exp: ExperimentConfig, seed: int) -> tuple[list[Row], list[Row]]:
    """(headline rows, the other rows) of one seed."""
    prefix = f'seed{seed}/'
    seeded = ['--set', f'run.seed={seed}', '--set', f'data.label_seed={seed}']
    head = {f'{kind}{pct(exp.fractions[0])}' for kind in ('robult', 'sup')} \
        if exp.fractions else set()
    rows = _rows(exp, Path(exp.out_root) / f'seed{seed}')
    seeded_rows = [Row(prefix + r.name, r.args + seeded, [prefix + a for a in r.after])
                   for r in rows]
    return ([r for r, base in zip(seeded_rows, rows, strict=True) if base.name in head],
            [r for r, base in zip(seeded_rows, rows, strict=True) if base.name not in head])


def _rows(exp: ExperimentConfig, out: Path) -> list[Row]:
    """The rows of one seed whose run directories are under `out`."""
    pairs = [[Row(f'robult{pct(f)}', ['--label-fraction', str(f)]),
              Row(f'sup{pct(f)}', ['--label-fraction', str(f), '--no-robult',
                                   '--unlabelled-per-labelled', '0'])] for f in exp.fractions]
    f = exp.rmmss_fraction
    p = pct(f)
    teacher = f'{exp.rmmss_teacher}{p}'
    t_model = str(out / teacher / 'model.safetensors')
    rmmss = [Row(f'rmmss_robult{p}', ['--label-fraction', str(f), '--teacher', t_model],
                 after=[teacher]),
             Row(f'rmmss{p}', ['--label-fraction', str(f), '--no-robult', '--teacher', t_model],
                 after=[teacher])]
    if exp.rmmss_teacher == 'teacher':
        rmmss.insert(0, Row(teacher, ['--label-fraction', str(f), '--no-robult',
                                      '--unlabelled-per-labelled', '0',
                                      '--set', 'dropout.probability=0']))
    elif f not in exp.fractions:
        pairs.append([Row(f'sup{p}', ['--label-fraction', str(f), '--no-robult',
                                      '--unlabelled-per-labelled', '0'])])
    # one Robult loss switched off: which of the two does what (not in the default rows)
    ablations = [Row(f'robult_{keep}{pct(f)}', ['--label-fraction', str(f), '--set',
                                                f'robult.{off}.weight=0'])
                 for f in exp.fractions for keep, off in (('pu', 'recon'), ('recon', 'pu'))]
    rows = (pairs[0] if pairs else []) + rmmss + [r for p in pairs[1:] for r in p] + ablations
    if exp.rows:
        unknown = set(exp.rows) - {r.name for r in rows}
        if unknown:
            raise ValueError(f'unknown rows {sorted(unknown)}; known: {[r.name for r in rows]}')
        rows = [r for r in rows if r.name in exp.rows]
    return rows


def command(row: Row, config: str | None, exp: ExperimentConfig) -> list[str]:
    cmd = [sys.executable, '-m', 'training.cli', 'robult', '--out',
           str(Path(exp.out_root) / row.name)]
    if config:
        cmd += ['--config', config]
    return [*cmd, '--steps', str(exp.steps), '--evaluate', '--label-unit', exp.label_unit,
            '--set', f'run.batch_size={exp.batch_size}', '--set', f'run.threads={exp.threads}',
            '--set', f'run.num_workers={exp.num_workers}',
            '--set', f'data.downscale={exp.downscale}',
            '--set', f'evaluate.max_samples={exp.eval_samples}',
            '--set', f'evaluate.shards={json.dumps(exp.eval_shards)}', *row.args]


def done(row: str, exp: ExperimentConfig) -> bool:
    run = Path(exp.out_root) / row
    return (run / 'eval.json').exists() and (run / 'model.safetensors').exists()


def _ready(row: Row, codes: dict[str, int], planned: set[str], exp: ExperimentConfig
           ) -> bool | None:
    """True: every row it needs has its model; False: wait; None: it can never run."""
    for need in row.after:
        if need in codes:
            if codes[need] != 0:
                return None
        elif not done(need, exp):
            return False if need in planned else None
    return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def busy_elsewhere(run: Path) -> bool:
    """Another experiment process trains this row now (its lock names a live process)."""
    lock = run / 'lock'
    try:
        pid = int(lock.read_text().strip() or 0)
    except (FileNotFoundError, ValueError):
        return False
    return pid > 0 and _alive(pid)


def run_all(rows: list[Row], config: str | None, exp: ExperimentConfig, poll_s: float = 5.0
            ) -> dict[str, int]:
    """Train and evaluate the rows, `exp.parallel` at a time; returns each row's exit code."""
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'TQDM_DISABLE': '1'}
    pending = [r for r in rows if not done(r.name, exp)]
    codes = {r.name: 0 for r in rows if done(r.name, exp)}
    running: dict[str, tuple[subprocess.Popen, float]] = {}
    planned = {r.name for r in rows}
    while pending or running:
        for name, (proc, t0) in list(running.items()):
            if proc.poll() is not None:
                (Path(exp.out_root) / name / 'lock').unlink(missing_ok=True)
                codes[name] = proc.returncode
                print(f'[{time.strftime("%H:%M:%S")}] {name}: exit {proc.returncode} after '
                      f'{(time.monotonic() - t0) / 60:.1f} min', flush=True)
                del running[name]
        for row in list(pending):
            if len(running) >= max(1, exp.parallel):
                break
            run = Path(exp.out_root) / row.name
            if done(row.name, exp) and not busy_elsewhere(run):  # finished by another process
                pending.remove(row)
                codes[row.name] = 0
                continue
            if busy_elsewhere(run):
                continue
            state = _ready(row, codes, planned, exp)
            if state is None:
                pending.remove(row)
                codes[row.name] = -1
                print(f'{row.name}: skipped (a row it needs failed or is not planned)',
                      flush=True)
                continue
            if not state:
                continue
            run.mkdir(parents=True, exist_ok=True)
            cmd = command(row, config, exp)
            print(f'[{time.strftime("%H:%M:%S")}] start {row.name}: {" ".join(cmd)}', flush=True)
            log = open(run / 'train.log', 'a', encoding='utf-8')  # the child's stdout
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
            log.close()
            (run / 'lock').write_text(str(proc.pid))  # other experiment processes wait for it
            running[row.name] = (proc, time.monotonic())
            pending.remove(row)
        if running or pending:
            time.sleep(poll_s)
    return codes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--config', help='robult config (default training/configs/robult.yaml)')
    parser.add_argument('--steps', type=int, help='steps of every row')
    parser.add_argument('--out-root', help='run directories (default: experiment.out_root)')
    parser.add_argument('--rows', nargs='+', help='only these rows')
    parser.add_argument('--label-unit', choices=('frame', 'recording'),
                        help='what a label fraction counts (default: experiment.label_unit)')
    parser.add_argument('--parallel', type=int, help='rows trained at once')
    parser.add_argument('--seeds', type=int, nargs='+',
                        help='train every row once per seed (default: experiment.seeds)')
    parser.add_argument('--fractions', type=float, nargs='+',
                        help='label fractions of the sup / robult pairs (default: '
                             'experiment.fractions)')
    parser.add_argument('--docs', default='docs', help='where results.{md,json} live')
    parser.add_argument('--no-report', action='store_true', help='train and evaluate only')
    args = parser.parse_args(argv)
    cfg, _ = load_config(args.config)
    exp = cfg.experiment
    if args.steps:
        exp.steps = args.steps
    if args.out_root:
        exp.out_root = args.out_root
    if args.rows:
        exp.rows = args.rows
    if args.label_unit:
        exp.label_unit = args.label_unit
    if args.parallel:
        exp.parallel = args.parallel
    if args.seeds:
        exp.seeds = args.seeds
    if args.fractions:
        exp.fractions = args.fractions
    rows = plan(exp)
    t0 = time.monotonic()
    codes = run_all(rows, args.config, exp)
    print(json.dumps({'exit_codes': codes, 'minutes': round((time.monotonic() - t0) / 60, 1)}),
          flush=True)
    if not args.no_report:
        from .report import main as report

        report(['--runs', exp.out_root, '--docs', args.docs])
    return 0 if all(c == 0 for c in codes.values()) else 1


if __name__ == '__main__':
    sys.exit(main())
