"""Drop-tolerant approximate time synchroniser for the sensor front-end (no rclpy).

Why one long module: the pivot, strict and jump-handling modes share one per-modality cache
and one matching rule, and splitting them would put that state's invariants in two files.

Why not message_filters: ApproximateTimeSynchronizer only emits when *every* input has a match,
so one dead topic silences the whole pipeline, and it cannot say why. This module keeps one
bounded cache per modality, emits one set per pivot message (the camera by default), leaves
stale modalities out (listed in ``SyncedSet.missing``) and reports per-modality diagnostics.

Stamps are integer nanoseconds (header stamps); ``slop``, ``timeouts`` and ``jump_threshold`` are
seconds in the config. Messages are opaque: the synchroniser never looks inside them. It is not
thread-safe: call it from one callback group at a time. Warnings (throttled) are the caller's job;
``blocked_reason`` and ``states()`` give it the words.

Pivot mode (the default) -- the rules
-------------------------------------
* **Candidates.** For a pivot stamped ``p``, a message of modality ``m`` stamped ``s`` is a
  candidate when ``|s - p| <= slop``; the set takes the closest one (ties: the older stamp, so
  the choice does not depend on arrival order). Partner messages are *not* consumed: a 10 Hz LiDAR
  scan may serve several 30 Hz camera frames, so every pivot can get a set.
* **When a pivot is decided.** A modality is decided for ``p`` when a closer message can no longer
  come, assuming each topic delivers its own messages in stamp order (true for one DDS publisher
  and for bag replay): its newest stamp is ``>= p + d`` (``d`` = distance of the best candidate),
  or ``> p + slop`` when it has no candidate; or the modality is not alive (stale, or its clock
  jumped). Pivots are resolved in stamp order as soon as every modality is decided, so output
  stamps strictly increase. Until a pivot is resolved, late and out-of-order messages still
  update its candidates: the output does not depend on how the topics interleave (within the
  queue bounds, and unless the delay makes a timeout expire); within a topic, only order changes
  that happen after the pivot was resolved can matter.
* **Resolution.** A decided pivot whose *required* modality has no candidate is dropped
  (``pivots_dropped``; ``blocked_reason`` says which modality); otherwise a set is emitted and
  every modality without a candidate (stale, never seen, or simply no message within slop) is
  listed in ``missing``. The pivot itself is always required.
* **Staleness.** A modality with a timeout is stale when the newest pivot stamp is more than its
  timeout past its newest message (or past the first pivot, when it was never received). Pivots
  no longer wait for it and new pivots do not use it; candidates it delivered while alive are
  kept by the pivots waiting for them. It rejoins after ``rejoin_count`` consecutive fresh messages
  (stamps advancing and within its timeout of the newest pivot). A modality without a timeout
  never goes stale: pivots wait for it (as ApproximateTimeSynchronizer does) until the pivot
  queue is full, see Bounds.
* **Bounds.** Each partner cache keeps the ``queue_size`` newest stamps; at most ``queue_size``
  pivots wait. When one more arrives, the oldest is resolved at once with the candidates at
  hand (``forced``) rather than dropped, so output keeps flowing while a dead topic times out.
* **Old messages.** A pivot not newer than the last emitted set, and a partner message older than
  the last emitted set minus ``slop`` (no later pivot can use it), is dropped and counted.
* **Clock jumps.** A pivot stamp more than ``jump_threshold`` (default 1 s) behind the newest
  pivot is a bag loop or clock reset only when ``jump_confirm`` (default 3) consecutive pivots
  agree on it (each advancing, within ``jump_threshold`` of the one before); until then they
  are held, and a pivot of the current epoch in between drops them as strays (counted as
  ``stamp_jumped_back``): one bad stamp never clears anything. A confirmed jump resets once:
  pending pivots and cache entries further than ``jump_threshold`` from the new stamp are
  cleared, staleness starts over, ``backward_jumps`` counts it, and the held pivots are then
  processed, so no set of the new epoch is lost. Smaller backward steps are ordinary
  out-of-order arrivals. A partner whose own stamps jump back that far is confirmed the same
  way, then clears its cache and is set aside (not alive) until the pivot follows it into the
  new epoch; a partner that had not looped yet when the pivot did drops its old-epoch
  stragglers (more than ``jump_threshold`` ahead of the pivot) until its own stamps come back.
  So a looping bag loses no set whichever topic loops first. ``jump_threshold`` must be shorter
  than the loop.
* **Output order.** Emitted stamps strictly increase; the only exception is the first set after
  a confirmed jump. Every dropped message is counted per modality and reason in
  ``ModalityState.rejected`` (``stamp_older_than_last_output``, ``stamp_jumped_back``,
  ``stamp_before_clock_jump``), and ``last_rejection`` says why the message just added was
  dropped (None when it was kept).

Strict mode -- ApproximateTimeSynchronizer equivalence
------------------------------------------------------
``SyncConfig(strict=True)`` (or ``SyncConfig.strict_mode(...)``) reproduces the Python
``ApproximateTimeSynchronizer`` of ros2/message_filters set for set, in the same order and on the
same ``add`` calls: per-topic dict queues keyed by stamp (a repeated stamp replaces the message);
the oldest stamp is evicted beyond ``queue_size`` (possibly the new one); on each arrival the other
queues' stamps within ``slop`` (inclusive) of it are ranked by distance (ties in insertion order)
and the first combination in that ranked product order whose spread is strictly below ``slop`` is
emitted and removed from the queues. Every modality is required and nothing times out.

Differences between strict and pivot mode, all inherited from that algorithm on purpose:
any topic may complete a set, not only the pivot; matched messages are consumed (a 10 Hz topic
cannot serve two 30 Hz frames, so fast frames go unmatched); the first acceptable combination wins,
not the closest to the pivot; sets may come out of stamp order; messages older than the last set
are kept and may still match; one silent topic stops all output; backward jumps are counted but
clear nothing. Stamps are compared in integer nanoseconds with ``int(slop * 1e9)``, as rclpy's
``Duration(seconds=slop)`` does.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections import deque
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    'ModalityState',
    'ModalitySynchronizer',
    'SyncConfig',
    'SyncedSet',
]

NS_PER_S = 1_000_000_000
_RATE_WINDOW = 20  # stamps kept per modality for the rate estimate


@dataclass
class SyncConfig:
    """What to synchronise and how tolerant to be (seconds for every duration)."""

    modalities: tuple[str, ...] = ('rgb', 'depth', 'lidar', 'event')
    pivot: str = 'rgb'
    slop: float = 0.05
    queue_size: int = 10
    timeouts: dict[str, float] = field(default_factory=dict)
    required: tuple[str, ...] = ('rgb',)
    rejoin_count: int = 3
    jump_threshold: float = 1.0
    # consecutive pivots (or partner messages) that must agree on a backward jump before it
    # resets anything; 1 = the first such message resets at once
    jump_confirm: int = 3
    strict: bool = False
    # Pivots to fall back to, in order, while the pivot is dead; used by FailoverSynchronizer
    # and only when the pivot is not required (a required pivot means: no camera, no output).
    pivot_fallback: tuple[str, ...] = ()
    # False: a partner with a candidate at or before the pivot is taken at once instead of
    # waiting for a possibly closer later message (lower latency; slop >= the slow topics'
    # period then makes sure such a candidate exists).
    wait_for_closer: bool = True

    def __post_init__(self) -> None:
        self.modalities = tuple(self.modalities)
        self.required = tuple(self.required)
        self.timeouts = dict(self.timeouts)
        self.pivot_fallback = tuple(self.pivot_fallback)
        mods = self.modalities
        if not mods:
            raise ValueError('SyncConfig.modalities must not be empty')
        if len(set(mods)) != len(mods):
            raise ValueError(f'SyncConfig.modalities has duplicates: {mods}')
        if self.pivot not in mods:
            raise ValueError(f'pivot {self.pivot!r} is not one of the modalities {mods}')
        unknown = [m for m in self.required if m not in mods]
        if unknown:
            raise ValueError(f'required modalities {unknown} are not in {mods}')
        bad = [m for m in self.pivot_fallback if m not in mods or m == self.pivot]
        if bad or len(set(self.pivot_fallback)) != len(self.pivot_fallback):
            raise ValueError(f'pivot_fallback {self.pivot_fallback} must list distinct '
                             f'modalities of {mods} other than the pivot {self.pivot!r}')
        unknown = [m for m in self.timeouts if m not in mods]
        if unknown:
            raise ValueError(f'timeouts given for unknown modalities {unknown}')
        for name, t in self.timeouts.items():
            if not (isinstance(t, (int, float)) and math.isfinite(t) and t > 0):
                raise ValueError(f'timeout for {name!r} must be a positive number, got {t!r}')
        if not (isinstance(self.slop, (int, float)) and math.isfinite(self.slop)
                and self.slop >= 0):
            raise ValueError(f'slop must be a finite number >= 0, got {self.slop!r}')
        if not isinstance(self.queue_size, int) or self.queue_size < 1:
            raise ValueError(f'queue_size must be an int >= 1, got {self.queue_size!r}')
        if not isinstance(self.jump_confirm, int) or not 1 <= self.jump_confirm <= 100:
            raise ValueError(f'jump_confirm must be an int in 1..100, got {self.jump_confirm!r}')
        if not isinstance(self.rejoin_count, int) or self.rejoin_count < 1:
            raise ValueError(f'rejoin_count must be an int >= 1, got {self.rejoin_count!r}')
        if not (math.isfinite(self.jump_threshold) and self.jump_threshold > self.slop):
            raise ValueError('jump_threshold must be finite and larger than slop '
                             f'(got {self.jump_threshold!r}, slop {self.slop!r})')
        if self.strict:
            if set(self.required) != set(mods):
                raise ValueError('strict mode needs every modality required '
                                 '(use SyncConfig.strict_mode(...))')
            if self.timeouts:
                raise ValueError('strict mode takes no timeouts (use SyncConfig.strict_mode(...))')
            if self.pivot_fallback:
                raise ValueError('strict mode has no pivot fallback')

    @classmethod
    def strict_mode(cls, modalities: tuple[str, ...] = ('rgb', 'depth', 'lidar', 'event'),
                    slop: float = 0.05, queue_size: int = 10,
                    pivot: str | None = None) -> SyncConfig:
        """ApproximateTimeSynchronizer-equivalent config: all required, no timeouts."""
        modalities = tuple(modalities)
        return cls(modalities=modalities, pivot=modalities[0] if pivot is None else pivot,
                   slop=slop, queue_size=queue_size, timeouts={}, required=modalities,
                   strict=True)


@dataclass(slots=True)
class SyncedSet:
    """One synchronised set: the pivot message and the partners chosen for it."""

    stamp_ns: int  # the pivot's stamp
    messages: dict[str, Any]
    stamps: dict[str, int]
    missing: frozenset[str]  # modalities left out: stale, never seen, or nothing within slop


@dataclass
class ModalityState:
    """Diagnostics of one modality (for /diagnostics and blocked-output explanations)."""

    name: str
    state: str  # 'ok' | 'stale' | 'missing' (never received since start/reset)
    age_s: float | None  # newest pivot stamp minus newest stamp (pivot: newest stamp of any)
    rate_hz: float | None  # from recent stamps
    received: int  # every add() for this modality
    dropped_old: int  # too old for any future set (or a straggler from before a clock jump)
    dropped_overflow: int  # evicted from a full cache while still usable (pivot: forced out of
    # the full pivot queue and not emittable)
    emitted: int  # sets that carry a message of this modality
    required: bool
    alive: bool  # used for matching now (hysteresis state)
    jumps: int  # own backward clock jumps
    rejected: dict[str, int] = field(default_factory=dict)  # dropped messages by reason


class _Mod:
    """Per-modality bookkeeping; lists indexed by modality keep the hot path cheap."""

    __slots__ = ('alive', 'dropped_old', 'dropped_overflow', 'early', 'emitted', 'fresh', 'held',
                 'hist', 'idx', 'jumps', 'late', 'msgs', 'name', 'newest', 'queue', 'received',
                 'rejected', 'required', 'stamps', 'timeout_ns')

    def __init__(self, name: str, idx: int, required: bool, timeout_ns: int | None) -> None:
        self.name = name
        self.idx = idx
        self.required = required
        self.timeout_ns = timeout_ns
        self.stamps: list[int] = []  # sorted stamps (pivot mode partner cache)
        self.msgs: list[Any] = []
        self.queue: dict[int, Any] = {}  # strict mode queue (insertion ordered, like ATS)
        self.newest: int | None = None
        self.alive = True
        self.fresh = 0
        self.early = False  # its clock jumped back before the pivot's did
        self.late = False  # the pivot's clock jumped back before its clock did
        self.hist: deque[int] = deque(maxlen=_RATE_WINDOW)
        self.received = 0
        self.dropped_old = 0
        self.dropped_overflow = 0
        self.emitted = 0
        self.jumps = 0
        self.held: list[tuple[int, Any]] = []  # messages of a backward jump not yet confirmed
        self.rejected: dict[str, int] = {}

    def clear_data(self) -> None:
        self.stamps.clear()
        self.msgs.clear()
        self.queue.clear()
        self.newest = None
        self.alive = True
        self.fresh = 0
        self.early = False
        self.late = False
        self.hist.clear()
        self.held = []


class _Pending:
    """A pivot waiting for its partners; best candidate per modality index."""

    __slots__ = ('best_d', 'best_m', 'best_s', 'msg', 'stamp')

    def __init__(self, stamp: int, msg: Any, n: int) -> None:
        self.stamp = stamp
        self.msg = msg
        self.best_s: list[int | None] = [None] * n
        self.best_d: list[int] = [0] * n
        self.best_m: list[Any] = [None] * n


class ModalitySynchronizer:
    """Feed ``add(modality, stamp_ns, msg)``; it returns the sets that message completed."""

    def __init__(self, config: SyncConfig) -> None:
        self.config = config
        self._names = config.modalities
        self._n = len(self._names)
        self._index = {name: i for i, name in enumerate(self._names)}
        self._pivot = self._index[config.pivot]
        self._slop = int(config.slop * NS_PER_S)  # same truncation as rclpy Duration(seconds=)
        self._jump = int(config.jump_threshold * NS_PER_S)
        self._qs = config.queue_size
        self._strict = config.strict
        self._wait = config.wait_for_closer
        required = set(config.required) | {config.pivot}
        self._mods = [
            _Mod(name, i, name in required,
                 None if name not in config.timeouts
                 else int(config.timeouts[name] * NS_PER_S))
            for i, name in enumerate(self._names)]
        self._partners = [m for m in self._mods if m.idx != self._pivot]
        self.sets_emitted = 0
        self.backward_jumps = 0
        self.pivots_dropped = 0  # pivots resolved without a set (a required modality had none)
        self.forced = 0  # pivots resolved early because too many were waiting
        self.cleared = 0  # pending pivots discarded by a backward jump
        self.last_rejection: str | None = None  # why the message just added was dropped
        self._reset_data()

    # ------------------------------------------------------------------ public API
    def add(self, modality: str, stamp_ns: int, msg: Any) -> list[SyncedSet]:
        """Cache one message; return the sets (in stamp order) it completed."""
        i = self._index.get(modality)
        if i is None:
            raise KeyError(f'unknown modality {modality!r}; configured: {self._names}')
        self.last_rejection = None
        if self._strict:
            return self._add_strict(self._mods[i], stamp_ns, msg)
        if i == self._pivot:
            return self._add_pivot(stamp_ns, msg)
        return self._add_partner(self._mods[i], stamp_ns, msg)

    def reset(self) -> None:
        """Forget every cached message and staleness state (cumulative counters are kept)."""
        self._reset_data()

    def states(self) -> dict[str, ModalityState]:
        """Per-modality diagnostics, ages relative to the newest pivot stamp."""
        ref = self._mods[self._pivot].newest
        out: dict[str, ModalityState] = {}
        for m in self._mods:
            if m.idx == self._pivot:
                base = self._clock
                timed_out = (m.newest is not None and m.timeout_ns is not None
                             and base is not None and base - m.newest > m.timeout_ns)
                alive = not timed_out
            else:
                base = ref
                alive = m.alive and not m.early
            age = None if m.newest is None or base is None else (base - m.newest) / NS_PER_S
            if m.newest is None:
                state = 'missing'
            elif not alive:
                state = 'stale'
            else:
                state = 'ok'
            out[m.name] = ModalityState(
                name=m.name, state=state, age_s=age, rate_hz=self._rate(m),
                received=m.received, dropped_old=m.dropped_old,
                dropped_overflow=m.dropped_overflow, emitted=m.emitted, required=m.required,
                alive=alive, jumps=m.jumps, rejected=dict(m.rejected))
        return out

    def cache_sizes(self) -> dict[str, int]:
        """Messages held per modality (the pivot's entry counts waiting pivots)."""
        if self._strict:
            return {m.name: len(m.queue) for m in self._mods}
        sizes = {m.name: len(m.stamps) for m in self._partners}
        sizes[self._names[self._pivot]] = len(self._pending)
        return sizes

    def stats(self) -> dict[str, int]:
        """Synchroniser-wide counters."""
        return {'sets_emitted': self.sets_emitted, 'backward_jumps': self.backward_jumps,
                'pivots_dropped': self.pivots_dropped, 'forced': self.forced,
                'cleared': self.cleared, 'pending': len(self._pending)}

    @property
    def blocked_reason(self) -> str | None:
        """Why no set is coming out right now, in words; None when nothing blocks output."""
        pv = self._mods[self._pivot]
        if pv.newest is None:
            return f'no message on pivot modality {pv.name!r} yet'
        if self._strict:
            for m in self._mods:
                if m.newest is None:
                    return f'required modality {m.name!r} has not been received'
            return None
        if (pv.timeout_ns is not None and self._clock is not None
                and self._clock - pv.newest > pv.timeout_ns):
            age = (self._clock - pv.newest) / NS_PER_S
            return f'required modality {pv.name!r} is stale (no message for {age:.2f} s)'
        ref = pv.newest
        for m in self._partners:
            if m.required and (not m.alive or m.early):
                if m.newest is None:
                    return f'required modality {m.name!r} has not been received'
                age = (ref - m.newest) / NS_PER_S
                if m.early:
                    return (f'required modality {m.name!r} jumped back in time '
                            f'({-age:.2f} s from the pivot)')
                return f'required modality {m.name!r} is stale (no message for {age:.2f} s)'
        if self._last_drop is not None:
            return self._last_drop
        if len(self._pending) > max(1, self._qs // 2):
            # An optional partner with a timeout does not block: pivots waiting for it go out
            # without it once it times out (or the pivot queue fills), so output is only
            # delayed; naming it here reported a stopped optional LiDAR as "no output" (issue
            # 21). Without a timeout every pivot waits until forced out: that one is named.
            head = self._pending[0]
            for m in self._partners:
                blocks = m.required or m.timeout_ns is None
                if blocks and not self._decided(head, m):
                    if m.newest is None:
                        return f'waiting for modality {m.name!r} (never received, no timeout)'
                    lag = (head.stamp - m.newest) / NS_PER_S
                    return (f'waiting for modality {m.name!r} (newest message {lag:.2f} s '
                            'before the oldest waiting pivot)')
        return None

    # ------------------------------------------------------------------ pivot mode
    def _reset_data(self) -> None:
        for m in self._mods:
            m.clear_data()
        self._pending: list[_Pending] = []
        self._pending_stamps: list[int] = []
        self._last_emitted: int | None = None
        self._origin: int | None = None  # first pivot stamp since reset (never-seen staleness)
        self._clock: int | None = None  # newest stamp of any modality (pivot's own age)
        self._last_drop: str | None = None

    def _rate(self, m: _Mod) -> float | None:
        h = m.hist
        if len(h) < 2 or h[-1] <= h[0]:
            return None
        return (len(h) - 1) * NS_PER_S / (h[-1] - h[0])

    # ------------------------------------------------------------------ dropped messages
    def _reject(self, m: _Mod, kind: str, text: str, n: int = 1) -> None:
        m.rejected[kind] = m.rejected.get(kind, 0) + n
        self.last_rejection = text

    def _jump_confirmed(self, m: _Mod, s: int, msg: Any) -> bool:
        """Hold a message stamped more than the jump threshold behind its modality's newest;
        True once `jump_confirm` held messages agree (m.held then holds them, oldest first)."""
        if m.held and not m.held[-1][0] < s <= m.held[-1][0] + self._jump:
            self._drop_held(m)  # not one clock with the held ones: they were strays
        m.held.append((s, msg))
        return len(m.held) >= self.config.jump_confirm

    def _drop_held(self, m: _Mod) -> None:
        n = len(m.held)
        back = (m.newest - m.held[0][0]) / NS_PER_S if m.newest is not None else 0.0
        m.held = []
        self._reject(m, 'stamp_jumped_back',
                     f'{n} message(s) stamped {back:.2f} s back dropped: the stamps after '
                     'them did not follow (a bad stamp, not a clock jump)', n)

    def _add_partner(self, m: _Mod, s: int, msg: Any) -> list[SyncedSet]:
        m.received += 1
        newest = m.newest
        ref = self._mods[self._pivot].newest
        if m.late:
            if ref is not None and s > ref + self._jump:
                m.dropped_old += 1  # sent before the backward jump, arriving after it
                self._reject(m, 'stamp_before_clock_jump', 'message dropped: stamped before '
                             'the clock jumped back, it arrived after the jump')
                return []
            m.late = False
        if newest is not None and s < newest - self._jump:
            if not self._jump_confirmed(m, s, msg):
                return []
            held, m.held = m.held, []
            self._partner_jump(m, held[0][0], ref)
            out = self._insert_partner(m, held[0][0], held[0][1], None)
            for hs, hm in held[1:]:
                if m.early and ref is not None and abs(hs - ref) <= self._jump:
                    m.early = False
                out += self._insert_partner(m, hs, hm, m.newest)
            return out
        if m.held:
            self._drop_held(m)
        if m.early:
            if ref is not None and abs(s - ref) <= self._jump:
                m.early = False  # the pivot's clock is back in step with this topic
        elif self._last_emitted is not None and s < self._last_emitted - self._slop:
            m.dropped_old += 1
            self._reject(m, 'stamp_older_than_last_output',
                         f'message dropped: stamp older than the last output minus slop (by '
                         f'{(self._last_emitted - self._slop - s) / NS_PER_S:.3f} s)')
            return []
        return self._insert_partner(m, s, msg, newest)

    def _insert_partner(self, m: _Mod, s: int, msg: Any, newest: int | None
                        ) -> list[SyncedSet]:
        ref = self._mods[self._pivot].newest
        if self._clock is None or s > self._clock:
            self._clock = s
        # insert into the sorted cache (fast path: in order)
        stamps = m.stamps
        if not stamps or s > stamps[-1]:
            stamps.append(s)
            m.msgs.append(msg)
        else:
            k = bisect_left(stamps, s)
            if k < len(stamps) and stamps[k] == s:
                m.msgs[k] = msg  # same stamp again: the newer message replaces it
            else:
                stamps.insert(k, s)
                m.msgs.insert(k, msg)
        if len(stamps) > self._qs:
            old = stamps.pop(0)
            m.msgs.pop(0)
            floor = (self._pending[0].stamp if self._pending else ref)
            if floor is None or old >= floor - self._slop:
                m.dropped_overflow += 1
        advancing = newest is None or s > newest
        if advancing:
            m.newest = s
            m.hist.append(s)
        if m.early:
            return []
        if not m.alive:
            to = m.timeout_ns
            if advancing and (ref is None or to is None or ref - s <= to):
                m.fresh += 1
                if m.fresh >= self.config.rejoin_count:
                    m.alive = True
                    m.fresh = 0
                    self._backfill(m)
            else:
                m.fresh = 0
            return self._drain() if self._pending else []
        pending = self._pending
        if pending:
            j = m.idx
            slop = self._slop
            for pv in pending:
                d = s - pv.stamp
                if d < 0:
                    d = -d
                if d <= slop:
                    bs = pv.best_s[j]
                    if bs is None or d < pv.best_d[j] or (d == pv.best_d[j] and s <= bs):
                        pv.best_s[j] = s
                        pv.best_d[j] = d
                        pv.best_m[j] = msg
            return self._drain()
        return []

    def _partner_jump(self, m: _Mod, s: int, ref: int | None) -> None:
        """A partner's own stamps went back by more than the jump threshold."""
        m.jumps += 1
        m.stamps.clear()
        m.msgs.clear()
        m.newest = None
        m.hist.clear()
        m.fresh = 0
        # If the pivot is still in the old epoch, set this topic aside until it follows.
        m.early = ref is not None and abs(s - ref) > self._jump

    def _backfill(self, m: _Mod) -> None:
        """A modality rejoined: give waiting pivots its cached candidates."""
        for pv in self._pending:
            self._init_best(pv, m)

    def _init_best(self, pv: _Pending, m: _Mod) -> None:
        stamps = m.stamps
        if not stamps:
            return
        p = pv.stamp
        k = bisect_left(stamps, p)
        best = None
        bd = 0
        # closest at or after p and closest before p; ties go to the older stamp
        if k > 0:
            best = k - 1
            bd = p - stamps[k - 1]
        if k < len(stamps):
            d = stamps[k] - p
            if best is None or d < bd:
                best = k
                bd = d
        if best is not None and bd <= self._slop:
            j = m.idx
            pv.best_s[j] = stamps[best]
            pv.best_d[j] = bd
            pv.best_m[j] = m.msgs[best]

    def _add_pivot(self, s: int, msg: Any) -> list[SyncedSet]:
        pm = self._mods[self._pivot]
        pm.received += 1
        newest = pm.newest
        if newest is not None and s < newest - self._jump:
            if not self._jump_confirmed(pm, s, msg):
                return []
            held, pm.held = pm.held, []
            self._pivot_jump(held[0][0])  # once: the held pivots are processed afresh
            out = self._insert_pivot(held[0][0], held[0][1], None)
            for hs, hm in held[1:]:
                out += self._insert_pivot(hs, hm, pm.newest)
            return out
        if pm.held:
            self._drop_held(pm)
        if self._last_emitted is not None and s <= self._last_emitted:
            pm.dropped_old += 1
            self._reject(pm, 'stamp_older_than_last_output',
                         f'message dropped: stamp older than last output (by '
                         f'{(self._last_emitted - s) / NS_PER_S:.3f} s)')
            return []
        return self._insert_pivot(s, msg, newest)

    def _insert_pivot(self, s: int, msg: Any, newest: int | None) -> list[SyncedSet]:
        pm = self._mods[self._pivot]
        if self._clock is None or s > self._clock:
            self._clock = s
        if self._origin is None:
            self._origin = s
        ps = self._pending_stamps
        k = bisect_left(ps, s)
        if k < len(ps) and ps[k] == s:
            self._pending[k].msg = msg  # same stamp again: the newer message replaces it
            return self._drain()
        pv = _Pending(s, msg, self._n)
        for m in self._partners:
            if m.alive and not m.early:
                self._init_best(pv, m)
        ps.insert(k, s)
        self._pending.insert(k, pv)
        if newest is None or s > newest:
            pm.newest = s
            pm.hist.append(s)
            self._update_staleness(s)
        out: list[SyncedSet] = []
        while len(self._pending) > self._qs:
            self.forced += 1
            self._resolve(out, forced=True)
        self._drain(out)
        return out

    def _update_staleness(self, ref: int) -> None:
        origin = self._origin
        for m in self._partners:
            to = m.timeout_ns
            if to is None or not m.alive:
                continue
            last = m.newest if m.newest is not None else origin
            if last is not None and ref - last > to:
                m.alive = False
                m.fresh = 0

    def _pivot_jump(self, s: int) -> None:
        """Bag loop or clock reset: clear what belongs to the old epoch."""
        self.backward_jumps += 1
        self.cleared += len(self._pending)
        self._pending.clear()
        self._pending_stamps.clear()
        self._last_emitted = None
        self._last_drop = None
        self._origin = s
        jump = self._jump
        clock = s
        for m in self._mods:
            keep = [k for k, t in enumerate(m.stamps) if abs(t - s) <= jump]
            m.stamps[:] = [m.stamps[k] for k in keep]
            m.msgs[:] = [m.msgs[k] for k in keep]
            m.newest = m.stamps[-1] if m.stamps else None
            m.hist.clear()
            m.hist.extend(m.stamps)
            m.alive = True
            m.fresh = 0
            m.early = False
            m.late = m.idx != self._pivot and not m.stamps
            if m.newest is not None and m.newest > clock:
                clock = m.newest
        self._mods[self._pivot].newest = None
        self._clock = clock
        for m in self._partners:  # partners already holding the new epoch: it is confirmed
            held, m.held = m.held, []
            for hs, hm in held:
                m.late = False
                self._insert_partner(m, hs, hm, m.newest)

    def _decided(self, pv: _Pending, m: _Mod) -> bool:
        if not m.alive or m.early:
            return True
        nj = m.newest
        if nj is None:
            return False
        best = pv.best_s[m.idx]
        if best is None:
            return nj > pv.stamp + self._slop
        if not self._wait and best <= pv.stamp:
            return True
        return nj >= pv.stamp + pv.best_d[m.idx]

    def _drain(self, out: list[SyncedSet] | None = None) -> list[SyncedSet]:
        if out is None:
            out = []
        pending = self._pending
        slop = self._slop
        while pending:
            pv = pending[0]
            p = pv.stamp
            bs = pv.best_s
            bd = pv.best_d
            for m in self._partners:
                if not m.alive or m.early:
                    continue
                nj = m.newest
                if nj is None:
                    return out
                j = m.idx
                best = bs[j]
                if best is None:
                    if nj <= p + slop:
                        return out
                elif nj < p + bd[j] and (self._wait or best > p):
                    return out
            self._resolve(out, forced=False)
        return out

    def _resolve(self, out: list[SyncedSet], forced: bool) -> None:
        pv = self._pending.pop(0)
        self._pending_stamps.pop(0)
        p = pv.stamp
        self._last_emitted = p  # nothing older may come out after this point
        bs = pv.best_s
        missing = []
        for m in self._partners:
            if bs[m.idx] is None:
                if m.required:
                    self.pivots_dropped += 1
                    pm = self._mods[self._pivot]
                    if forced:
                        pm.dropped_overflow += 1
                    self._last_drop = (f'required modality {m.name!r} had no message within '
                                       f'{self.config.slop:g} s of pivot {p / NS_PER_S:.3f} s')
                    return
                missing.append(m.name)
        self._last_drop = None
        pname = self._names[self._pivot]
        messages = {pname: pv.msg}
        stamps = {pname: p}
        pm = self._mods[self._pivot]
        pm.emitted += 1
        for m in self._partners:
            s = bs[m.idx]
            if s is not None:
                messages[m.name] = pv.best_m[m.idx]
                stamps[m.name] = s
                m.emitted += 1
        self.sets_emitted += 1
        out.append(SyncedSet(p, messages, stamps, frozenset(missing)))

    # ------------------------------------------------------------------ strict mode
    def _add_strict(self, m: _Mod, s: int, msg: Any) -> list[SyncedSet]:
        m.received += 1
        if m.idx == self._pivot:
            if m.newest is not None and s < m.newest - self._jump:
                self.backward_jumps += 1  # counted only: the reference clears nothing
                m.newest = None
        if m.newest is None or s > m.newest:
            m.newest = s
            m.hist.append(s)
        if self._clock is None or s > self._clock:
            self._clock = s
        q = m.queue
        q[s] = msg
        if len(q) > self._qs:
            del q[min(q)]
            m.dropped_overflow += 1
            if s not in q:
                return []
        slop = self._slop
        ranked: list[list[int]] = []
        for other in self._mods:
            if other is m:
                continue
            c = [t for t in other.queue if -slop <= t - s <= slop]
            if not c:
                return []
            if len(c) > 1:
                c.sort(key=lambda t: abs(t - s))  # stable: ties keep insertion order
            ranked.append(c)
        chosen = [0] * len(ranked)
        if not ranked and slop <= 0:
            return []  # the reference's lone-stamp spread test (0 < slop) fails too
        if not self._search(ranked, 0, s, s, chosen, slop):
            return []
        names = self._names
        stamps: dict[str, int] = {}
        messages: dict[str, Any] = {}
        k = 0
        for other in self._mods:
            t = s if other is m else chosen[k]
            if other is not m:
                k += 1
            stamps[names[other.idx]] = t
            messages[names[other.idx]] = other.queue.pop(t)
            other.emitted += 1
        self.sets_emitted += 1
        pivot_stamp = stamps[names[self._pivot]]
        return [SyncedSet(pivot_stamp, messages, stamps, frozenset())]

    def _search(self, ranked: list[list[int]], k: int, lo: int, hi: int, chosen: list[int],
                slop: int) -> bool:
        """First combination in ranked-product order with spread < slop (depth-first, pruned:
        a partial spread never shrinks, so pruning keeps the product's order)."""
        if k == len(ranked):
            return True
        for t in ranked[k]:
            nlo = t if t < lo else lo
            nhi = t if t > hi else hi
            if nhi - nlo < slop:
                chosen[k] = t
                if self._search(ranked, k + 1, nlo, nhi, chosen, slop):
                    return True
        return False
