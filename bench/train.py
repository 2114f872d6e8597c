"""Training throughput of the RMMSS teacher: the model step alone, the real loop, and the loop
while another process keeps a core busy.

Figures (samples per second, batch 8 at the cache's resolution, 240x320 by default):
- `train_model_samples_per_s`: `Trainer.train_step` (forward, class-weighted OHEM loss,
  backward, AdamW) on random tensors of the real shapes, with the engine's thread policy,
  memory format and autocast: the ceiling of the loop;
- `train_loop_samples_per_s`: `rmseg-train teacher` on a cached shard set in a fresh process
  (the loop's own `samples_per_s` log, medians of the windows after the first);
- `train_loop_efficiency`: loop / model step;
- `train_loop_loaded_ratio`: the loop while a second process runs a one-thread matmul loop
  (one core busy, as a node or another training would), over the idle loop.
`--repo DIR` runs the loop figure with another checkout's code and config (e.g. a worktree of
an older main) for A/B comparisons in the same minutes; the shard set is shared.

The shard set is rendered once into `--cache` (4 sim scenes, ~15 s) unless `--shards` names
one. Prints `figure: value unit` lines; exits 1 when it could not measure.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _env(repo: Path) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(repo), TQDM_DISABLE='1')
    for k in ('OMP_NUM_THREADS', 'MKL_NUM_THREADS'):
        env.pop(k, None)  # the engine's policy (or the old defaults) decides
    return env


def ensure_shards(cache: Path) -> Path:
    """A small cached shard set (4 scenes x 30 frames) rendered by this checkout's simulator."""
    shards = cache / 'shards'
    if any(shards.glob('*/meta.json')):
        return shards
    py = sys.executable
    subprocess.run([py, '-m', 'training.cli', 'sim', '--out', str(cache / 'bags'),
                    '--scenes', '4', '--frames', '30', '--seed', '7000'], check=True,
                   env=_env(ROOT), cwd=ROOT, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    bags = sorted(str(p.parent) for p in (cache / 'bags').rglob('metadata.yaml'))
    subprocess.run([py, '-m', 'training.cli', 'dataset', '--bags', *bags, '--out', str(shards)],
                   check=True, env=_env(ROOT), cwd=ROOT, stdout=subprocess.DEVNULL)
    return shards


def loop_samples_per_s(repo: Path, shards: Path, steps: int, workdir: Path) -> float:
    """The teacher loop of `repo` on `shards`: median samples/s of its log windows but the
    first (process start, loader start-up and the first allocations)."""
    raw = yaml.safe_load((repo / 'training' / 'configs' / 'rmmss.yaml').read_text())
    raw['data']['train_shards'] = [str(shards / '*')]
    raw['data']['val_shards'] = []
    raw['run'].update({'log_every': 10, 'ckpt_every': 100000, 'val_every': 0,
                       'progress': False})
    raw.get('stages', {}).pop('teacher', None)  # the budget comes from --steps
    cfg = workdir / f'rmmss_{os.getpid()}_{time.monotonic_ns()}.yaml'
    cfg.write_text(yaml.safe_dump(raw))
    out = workdir / f'run_{time.monotonic_ns()}'
    subprocess.run([sys.executable, '-m', 'training.cli', 'teacher', '--config', str(cfg),
                    '--out', str(out), '--steps', str(steps)], check=True, env=_env(repo),
                   cwd=repo, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rates = [json.loads(line)['samples_per_s'] for line in
             (out / 'metrics.jsonl').read_text().splitlines()
             if json.loads(line).get('split') == 'train']
    if len(rates) < 2:
        raise RuntimeError(f'{steps} steps gave {len(rates)} log windows; use more steps')
    return statistics.median(rates[1:])


def model_samples_per_s(shards: Path, steps: int) -> float:
    """Trainer.train_step on random tensors shaped like one batch of `shards`."""
    import torch

    from rmseg_ros.modalities import MODALITIES, input_channels
    from training.engine import StepContext, Trainer
    from training.rmmss.config import class_table, frontend_of, load_config, make_dataset
    from training.rmmss.stages import fusion_config, teacher_loss

    cfg, resolved = load_config(None, 'teacher')
    frontend, classes = frontend_of(cfg.data), class_table(cfg.data)
    dataset = make_dataset([str(shards / '*')], frontend, augment=None, labelled_only=True)
    from rmseg_ros.models.fusion import FusionSegNet

    model = FusionSegNet(fusion_config(cfg, classes, frontend))
    k, b = len(classes.names), cfg.run.batch_size
    weights = torch.ones(k)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(model, teacher_loss(cfg.loss, weights), dataset, cfg.run, cfg.optim,
                          tmp, resolved)
    h, w = frontend.hw
    chans = input_channels(frontend.event_bins)
    gen = torch.Generator().manual_seed(0)
    batch = {m: torch.randn(b, chans[m], h, w, generator=gen) for m in MODALITIES}
    batch['presence'] = torch.ones(b, len(MODALITIES), dtype=torch.bool)
    batch['labels'] = torch.randint(0, k, (b, h, w), generator=gen)
    times = []
    for i in range(steps + 3):
        sctx = StepContext(i + 1, 0, gen, trainer.ctx.device, trainer.model)
        t0 = time.perf_counter()
        trainer.train_step(batch, sctx)
        times.append(time.perf_counter() - t0)
    return b / statistics.median(times[3:])


def busy_core() -> subprocess.Popen:
    """A process keeping one core busy with one-thread matmuls (until killed)."""
    code = ('import torch; torch.set_num_threads(1); a = torch.randn(384, 384)\n'
            'while True: a = (a @ a).tanh()')
    return subprocess.Popen([sys.executable, '-c', code])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--shards', type=Path, help='cached shard directory (default: render)')
    parser.add_argument('--cache', type=Path, default=ROOT / '.cache' / 'bench_train',
                        help='where the rendered shard set is kept between runs')
    parser.add_argument('--steps', type=int, default=60, help='loop steps per measurement')
    parser.add_argument('--model-steps', type=int, default=20)
    parser.add_argument('--repo', type=Path, help='measure the loop of another checkout')
    parser.add_argument('--skip-loaded', action='store_true', help='no loaded-machine figure')
    args = parser.parse_args(argv)
    try:
        shards = args.shards or ensure_shards(args.cache)
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            if args.repo:
                loop = loop_samples_per_s(args.repo.resolve(), shards, args.steps, work)
                print(f'train_loop_samples_per_s: {loop:.2f} samples/s ({args.repo})')
                return 0
            model = model_samples_per_s(shards, args.model_steps)
            print(f'train_model_samples_per_s: {model:.2f} samples/s')
            loop = loop_samples_per_s(ROOT, shards, args.steps, work)
            print(f'train_loop_samples_per_s: {loop:.2f} samples/s')
            print(f'train_loop_efficiency: {loop / model:.3f} ratio')
            if not args.skip_loaded:
                busy = busy_core()
                try:
                    loaded = loop_samples_per_s(ROOT, shards, args.steps, work)
                finally:
                    busy.kill()
                    busy.wait()
                print(f'train_loop_loaded_samples_per_s: {loaded:.2f} samples/s')
                print(f'train_loop_loaded_ratio: {loaded / loop:.3f} ratio')
    except (subprocess.CalledProcessError, RuntimeError, OSError) as exc:
        print(f'bench/train.py: could not measure: {exc}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
