"""SyncAN across real processes: `torchrun --nproc_per_node 2` (gloo) against one process.

With SyncAN the two processes' advantages and (DDP-averaged) gradients equal one process's on
the concatenated batch; without it they equal one process that normalises each half of the batch
on its own (how the ablation measures "SyncAN off" on one process), which differs from the
synchronised result. Tolerance 1e-6 (float64 model)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rss_syncan_worker as worker

REPO = Path(__file__).resolve().parents[1]
TOL = 1e-6


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@pytest.fixture(scope='module')
def two_process_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp('syncan')
    torchrun = Path(sys.executable).parent / 'torchrun'
    launcher = [str(torchrun)] if torchrun.exists() else [sys.executable, '-m',
                                                          'torch.distributed.run']
    env = dict(os.environ, OMP_NUM_THREADS='1', MASTER_ADDR='127.0.0.1',
               MASTER_PORT=str(_free_port()))
    env['PYTHONPATH'] = os.pathsep.join(p for p in (str(REPO), env.get('PYTHONPATH')) if p)
    cmd = [*launcher, '--nnodes', '1', '--nproc_per_node', '2', '--master_addr', '127.0.0.1',
           '--master_port', env['MASTER_PORT'], str(REPO / 'test' / 'rss_syncan_worker.py'),
           str(out)]
    done = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    return out


def _ranks(out: Path, case: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r0, r1 = (np.load(out / f'{case}_rank{r}.npz') for r in (0, 1))
    assert np.array_equal(r0['grads'], r1['grads'])  # DDP: every rank holds the same gradient
    return np.concatenate([r0['advantages'], r1['advantages']]), r0['grads'], r1['grads']


@pytest.mark.parametrize('case', ['pixel_syncan', 'image_batch_syncan'])
def test_syncan_two_processes_equal_one_process_on_the_concatenated_batch(two_process_run, case):
    adv, grads, _ = _ranks(two_process_run, case)
    ref_adv, ref_grads = worker.single_process(worker.CASES[case])
    assert adv.shape == ref_adv.shape
    np.testing.assert_allclose(adv, ref_adv, atol=TOL, rtol=0)
    np.testing.assert_allclose(grads, ref_grads, atol=TOL, rtol=0)
    assert np.abs(ref_grads).max() > 100 * TOL  # the comparison is not between zeros


def test_without_syncan_each_process_normalises_its_own_part(two_process_run):
    adv, grads, _ = _ranks(two_process_run, 'pixel_no_syncan')
    split_adv, split_grads = worker.single_process(worker.CASES['pixel_no_syncan'], chunks=2)
    np.testing.assert_allclose(adv, split_adv, atol=TOL, rtol=0)
    np.testing.assert_allclose(grads, split_grads, atol=TOL, rtol=0)
    synced_adv, synced_grads = worker.single_process(worker.CASES['pixel_syncan'])
    assert np.abs(adv - synced_adv).max() > 1e-3  # SyncAN changes the advantages here
    assert np.abs(grads - synced_grads).max() > 1e-6
