"""Pivot failover: keep emitting sets from the other modalities when an optional camera dies.

`ModalitySynchronizer` emits one set per *pivot* message, so a dead pivot stops all output even
when depth, LiDAR and events still flow. When the pivot is not required and
`SyncConfig.pivot_fallback` names other modalities, this wrapper runs one synchroniser per
candidate pivot over the same messages and emits the sets of the first candidate whose pivot is
alive. Each candidate keeps its own bounded caches (memory stays bounded: at most 1 + len(fallback)
synchronisers), and a switch is instantaneous because the fallback's caches are already warm.

A pivot counts as dead when its synchroniser calls it stale (no message for its timeout relative
to the newest stamp of any modality), or when it has never arrived although the other topics have
been flowing for longer than its timeout. A pivot without a timeout never counts as dead. Output
stamps strictly increase across switches: a set not newer than the last one emitted is dropped
(counted in `stats()['dropped_on_switch']`). The one exception is a clock jump its synchroniser
confirmed (a bag loop, see rmseg_ros.sync.core): a stray backward stamp resets nothing here either.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from rmseg_ros.sync.core import NS_PER_S, ModalityState, ModalitySynchronizer, SyncConfig, SyncedSet

__all__ = ['FailoverSynchronizer']


class FailoverSynchronizer:
    """Drop-in for ModalitySynchronizer (add / states / blocked_reason / reset / stats)."""

    def __init__(self, config: SyncConfig) -> None:
        self.config = config
        pivots = [config.pivot]
        if config.pivot not in config.required and not config.strict:
            pivots += list(config.pivot_fallback)
        self.pivots = tuple(pivots)
        self._syncs = [ModalitySynchronizer(config if p == config.pivot else replace(
            config, pivot=p, required=tuple(r for r in config.required if r != config.pivot),
            pivot_fallback=())) for p in self.pivots]
        self._timeouts = [None if p not in config.timeouts else int(config.timeouts[p] * NS_PER_S)
                          for p in self.pivots]
        self.switches = 0
        self.dropped_on_switch = 0
        self._reset_data()

    def _reset_data(self) -> None:
        self._active = 0
        self._first: int | None = None  # first stamp of any modality since reset
        self._clock: int | None = None  # newest stamp of any modality
        self._last: int | None = None  # stamp of the last emitted set
        self._jumps = tuple(s.backward_jumps for s in self._syncs)  # confirmed clock jumps
        self._jumps_at_last = self._jumps  # ... when the last set was emitted

    # ------------------------------------------------------------------ public API
    @property
    def active_pivot(self) -> str:
        """The modality whose messages currently drive output."""
        return self.pivots[self._active]

    def add(self, modality: str, stamp_ns: int, msg: Any) -> list[SyncedSet]:
        """Cache one message in every candidate; return the active candidate's new sets."""
        if len(self._syncs) == 1:
            return self._syncs[0].add(modality, stamp_ns, msg)
        if self._first is None:
            self._first = stamp_ns
        if self._clock is None or stamp_ns > self._clock:
            self._clock = stamp_ns
        outputs = [s.add(modality, stamp_ns, msg) for s in self._syncs]
        jumps = tuple(s.backward_jumps for s in self._syncs)
        if jumps != self._jumps:  # a candidate confirmed a bag loop / clock reset
            self._jumps = jumps
            self._first = self._clock = stamp_ns
        active = self._choose()
        if active != self._active:
            self.switches += 1
            self._active = active
        out = []
        for synced in outputs[active]:
            new_epoch = jumps[active] > self._jumps_at_last[active]
            if self._last is not None and synced.stamp_ns <= self._last and not new_epoch:
                self.dropped_on_switch += 1
                continue
            self._last = synced.stamp_ns
            self._jumps_at_last = jumps
            out.append(synced)
        return out

    @property
    def backward_jumps(self) -> int:
        """Confirmed clock jumps (a bag loop counts once, whichever candidate saw it first)."""
        return max(s.backward_jumps for s in self._syncs)

    @property
    def last_rejection(self) -> str | None:
        """Why the message just added was dropped, as the active candidate saw it."""
        return self._syncs[self._active].last_rejection

    def states(self) -> dict[str, ModalityState]:
        """Per-modality diagnostics as seen by the active candidate."""
        return self._syncs[self._active].states()

    @property
    def blocked_reason(self) -> str | None:
        """Why no set is coming out, in words (None when output flows)."""
        reason = self._syncs[self._active].blocked_reason
        if reason and self._active == 0 and len(self._syncs) > 1 and self._pivot_dead(0):
            reason += f'; no fallback pivot alive among {list(self.pivots[1:])}'
        return reason

    def reset(self) -> None:
        for s in self._syncs:
            s.reset()
        self._reset_data()

    def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = dict(self._syncs[self._active].stats())
        stats.update(active_pivot=self.active_pivot, pivot_switches=self.switches,
                     dropped_on_switch=self.dropped_on_switch)
        return stats

    def cache_sizes(self) -> dict[str, int]:
        return self._syncs[self._active].cache_sizes()

    # ------------------------------------------------------------------ internals
    def _pivot_dead(self, k: int) -> bool:
        timeout = self._timeouts[k]
        if timeout is None:
            return False
        state = self._syncs[k].states()[self.pivots[k]]
        if state.state == 'stale':
            return True
        return (state.state == 'missing' and self._clock is not None
                and self._first is not None and self._clock - self._first > timeout)

    def _choose(self) -> int:
        for k in range(len(self._syncs)):
            if not self._pivot_dead(k):
                return k
        return 0
