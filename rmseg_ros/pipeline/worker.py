"""A worker thread with a latest-only inbox: the freshest frame is processed, older ones skipped.

Inference is slower than a 30 Hz camera on a CPU. A queue would grow without bound (or add
latency), so the inbox holds one item: submitting while an item still waits replaces it and
counts the replaced one as skipped. The callback runs outside the lock, so subscribers never wait
for inference. Exceptions in the callback are passed to `on_error` and the worker keeps going.
With a FreshnessPolicy, a worker that finds an item that has waited too long may hold on for the
next one (rmseg_ros.pipeline.freshness says when and why).

The worker owns the per-frame timing: it stamps each job when submitted and when started, on
one clock (injectable, so schedules can be tested without real time), and hands both to the
processing function with the item. Callers keep no per-frame bookkeeping of their own.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, cast

from rmseg_ros.pipeline.freshness import FreshnessPolicy

T = TypeVar('T')

__all__ = ['Job', 'LatestOnlyWorker']

_POLL_S = 0.02  # a hold re-reads the clock at least this often (an injected clock moves alone)


@dataclass(frozen=True)
class Job(Generic[T]):
    """One submitted item with its times on the worker's clock (seconds)."""

    item: T
    submitted: float
    started: float


class LatestOnlyWorker(Generic[T]):
    def __init__(self, process: Callable[[Job[T]], Any],
                 on_error: Callable[[BaseException, Job[T]], None],
                 name: str = 'latest_worker', freshness: FreshnessPolicy | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._process = process
        self._on_error = on_error
        self._freshness = freshness
        self._clock = clock
        self._cond = threading.Condition()
        self._item: T | None = None
        self._item_since = 0.0  # when the waiting item was submitted
        self._has_item = False
        self._stop = False
        self._busy = False
        self.submitted = 0
        self.skipped = 0  # replaced before the worker took them, or superseded before submit
        self.skipped_for_freshness = 0  # of those: held back for a newer item, which came
        self.holds = 0  # times the worker held a waiting item back for a newer one
        self.processed = 0
        self.failed = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, item: T, superseded: int = 0) -> None:
        """Hand over the newest item; `superseded` counts older items the caller dropped
        unsubmitted (e.g. completed sets older than this one), as skipped."""
        with self._cond:
            if self._stop:
                return
            now = self._clock()
            self.submitted += 1
            self.skipped += superseded + (1 if self._has_item else 0)
            if self._freshness is not None:
                self._freshness.arrived(now)
            self._item, self._item_since = item, now
            self._has_item = True
            self._cond.notify_all()

    def idle(self) -> bool:
        """True when nothing waits and nothing is being processed."""
        with self._cond:
            return not self._has_item and not self._busy

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def wait_for(self, predicate: Callable[[LatestOnlyWorker[T]], bool],
                 timeout: float | None = None) -> bool:
        """Block until `predicate(worker)` holds (checked at each state change); its result."""
        with self._cond:
            return self._cond.wait_for(lambda: predicate(self), timeout)

    def wait_idle(self, timeout: float | None = None) -> bool:
        return self.wait_for(lambda w: not w._has_item and not w._busy, timeout)

    def stop(self, timeout: float | None = 5.0) -> None:
        """Finish the item in progress, drop a waiting one, end the thread."""
        with self._cond:
            self._stop = True
            if self._has_item:
                self.skipped += 1
            self._item, self._has_item = None, False
            self._cond.notify_all()
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._has_item and not self._stop:
                    self._cond.wait()
                if self._stop:
                    return
                if self._freshness is not None:
                    self._hold_for_fresher()
                    if self._stop:
                        return
                started = self._clock()
                if self._freshness is not None:
                    self._freshness.started(started)
                job = Job(cast(T, self._item), self._item_since, started)
                self._item, self._has_item = None, False
                self._busy = True
            ok = False
            try:
                self._process(job)
                ok = True
            except BaseException as exc:  # reported; the worker lives on
                self._on_error(exc, job)
            finally:
                with self._cond:
                    if ok:
                        self.processed += 1
                    else:
                        self.failed += 1
                    self._busy = False
                    self._cond.notify_all()

    def _hold_for_fresher(self) -> None:
        """Called with the lock held and an item waiting: wait for a newer one if the policy
        says so; the newer one replaces the waiting one in submit()."""
        if self._freshness is None:
            return
        hold = self._freshness.hold_until(self._item_since, self._clock())
        if hold is None:
            return
        self.holds += 1
        self._cond.notify_all()
        seen = self.submitted
        while self.submitted == seen and not self._stop:
            remaining = hold - self._clock()
            if remaining <= 0:
                return  # nothing newer came: the waiting item is processed after all
            self._cond.wait(min(remaining, _POLL_S))
        if self.submitted != seen:
            self.skipped_for_freshness += 1
