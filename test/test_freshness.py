"""Freshness-first scheduling: the policy's decisions, the age-of-information figure, and the
latest-only worker holding a waited item for a newer one (real threads, a fake clock)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from rmseg_ros.pipeline.freshness import FreshnessConfig, FreshnessPolicy, mean_age_of_information
from rmseg_ros.pipeline.worker import Job, LatestOnlyWorker

PERIOD = 0.1


def _primed(cfg: FreshnessConfig, arrivals: int = 6, start_every: float = PERIOD
            ) -> FreshnessPolicy:
    """A policy that saw `arrivals` sets every PERIOD s from t=0, and as many starts every
    `start_every` s up to the last arrival."""
    policy = FreshnessPolicy(cfg)
    last = (arrivals - 1) * PERIOD
    for k in range(arrivals):
        policy.arrived(k * PERIOD)
        policy.started(last - (arrivals - 1 - k) * start_every)
    return policy


def test_policy_holds_a_set_older_than_the_wait_for_the_next_one():
    cfg = FreshnessConfig(max_wait_s=0.01, min_rate_hz=5.0, window=4)
    policy = _primed(cfg)
    last = 5 * PERIOD
    assert policy.period() == pytest.approx(PERIOD)
    assert policy.hold_until(last, last + 0.005) is None  # waited less than max_wait
    assert policy.hold_until(last, last + 0.04) is None  # the next is further off (60 ms)
    assert policy.hold_until(last, last + 0.06) == pytest.approx(last + 1.5 * PERIOD)


def test_policy_processes_at_once_when_off_overdue_or_unsure():
    last = 5 * PERIOD
    off = _primed(FreshnessConfig(max_wait_s=0.0, min_rate_hz=5.0, window=4))
    assert not off.enabled and off.hold_until(last, last + 0.05) is None
    on = _primed(FreshnessConfig(max_wait_s=0.01, min_rate_hz=5.0, window=4))
    assert on.hold_until(last, last + PERIOD + 0.01) is None  # the next set is overdue
    few = _primed(FreshnessConfig(max_wait_s=0.01, min_rate_hz=5.0, window=4), arrivals=3)
    assert few.period() is None and few.hold_until(0.2, 0.25) is None  # period unknown
    fresh = FreshnessPolicy(FreshnessConfig(max_wait_s=0.01, min_rate_hz=5.0, window=8))
    for k in range(6):
        fresh.arrived(k * PERIOD)
        fresh.started(k * PERIOD)
    assert fresh.hold_until(last, last + 0.07) is None  # fewer starts than the rate window


def test_policy_keeps_the_minimum_rate():
    # starts every 0.25 s: holding until the next set (due at 0.6) makes 4 starts in 0.85 s,
    # 4.7 Hz, under a 5 Hz floor
    slow = _primed(FreshnessConfig(max_wait_s=0.01, min_rate_hz=5.0, window=4),
                   start_every=0.25)
    assert slow.hold_until(0.5, 0.56) is None
    relaxed = _primed(FreshnessConfig(max_wait_s=0.01, min_rate_hz=2.0, window=4),
                      start_every=0.25)
    assert relaxed.hold_until(0.5, 0.56) == pytest.approx(0.5 + 1.5 * PERIOD)
    no_floor = _primed(FreshnessConfig(max_wait_s=0.01, min_rate_hz=0.0, window=4),
                       start_every=0.25)
    assert no_floor.hold_until(0.5, 0.56) is not None


def test_config_rejects_nonsense():
    with pytest.raises(ValueError, match='>= 0'):
        FreshnessConfig(max_wait_s=-0.1)
    with pytest.raises(ValueError, match='window'):
        FreshnessConfig(window=1)


def test_mean_age_of_information_integrates_the_sawtooth():
    published = np.arange(11) * 0.1  # every 100 ms, each 30 ms after its data
    assert mean_age_of_information(published, published - 0.03) == pytest.approx(0.08)
    # the same rate with a larger latency is older by exactly the latency difference
    assert (mean_age_of_information(published, published - 0.05)
            - mean_age_of_information(published, published - 0.03)) == pytest.approx(0.02)
    # half the rate at the same latency is older
    assert mean_age_of_information(published[::2], published[::2] - 0.03) == pytest.approx(0.13)
    with pytest.raises(ValueError, match='order'):
        mean_age_of_information(published[::-1], published[::-1])
    with pytest.raises(ValueError, match='two or more'):
        mean_age_of_information(published[:1], published[:1])


class FakeClock:
    """A monotonic clock the test moves by hand (thread-safe reads of a float)."""

    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


class _Recorder:
    """A worker callback that records the jobs and can be held on a gate."""

    def __init__(self, gated: int) -> None:
        self.gated = gated
        self.gate = threading.Event()
        self.started = threading.Event()
        self.jobs: list[Job[int]] = []

    def __call__(self, job: Job[int]) -> None:
        self.jobs.append(job)
        if job.item == self.gated:
            self.started.set()
            assert self.gate.wait(5)

    @property
    def items(self) -> list[int]:
        return [j.item for j in self.jobs]


def _holding_worker(period: float = 0.3):
    """Items 0..4 every `period` s of a fake clock (processed at once), item 5 blocks the
    worker, item 6 then waits 0.2 s (the next is due 0.1 s later), the worker is released and
    holds item 6 for a newer one: returns (worker, recorder, clock, release time)."""
    clock = FakeClock()
    rec = _Recorder(gated=5)
    worker = LatestOnlyWorker(rec, lambda exc, job: None, 'test',
                              FreshnessPolicy(FreshnessConfig(max_wait_s=0.02, min_rate_hz=1.0,
                                                              window=4)), clock=clock)
    for k in range(5):
        worker.submit(k)
        assert worker.wait_idle(5)
        clock.t += period
    worker.submit(5)
    assert rec.started.wait(5)
    worker.submit(6)
    clock.t += 0.2
    released = clock.t
    rec.gate.set()
    assert worker.wait_for(lambda w: w.holds == 1, 5)
    return worker, rec, clock, released


def test_worker_skips_a_waited_item_for_a_newer_one():
    worker, rec, _, _ = _holding_worker()
    worker.submit(7)
    assert worker.wait_idle(5)
    worker.stop()
    assert rec.items == [0, 1, 2, 3, 4, 5, 7]
    assert worker.skipped_for_freshness == 1 and worker.skipped == 1


def test_worker_processes_the_held_item_when_nothing_newer_comes():
    worker, rec, clock, released = _holding_worker()
    assert rec.items == [0, 1, 2, 3, 4, 5]  # held, not processed: the clock has not moved
    clock.t = released + 0.26  # the hold ends half a period after the next was due (+0.25 s)
    assert worker.wait_idle(5)
    worker.stop()
    assert rec.items == [0, 1, 2, 3, 4, 5, 6]
    six = rec.jobs[-1]
    assert six.started == clock.t and six.started - six.submitted == pytest.approx(0.46)
    assert worker.skipped_for_freshness == 0 and worker.skipped == 0


def test_worker_stop_ends_a_hold():
    worker, rec, _, _ = _holding_worker()
    worker.stop()  # the fake clock never reaches the hold's end: only stop() can end it
    assert not worker.alive
    assert rec.items == [0, 1, 2, 3, 4, 5]


def test_worker_stamps_jobs_on_its_clock_and_counts_superseded_items():
    clock = FakeClock()
    rec = _Recorder(gated=0)
    worker = LatestOnlyWorker(rec, lambda exc, job: None, clock=clock)
    worker.submit(0)
    assert rec.started.wait(5)  # item 0 in progress, blocked on the gate
    clock.t += 1.0
    worker.submit(1, superseded=3)  # the caller dropped three older sets unsubmitted
    clock.t += 0.5
    worker.submit(2)  # replaces 1, still waiting
    clock.t += 0.25
    rec.gate.set()
    assert worker.wait_idle(5)
    worker.stop()
    assert rec.items == [0, 2]
    assert (rec.jobs[1].submitted, rec.jobs[1].started) == (101.5, 101.75)
    assert rec.jobs[0].submitted == rec.jobs[0].started == 100.0
    assert worker.skipped == 4 and worker.submitted == 3 and worker.processed == 2
