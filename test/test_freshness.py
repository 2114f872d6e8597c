"""Freshness-first scheduling: the policy's decisions, the age-of-information figure, and the
latest-only worker holding a waited item for a newer one (real threads)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from rmseg_ros.freshness import FreshnessConfig, FreshnessPolicy, mean_age_of_information
from rmseg_ros.latest_worker import LatestOnlyWorker

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


class _Recorder:
    """A worker callback that records (item, start time) and can be held on a gate."""

    def __init__(self, gated: int) -> None:
        self.gated = gated
        self.gate = threading.Event()
        self.started = threading.Event()
        self.seen: list[tuple[int, float]] = []

    def __call__(self, item: int) -> None:
        self.seen.append((item, time.monotonic()))
        if item == self.gated:
            self.started.set()
            self.gate.wait(5)


def _busy_worker_with_a_waiting_item(period: float = 0.3):
    """Items 0..4 every `period` s (processed at once), item 5 blocks the worker, item 6 then
    waits 0.2 s (the next is due 0.1 s later); returns (worker, recorder, release time)."""
    rec = _Recorder(gated=5)
    worker = LatestOnlyWorker(rec, lambda exc, item: None, 'test',
                              FreshnessPolicy(FreshnessConfig(max_wait_s=0.02, min_rate_hz=1.0,
                                                              window=4)))
    for k in range(5):
        worker.submit(k)
        time.sleep(period)
    worker.submit(5)
    assert rec.started.wait(5)
    worker.submit(6)
    time.sleep(0.2)
    rec.gate.set()
    return worker, rec, time.monotonic()


def _wait_idle(worker: LatestOnlyWorker, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not worker.idle() and time.monotonic() < deadline:
        time.sleep(0.01)


def test_worker_skips_a_waited_item_for_a_newer_one():
    worker, rec, _ = _busy_worker_with_a_waiting_item()
    time.sleep(0.02)  # well before the hold ends (0.25 s after the release)
    worker.submit(7)
    _wait_idle(worker)
    worker.stop()
    assert [item for item, _ in rec.seen] == [0, 1, 2, 3, 4, 5, 7]
    assert worker.skipped_for_freshness == 1 and worker.skipped == 1


def test_worker_processes_the_held_item_when_nothing_newer_comes():
    worker, rec, released = _busy_worker_with_a_waiting_item()
    time.sleep(0.5)
    _wait_idle(worker)
    worker.stop()
    assert [item for item, _ in rec.seen] == [0, 1, 2, 3, 4, 5, 6]
    held = rec.seen[-1][1] - released
    assert held > 0.15  # it waited for a newer item (the hold ends 0.25 s after the release)
    assert worker.skipped_for_freshness == 0 and worker.skipped == 0


def test_worker_stop_ends_a_hold():
    worker, rec, _ = _busy_worker_with_a_waiting_item()
    time.sleep(0.02)
    t0 = time.monotonic()
    worker.stop()
    assert time.monotonic() - t0 < 0.2  # did not sit out the hold
    assert [item for item, _ in rec.seen] == [0, 1, 2, 3, 4, 5]
