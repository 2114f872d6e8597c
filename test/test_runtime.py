"""Allocator tuning: freed buffers are kept for reuse instead of returned to the kernel."""

import subprocess
import sys

import pytest

from rmseg_ros import runtime

CHILD = r'''
import resource, sys
import numpy as np
from rmseg_ros.runtime import tune_malloc
if sys.argv[1] == 'tuned':
    assert tune_malloc()
def churn():
    blocks = [np.ones(12_000) for _ in range(500)]  # ~96 KB each: 48 MB of heap, then freed
    del blocks
churn()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    churn()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
'''


def _page_faults(mode: str) -> int:
    out = subprocess.run([sys.executable, '-c', CHILD, mode], capture_output=True, text=True,
                         check=True)
    return int(out.stdout.strip().splitlines()[-1])


def test_tuned_malloc_stops_refaulting_freed_memory():
    default, tuned = _page_faults('default'), _page_faults('tuned')
    # Untuned, the freed heap top is trimmed and every round faults ~12k pages in again.
    assert default > 5 * 5000
    assert tuned < default / 20


@pytest.mark.parametrize(('cores', 'requested', 'expected'),
                         [(2, 0, 1), (8, 0, 7), (1, 0, 1), (2, 3, 3), (8, 1, 1)])
def test_inference_threads_leave_a_core_for_the_callbacks(monkeypatch, cores, requested,
                                                          expected):
    monkeypatch.setattr(runtime.os, 'sched_getaffinity', lambda pid: set(range(cores)),
                        raising=False)
    assert runtime.inference_threads(requested) == expected
