"""Crash-safe run files (issue 21 items 8 and 9): every atomic write leaves only temporary files
that the run-start cleanup recognises, metrics are cut back to the resumed step, and a real
training run killed with SIGKILL again and again (inside a checkpoint write too) ends with no
temporary file, the weights of an uninterrupted run and each step logged once."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rmseg_ros import atomic_files
from rmseg_ros.atomic_files import atomic_write, is_temp_file, remove_stale_temp_files
from rmseg_ros.models.checkpoint import save_checkpoint
from training import engine

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
WORKER = HERE / 'sigkill_train_worker.py'


def _all_temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob('*') if p.is_file() and is_temp_file(p.name)]


# ----------------------------------------------------------------------------- item 8

def test_checkpoint_write_creates_only_a_recognised_temporary_file(tmp_path, monkeypatch):
    """While a checkpoint is being written the directory holds the final name's temporary file
    and nothing else (safetensors' own `.tmpXXXXXX` was the file a SIGKILL left for good)."""
    seen: list[list[str]] = []
    monkeypatch.setattr(atomic_files, 'before_replace',
                        lambda tmp: seen.append(sorted(p.name for p in tmp_path.iterdir())))
    save_checkpoint(tmp_path / 'model.safetensors', {'w': torch.ones(3)}, {'arch': 'test'})
    assert len(seen) == 1 and len(seen[0]) == 1
    name = seen[0][0]
    assert name.startswith('.model.safetensors.') and name.endswith(atomic_files.TEMP_SUFFIX)
    assert is_temp_file(name)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['model.safetensors']
    assert oct((tmp_path / 'model.safetensors').stat().st_mode & 0o777) != '0o600'  # readable


def test_a_failed_write_removes_its_temporary_file_and_keeps_the_old_file(tmp_path):
    path = tmp_path / 'config.yaml'
    atomic_write(path, 'old')

    def broken(f):
        f.write(b'half')
        raise OSError('disk full')

    with pytest.raises(OSError, match='disk full'):
        atomic_write(path, broken)
    assert path.read_text() == 'old' and sorted(tmp_path.iterdir()) == [path]


def test_run_start_removes_what_killed_writes_left(tmp_path):
    """Leftovers of this version and of the old ones (safetensors' `.tmpXXXXXX` in checkpoints/,
    `.model.safetensors.<pid>.<hex>.tmp` in the run directory) go when a run starts; other
    dot-files stay."""
    run = tmp_path / 'run'
    ckpts = run / 'checkpoints'
    ckpts.mkdir(parents=True)
    leftovers = [ckpts / '.tmpA1b2C3', run / '.model.safetensors.4242.0badcafe.tmp',
                 ckpts / '.step_00000004.safetensors.4242.tmp',
                 run / f'.metrics.jsonl.4242.12345678{atomic_files.TEMP_SUFFIX}',
                 ckpts / f'.step_00000008.safetensors.7.abcdef01{atomic_files.TEMP_SUFFIX}']
    keep = [run / '.keep', run / 'notes.tmp', ckpts / '.tmp']
    for p in leftovers + keep:
        p.write_bytes(b'x')
    trainer = _vector_trainer(run, steps=2)
    trainer.fit()
    assert _all_temp_files(run) == []
    assert all(p.exists() for p in keep)
    assert remove_stale_temp_files(run, ckpts) == []


class VectorSet(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(i)
        return {'x': torch.randn(4, generator=g), 'y': torch.randn(1, generator=g),
                'index': torch.tensor(i)}


def _vector_trainer(out: Path, steps: int, val: bool = False, crash_at: int = 0,
                    ckpt_every: int = 2) -> engine.Trainer:
    def loss_fn(net, batch, ctx):
        if ctx.step == crash_at:
            raise KeyboardInterrupt('interrupted')
        return ((net(batch['x']) - batch['y']) ** 2).mean(), {}

    def val_fn(net, step):
        return {'val': float(step)}

    torch.manual_seed(0)
    cfg = engine.RunConfig(steps=steps, batch_size=2, num_workers=0, threads=1, log_every=1,
                           ckpt_every=ckpt_every, val_every=2 if val else 0, device='cpu',
                           progress=False)
    return engine.Trainer(torch.nn.Linear(4, 1), loss_fn, VectorSet(), cfg,
                          engine.OptimConfig(lr=0.01), out, {'what': 'vector'},
                          val_fn=val_fn if val else None)


# ----------------------------------------------------------------------------- item 9

def _records(run: Path) -> list[tuple[str, int]]:
    return [(r['split'], r['step']) for r in map(json.loads, (run / 'metrics.jsonl').open())]


def test_resume_cuts_metrics_back_to_the_resumed_step(tmp_path):
    """Killed at step 5 after the checkpoint of step 4 (and a torn line): steps 5.. are logged
    again after the resume, so they are removed first; each step appears once."""
    run = tmp_path / 'run'
    before = torch.get_num_threads()
    try:
        with pytest.raises(KeyboardInterrupt):
            _vector_trainer(run, steps=8, val=True, crash_at=6, ckpt_every=4).fit()
        with open(run / 'metrics.jsonl', 'a') as f:
            f.write('{"split": "train", "st')  # a line torn by the kill
        result = _vector_trainer(run, steps=8, val=True, ckpt_every=4).fit()
        assert result.resumed_from == 4
        train = [s for k, s in _records(run) if k == 'train']
        val = [s for k, s in _records(run) if k == 'val']
        assert train == list(range(1, 9)) and val == [2, 4, 6, 8]
        # started again when finished: nothing trained, the final validation replaces its line
        _vector_trainer(run, steps=8, val=True, ckpt_every=4).fit()
        assert [s for k, s in _records(run) if k == 'val'] == [2, 4, 6, 8]
        # killed before its first checkpoint: the next start begins from nothing
        fresh = tmp_path / 'fresh'
        with pytest.raises(KeyboardInterrupt):
            _vector_trainer(fresh, steps=4, crash_at=2, ckpt_every=4).fit()
        assert _records(fresh) == [('train', 1)]
        _vector_trainer(fresh, steps=4, ckpt_every=4).fit()
        assert _records(fresh) == [('train', s) for s in range(1, 5)]
    finally:
        torch.set_num_threads(before)


def test_truncate_metrics_keeps_lines_up_to_the_step():
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / 'metrics.jsonl'
        lines = [{'split': 'train', 'step': 1}, {'split': 'val', 'step': 2},
                 {'split': 'train', 'step': 2}, {'split': 'train', 'step': 3}, {'note': 1}]
        path.write_text(''.join(json.dumps(x) + '\n' for x in lines) + '{"torn')
        assert engine.truncate_metrics(path, 2) == 2
        assert [json.loads(x) for x in path.read_text().splitlines()] == [
            lines[0], lines[1], lines[2], lines[4]]
        assert engine.truncate_metrics(path, 2, rerun_val=True) == 1
        assert engine.truncate_metrics(path, 2) == 0
        assert engine.truncate_metrics(Path(d) / 'none.jsonl', 2) == 0


# ----------------------------------------------------------------------------- SIGKILL loop

class Worker:
    """One run of test/sigkill_train_worker.py; its stdout lines are the handshake."""

    def __init__(self, run: Path, pause: str, log: Path) -> None:
        env = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1',
                   PYTHONPATH=os.pathsep.join(
                       p for p in [str(REPO), os.environ.get('PYTHONPATH', '')] if p))
        self.err = open(log, 'a')  # closed in wait()
        self.proc = subprocess.Popen([sys.executable, str(WORKER), str(run), pause], env=env,
                                     stdout=subprocess.PIPE, stderr=self.err, text=True)

    def line(self) -> str:
        """The next line the worker prints ('' when it exits without one)."""
        return self.proc.stdout.readline().strip()

    def kill(self) -> int:
        self.proc.send_signal(signal.SIGKILL)
        return self.wait()

    def wait(self) -> int:
        try:
            return self.proc.wait(timeout=300)
        finally:
            self.proc.stdout.close()
            self.err.close()


def _newest_checkpoint(run: Path) -> int:
    found = engine.list_checkpoints(run)
    return found[0][0] if found else 0


@pytest.mark.slow
def test_sigkill_loop_leaves_no_temp_file_an_exact_resume_and_each_step_once(tmp_path):
    """Six kills at seeded random moments (inside a step, inside a checkpoint write with its
    temporary file on disk, wherever the run is when a step starts, inside the final export)
    then a run to the end: no temporary file anywhere, the weights of an uninterrupted run, and
    every train and validation step exactly once in metrics.jsonl."""
    import sigkill_train_worker as w

    log = tmp_path / 'workers.log'
    ref_run, run = tmp_path / 'reference', tmp_path / 'killed'
    ref = Worker(ref_run, 'none', log)
    assert ref.line() == 'DONE' and ref.wait() == 0, log.read_text()[-3000:]

    rng = random.Random(21)
    kinds = ['step', 'step', 'ckpt', 'ckpt']
    rng.shuffle(kinds)
    kills = []
    for kind in [*kinds, 'async', 'export']:  # async may end training: last before the export
        resume = _newest_checkpoint(run)
        if kind == 'ckpt':  # a checkpoint step the run has not written yet
            at = rng.choice([s for s in range(resume + 1, w.STEPS + 1)
                             if s % w.CKPT_EVERY == 0])
        else:
            at = rng.randint(resume + 1, w.STEPS - 2)
        pause = 'export' if kind == 'export' else f'{kind}:{at}'
        worker = Worker(run, pause, log)
        line = worker.line()
        want = f'AT {at}' if kind == 'async' else 'PAUSED ' + pause.replace(':', ' ')
        assert line == want, (line, log.read_text()[-3000:])
        if kind in ('ckpt', 'export'):  # killed mid-write: its temporary file is on disk
            assert _all_temp_files(run), sorted(p.name for p in run.rglob('*'))
        assert worker.kill() == -signal.SIGKILL
        kills.append((pause, resume))
    assert len(kills) == 6 and any(k.startswith('ckpt') for k, _ in kills)

    last = Worker(run, 'none', log)
    assert last.line() == 'DONE' and last.wait() == 0, log.read_text()[-3000:]
    assert _all_temp_files(run) == [], kills
    a = load_file(str(ref_run / 'model.safetensors'))
    b = load_file(str(run / 'model.safetensors'))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), kills
    records = _records(run)
    assert [s for k, s in records if k == 'train'] == list(range(1, w.STEPS + 1)), kills
    assert [s for k, s in records if k == 'val'] == list(
        range(w.VAL_EVERY, w.STEPS + 1, w.VAL_EVERY)), kills
    ref_val = [r['val_loss'] for r in map(json.loads, (ref_run / 'metrics.jsonl').open())
               if r['split'] == 'val']
    val = [r['val_loss'] for r in map(json.loads, (run / 'metrics.jsonl').open())
           if r['split'] == 'val']
    assert val == ref_val
