"""A worker thread with a latest-only inbox: the freshest frame is processed, older ones skipped.

Inference is slower than a 30 Hz camera on a CPU. A queue would grow without bound (or add
latency), so the inbox holds one item: submitting while an item still waits replaces it and
counts the replaced one as skipped. The callback runs outside the lock, so subscribers never wait
for inference. Exceptions in the callback are passed to `on_error` and the worker keeps going.
With a FreshnessPolicy, a worker that finds an item that has waited too long may hold on for the
next one (rmseg_ros.freshness says when and why).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from rmseg_ros.freshness import FreshnessPolicy

T = TypeVar('T')

__all__ = ['LatestOnlyWorker']


class LatestOnlyWorker(Generic[T]):
    def __init__(self, process: Callable[[T], Any], on_error: Callable[[BaseException, T], None],
                 name: str = 'latest_worker', freshness: FreshnessPolicy | None = None) -> None:
        self._process = process
        self._on_error = on_error
        self._freshness = freshness
        self._cond = threading.Condition()
        self._item: T | None = None
        self._item_since = 0.0  # monotonic time the waiting item was submitted
        self._has_item = False
        self._stop = False
        self._busy = False
        self.submitted = 0
        self.skipped = 0  # replaced before the worker took them
        self.skipped_for_freshness = 0  # of those: held back for a newer item, which came
        self.processed = 0
        self.failed = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, item: T) -> None:
        with self._cond:
            if self._stop:
                return
            now = time.monotonic()
            self.submitted += 1
            if self._has_item:
                self.skipped += 1
            if self._freshness is not None:
                self._freshness.arrived(now)
            self._item, self._item_since = item, now
            self._has_item = True
            self._cond.notify()

    def idle(self) -> bool:
        """True when nothing waits and nothing is being processed."""
        with self._cond:
            return not self._has_item and not self._busy

    def stop(self, timeout: float | None = 5.0) -> None:
        """Finish the item in progress, drop a waiting one, end the thread."""
        with self._cond:
            self._stop = True
            if self._has_item:
                self.skipped += 1
            self._item, self._has_item = None, False
            self._cond.notify()
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
                    self._freshness.started(time.monotonic())
                item = self._item
                self._item, self._has_item = None, False
                self._busy = True
            try:
                self._process(item)
                self.processed += 1
            except BaseException as exc:  # reported; the worker lives on
                self.failed += 1
                self._on_error(exc, item)
            finally:
                with self._cond:
                    self._busy = False

    def _hold_for_fresher(self) -> None:
        """Called with the lock held and an item waiting: wait for a newer one if the policy
        says so; the newer one replaces the waiting one in submit()."""
        hold = self._freshness.hold_until(self._item_since, time.monotonic())
        if hold is None:
            return
        seen = self.submitted
        while self.submitted == seen and not self._stop:
            remaining = hold - time.monotonic()
            if remaining <= 0:
                return  # nothing newer came: the waiting item is processed after all
            self._cond.wait(remaining)
        if self.submitted != seen:
            self.skipped_for_freshness += 1
