"""Checks shared by the trainers' tests."""

from __future__ import annotations

import json
from pathlib import Path


def assert_thread_policy_applied(run_dir: Path, threads: int | None = None) -> dict:
    """The run's machine.json says its trainer applied the thread policy (shared with the
    trainers' smoke tests)."""
    record = json.loads((Path(run_dir) / 'machine.json').read_text())
    policy = record['policy']
    assert record['intra_op_threads'] == policy['intra_op'] >= 1
    assert record['inter_op_threads'] == policy['inter_op'] == 1
    if threads is not None:
        assert policy['intra_op'] == threads
    return record
