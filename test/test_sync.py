"""Tests of rmseg_ros.sync.core on scripted and randomised stamp streams (no ROS needed).

The expected outputs come from independent oracles written here: a brute-force "closest within
slop" matcher for pivot mode, and a literal re-statement of message_filters'
ApproximateTimeSynchronizer (Python) algorithm for strict mode.
"""

from __future__ import annotations

import itertools
import random
import tracemalloc
from collections.abc import Iterable

import pytest

from rmseg_ros.sync.core import ModalitySynchronizer, SyncConfig, SyncedSet

S = 1_000_000_000
MS = 1_000_000
MODS4 = ('rgb', 'depth', 'lidar', 'event')


# ----------------------------------------------------------------------------- helpers
def make_stream(rates: dict[str, float], start: float, duration: float, jitter: float = 0.0,
                seed: int = 0, gaps: dict[str, tuple[float, float]] | None = None
                ) -> list[tuple[str, int, tuple[str, int]]]:
    """Messages (modality, stamp_ns, msg) of periodic topics with uniform stamp jitter, sorted
    by stamp. A message is a (modality, stamp) tuple so a set can be checked against its stamps.
    `gaps` silences a topic over [t0, t1) seconds."""
    rng = random.Random(seed)
    out = []
    for mod, rate in rates.items():
        k = 0
        while k / rate < duration:
            t = start + k / rate + rng.uniform(-jitter, jitter)
            k += 1
            if gaps and mod in gaps and gaps[mod][0] <= t < gaps[mod][1]:
                continue
            s = round(t * S)
            out.append((mod, s, (mod, s)))
    out.sort(key=lambda e: (e[1], e[0]))
    return out


def run(sync: ModalitySynchronizer, events: Iterable[tuple[str, int, object]]
        ) -> list[tuple[int, SyncedSet]]:
    """Feed events; return (index of the add call that emitted it, set) in output order."""
    out = []
    for i, (mod, stamp, msg) in enumerate(events):
        for st in sync.add(mod, stamp, msg):
            out.append((i, st))
    return out


def closest(stamps: list[int], p: int, slop_ns: int) -> int | None:
    """Oracle: the stamp closest to p within slop, ties to the older stamp."""
    best = None
    for s in stamps:
        d = abs(s - p)
        if d <= slop_ns and (best is None or (d, s) < (abs(best - p), best)):
            best = s
    return best


def check_set_consistent(st: SyncedSet, pivot: str = 'rgb') -> None:
    assert st.stamps[pivot] == st.stamp_ns
    for mod, msg in st.messages.items():
        assert msg == (mod, st.stamps[mod])  # message and stamp belong together
    assert set(st.messages) == set(st.stamps)
    assert not (set(st.messages) & st.missing)


def with_latency(events: list, latency: dict[str, float], spread: float, seed: int) -> list:
    """Re-order events by arrival time: a per-topic latency plus random per-message delay,
    keeping each topic's own order (one DDS publisher delivers in order)."""
    rng = random.Random(seed)
    last: dict[str, float] = {}
    arrivals = []
    for n, (mod, s, msg) in enumerate(events):
        t = s / S + latency.get(mod, 0.0) + rng.uniform(0, spread)
        t = max(t, last.get(mod, -1e18))
        last[mod] = t
        arrivals.append((t, n, (mod, s, msg)))
    arrivals.sort()
    return [e for _, _, e in arrivals]


# ----------------------------------------------------------------------------- ATS reference
class ApproxTimeReference:
    """Independent restatement of ApproximateTimeSynchronizer.add (ros2/message_filters, Python):
    dict queues keyed by stamp, oldest evicted beyond queue_size, other queues' stamps within slop
    ranked by distance, first acceptable combination of their product wins and is consumed."""

    def __init__(self, n: int, queue_size: int, slop_s: float) -> None:
        self.queues: list[dict[int, object]] = [{} for _ in range(n)]
        self.queue_size = queue_size
        self.slop = int(slop_s * S)  # rclpy Duration(seconds=slop).nanoseconds

    def add(self, index: int, stamp: int, msg: object) -> list[tuple[object, ...]]:
        mine = self.queues[index]
        mine[stamp] = msg
        while len(mine) > self.queue_size:
            del mine[min(mine)]
        ranked = []
        for q in self.queues[:index] + self.queues[index + 1:]:
            near = [(s, abs(s - stamp)) for s in q if abs(s - stamp) <= self.slop]
            if not near:
                return []
            ranked.append([s for s, _ in sorted(near, key=lambda x: x[1])])
        for combo in itertools.product(*ranked):
            full = list(combo)
            full.insert(index, stamp)
            if max(full) - min(full) < self.slop and all(
                    t in q for q, t in zip(self.queues, full, strict=True)):
                msgs = tuple(q.pop(t) for q, t in zip(self.queues, full, strict=True))
                return [msgs]
        return []


def random_tie_case(rng: random.Random) -> tuple[tuple[str, ...], float, int, list]:
    """Stamps on a 10 ms grid delivered in shuffled windows: equal distances, repeated stamps
    and insertion order that disagrees with stamp order are the rule here."""
    n = rng.randint(2, 4)
    mods = MODS4[:n]
    events = [(mod, (100 + rng.randrange(0, 60)) * 10 * MS) for mod in mods
              for _ in range(rng.randint(10, 40))]
    events.sort(key=lambda e: e[1])
    window = rng.choice([2, 5, 12])
    for k in range(0, len(events), window):
        chunk = events[k:k + window]
        rng.shuffle(chunk)
        events[k:k + window] = chunk
    stream = [(mod, s, (mod, s, k)) for k, (mod, s) in enumerate(events)]
    return mods, rng.choice([0.01, 0.02, 0.03]), rng.choice([2, 4, 10]), stream


def random_strict_case(rng: random.Random) -> tuple[tuple[str, ...], float, int, list]:
    if rng.random() < 0.4:
        return random_tie_case(rng)
    n = rng.randint(2, 4)
    mods = MODS4[:n]
    slop = rng.choice([0.005, 0.01, 0.02, 0.03, 0.05, 0.08])
    queue_size = rng.choice([1, 2, 3, 5, 10])
    quantum = rng.choice([1, MS, 5 * MS])  # coarse grids make distance ties common
    events = []
    for mod in mods:
        rate = rng.uniform(5, 40)
        jitter = rng.uniform(0, 0.02)
        drop = rng.uniform(0, 0.3)
        t = 1.0 + rng.uniform(0, 0.05)
        while t < 1.0 + rng.uniform(2.0, 4.0):
            if rng.random() >= drop:
                s = round((t + rng.uniform(-jitter, jitter)) * S) // quantum * quantum
                events.append((mod, s))
                if rng.random() < 0.03:
                    events.append((mod, s))  # repeated stamp
            t += 1.0 / rate
    # arrival: stamp + random latency, so topics and messages within a topic get out of order
    latency_scale = rng.choice([0.0, 0.01, 0.05, 0.2])
    arrivals = sorted((s / S + rng.expovariate(1.0) * latency_scale, k, mod, s)
                      for k, (mod, s) in enumerate(events))
    stream = [(mod, s, (mod, s, k)) for _, k, mod, s in arrivals]
    return mods, slop, queue_size, stream


# ----------------------------------------------------------------------------- config
def test_config_validation() -> None:
    with pytest.raises(ValueError, match='pivot'):
        SyncConfig(pivot='thermal')
    with pytest.raises(ValueError, match='required'):
        SyncConfig(required=('rgb', 'radar'))
    with pytest.raises(ValueError, match='unknown'):
        SyncConfig(timeouts={'radar': 0.5})
    with pytest.raises(ValueError, match='positive'):
        SyncConfig(timeouts={'depth': 0.0})
    with pytest.raises(ValueError, match='slop'):
        SyncConfig(slop=-0.01)
    with pytest.raises(ValueError, match='queue_size'):
        SyncConfig(queue_size=0)
    with pytest.raises(ValueError, match='rejoin_count'):
        SyncConfig(rejoin_count=0)
    with pytest.raises(ValueError, match='duplicates'):
        SyncConfig(modalities=('rgb', 'rgb'))
    with pytest.raises(ValueError, match='jump_threshold'):
        SyncConfig(slop=0.5, jump_threshold=0.2)
    with pytest.raises(ValueError, match='strict'):
        SyncConfig(strict=True)  # default required is only rgb
    with pytest.raises(ValueError, match='strict'):
        SyncConfig(modalities=('rgb', 'depth'), required=('rgb', 'depth'),
                   timeouts={'depth': 1.0}, strict=True)
    cfg = SyncConfig.strict_mode(('rgb', 'depth'), slop=0.02, queue_size=4)
    assert cfg.strict and set(cfg.required) == {'rgb', 'depth'} and cfg.timeouts == {}
    with pytest.raises(KeyError, match='radar'):
        ModalitySynchronizer(SyncConfig()).add('radar', 0, None)


# ----------------------------------------------------------------------------- pivot mode
def test_waits_for_a_closer_candidate_and_prefers_the_closest() -> None:
    sync = ModalitySynchronizer(SyncConfig(modalities=('rgb', 'depth')))
    assert sync.add('rgb', 10 * S, 'r0') == []
    assert sync.add('depth', 10 * S - 20 * MS, 'd-20') == []  # a closer one may still come
    out = sync.add('depth', 10 * S + 10 * MS, 'd+10')  # closer, and after the pivot: decided
    assert [(st.stamp_ns, st.messages) for st in out] == [
        (10 * S, {'rgb': 'r0', 'depth': 'd+10'})]

    sync = ModalitySynchronizer(SyncConfig(modalities=('rgb', 'depth')))
    sync.add('rgb', 10 * S, 'r0')
    assert sync.add('depth', 10 * S - 10 * MS, 'd-10') == []
    out = sync.add('depth', 10 * S + 30 * MS, 'd+30')  # further away: the earlier one wins
    assert out[0].messages['depth'] == 'd-10' and out[0].missing == frozenset()

    # equal distance on both sides: the older stamp, whether the pivot waits for the second...
    sync = ModalitySynchronizer(SyncConfig(modalities=('rgb', 'depth')))
    sync.add('rgb', 10 * S, 'r0')
    assert sync.add('depth', 10 * S - 10 * MS, -10) == []
    assert [st.messages['depth'] for st in sync.add('depth', 10 * S + 10 * MS, 10)] == [-10]
    # ... or finds both in the cache, in either arrival order
    for order in ((-10, 10), (10, -10)):
        sync = ModalitySynchronizer(SyncConfig(modalities=('rgb', 'depth')))
        for k in order:
            assert sync.add('depth', 10 * S + k * MS, k) == []
        sets = sync.add('rgb', 10 * S, 'r0')
        assert len(sets) == 1 and sets[0].messages['depth'] == -10


def test_no_candidate_within_slop_gives_missing_or_drops_when_required() -> None:
    cfg = SyncConfig(modalities=('rgb', 'depth', 'lidar'), slop=0.02,
                     required=('rgb', 'lidar'))
    sync = ModalitySynchronizer(cfg)
    sync.add('rgb', 5 * S, 'r')
    sync.add('lidar', 5 * S + 5 * MS, 'l')
    assert sync.add('depth', 5 * S - 50 * MS, 'd_far') == []
    out = sync.add('depth', 5 * S + 40 * MS, 'd_far2')  # window passed with nothing in it
    assert len(out) == 1 and out[0].missing == frozenset({'depth'})
    assert out[0].messages == {'rgb': 'r', 'lidar': 'l'}
    # now the required lidar misses a window: the pivot is dropped and the reason given
    sync.add('rgb', 6 * S, 'r2')
    sync.add('depth', 6 * S, 'd')
    assert sync.add('lidar', 6 * S + 30 * MS, 'l_late') == []
    assert sync.stats()['pivots_dropped'] == 1
    assert "'lidar'" in sync.blocked_reason and 'within' in sync.blocked_reason


def test_mixed_jittered_rates_every_pivot_gets_the_closest_partners() -> None:
    rates = {'rgb': 30.0, 'depth': 15.0, 'lidar': 10.0, 'event': 20.0}
    slop = 0.06  # half the 10 Hz period plus twice the jitter fits
    events = make_stream(rates, start=100.0, duration=20.0, jitter=0.004, seed=1)
    sync = ModalitySynchronizer(SyncConfig(slop=slop, timeouts={'depth': 0.5, 'lidar': 0.5,
                                                                'event': 0.5}))
    out = [st for _, st in run(sync, events)]
    by_mod = {m: [s for mm, s, _ in events if mm == m] for m in rates}
    pivots = by_mod['rgb']
    last_partner = min(max(v) for m, v in by_mod.items() if m != 'rgb')
    decidable = [p for p in pivots if p + slop * S < last_partner]
    assert [st.stamp_ns for st in out][:len(decidable)] == decidable
    assert len(out) >= len(decidable) > 550
    slop_ns = int(slop * S)
    for st in out:
        check_set_consistent(st)
        assert st.missing == frozenset()
        for m in ('depth', 'lidar', 'event'):
            assert abs(st.stamps[m] - st.stamp_ns) <= slop_ns
            assert st.stamps[m] == closest(by_mod[m], st.stamp_ns, slop_ns)
    # partners are shared between pivots: a 10 Hz lidar serves 30 Hz frames
    assert len({st.stamps['lidar'] for st in out}) < len(out) / 2
    assert sync.stats()['forced'] == 0 and sync.stats()['pivots_dropped'] == 0


def test_cross_topic_delays_do_not_change_the_output() -> None:
    rates = {'rgb': 30.0, 'depth': 15.0, 'lidar': 10.0, 'event': 20.0}
    events = make_stream(rates, start=50.0, duration=10.0, jitter=0.004, seed=2)
    cfg = SyncConfig(slop=0.06)
    ref = [(st.stamp_ns, st.stamps) for _, st in run(ModalitySynchronizer(cfg), events)]
    for seed, latency in enumerate(({'lidar': 0.12}, {'rgb': 0.2}, {'event': 0.08, 'depth': 0.03},
                                    {})):
        delayed = with_latency(events, latency, spread=0.05, seed=seed)
        assert delayed != events
        sync = ModalitySynchronizer(cfg)
        got = [(st.stamp_ns, st.stamps) for _, st in run(sync, delayed)]
        n = min(len(got), len(ref))  # the tail may still be waiting at the end of the stream
        assert n > len(ref) - 10
        assert got[:n] == ref[:n]
        assert all(st.dropped_old == 0 for st in sync.states().values())


def test_out_of_order_arrivals_inside_the_caches() -> None:
    cfg = SyncConfig(modalities=('rgb', 'depth', 'lidar'), slop=0.05)
    sync = ModalitySynchronizer(cfg)
    base = 20 * S
    pivots = [base + k * 33 * MS for k in range(4)]
    # depth arrives newest first, pivots out of order, lidar (slow) last
    for k in (5, 4, 3, 2, 1, 0, -1):
        assert sync.add('depth', base + k * 25 * MS, ('depth', base + k * 25 * MS)) == []
    for p in (pivots[2], pivots[0], pivots[3], pivots[1]):
        assert sync.add('rgb', p, ('rgb', p)) == []
    lidar = [base - 20 * MS, base + 60 * MS, base + 140 * MS]
    out = []
    for s in lidar:
        out += sync.add('lidar', s, ('lidar', s))
    depth = [base + k * 25 * MS for k in range(-1, 6)]
    assert [st.stamp_ns for st in out] == pivots
    for st in out:
        check_set_consistent(st)
        assert st.stamps['depth'] == closest(depth, st.stamp_ns, 50 * MS)
        assert st.stamps['lidar'] == closest(lidar, st.stamp_ns, 50 * MS)


def test_messages_older_than_the_last_set_are_dropped_and_counted() -> None:
    sync = ModalitySynchronizer(SyncConfig(modalities=('rgb', 'depth'), slop=0.02))
    sync.add('rgb', 10 * S, 'r')
    assert len(sync.add('depth', 10 * S + 20 * MS, 'd')) == 1
    assert sync.add('rgb', 10 * S - 100 * MS, 'r_old') == []
    assert sync.add('rgb', 10 * S, 'r_same') == []
    assert sync.add('depth', 10 * S - 30 * MS, 'd_old') == []  # no later pivot can use it
    sync.add('depth', 10 * S + 5 * MS, 'd_ok')  # may still serve a pivot up to +25 ms
    st = sync.states()
    assert (st['rgb'].dropped_old, st['depth'].dropped_old) == (2, 1)
    assert st['rgb'].received == 3 and st['depth'].received == 3
    out = sync.add('rgb', 10 * S + 20 * MS, 'r2')
    out += sync.add('depth', 10 * S + 60 * MS, 'd3')
    assert [st.messages['depth'] for st in out] == ['d']  # 20 ms later: d at 0, d_ok at 15 ms


def test_topic_stops_and_resumes_with_hysteresis() -> None:
    rates = {'rgb': 30.0, 'depth': 30.0, 'lidar': 10.0}
    timeout, rejoin = 0.25, 3
    gap = (3.0, 5.0)
    events = make_stream(rates, start=1.0, duration=7.0, jitter=0.002, seed=3,
                         gaps={'depth': gap})
    cfg = SyncConfig(modalities=tuple(rates), slop=0.06, rejoin_count=rejoin,
                     timeouts={'depth': timeout, 'lidar': 0.5})
    sync = ModalitySynchronizer(cfg)
    out = []
    newest_rgb = 0
    resumed_depth: list[int] = []
    state_after_depth: list[str] = []
    for i, (mod, s, msg) in enumerate(events):
        if mod == 'rgb':
            newest_rgb = max(newest_rgb, s)
        for st in sync.add(mod, s, msg):
            out.append((i, newest_rgb, st))
        if mod == 'depth' and s >= gap[1] * S:
            resumed_depth.append(s)
            state_after_depth.append(sync.states()['depth'].state)
        if mod == 'rgb' and gap[0] + timeout + 0.1 < s / S < gap[1]:
            depth_state = sync.states()['depth']
            assert depth_state.state == 'stale' and depth_state.age_s > timeout
            assert sync.blocked_reason is None  # depth is optional: nothing is blocked
    pivots = [s for m, s, _ in events if m == 'rgb']
    emitted = [st.stamp_ns for _, _, st in out]
    assert emitted == pivots[:len(emitted)] and len(emitted) >= len(pivots) - 3  # none lost
    # output keeps flowing: each set leaves at most about `timeout` after its pivot
    assert max((newest - st.stamp_ns) / S for _, newest, st in out) <= timeout + 0.05
    # the modality is back only after `rejoin_count` fresh messages
    assert state_after_depth[:rejoin] == ['stale'] * (rejoin - 1) + ['ok']
    third = resumed_depth[rejoin - 1]
    for i, _, st in out:
        check_set_consistent(st)
        p = st.stamp_ns / S
        if p < gap[0] - 0.06 or st.stamp_ns > third + 60 * MS:
            assert 'depth' in st.messages, p
        if gap[0] + 0.06 < p < gap[1] or (events[i][1] < third and p >= gap[1]):
            assert st.missing == frozenset({'depth'}), p
    assert sync.states()['depth'].state == 'ok'
    assert sync.states()['lidar'].state == 'ok'


def test_required_modality_stale_blocks_output_with_a_reason() -> None:
    rates = {'rgb': 30.0, 'depth': 15.0}
    gap = (2.0, 3.0)
    events = make_stream(rates, start=1.0, duration=4.0, seed=4, gaps={'depth': gap})
    cfg = SyncConfig(modalities=('rgb', 'depth'), required=('rgb', 'depth'), slop=0.04,
                     timeouts={'depth': 0.2})
    sync = ModalitySynchronizer(cfg)
    out = []
    reasons = []
    for mod, s, msg in events:
        out += sync.add(mod, s, msg)
        if mod == 'rgb' and gap[0] + 0.3 < s / S < gap[1]:
            reasons.append(sync.blocked_reason)
    assert reasons and all("required modality 'depth' is stale (no message for" in r
                           for r in reasons)
    stamps = [st.stamp_ns / S for st in out]
    assert not [p for p in stamps if gap[0] + 0.04 < p < gap[1]]
    assert all('depth' in st.messages for st in out)
    assert sync.stats()['pivots_dropped'] >= 25
    assert max(stamps) > gap[1] + 0.5  # back after the rejoin
    assert sync.blocked_reason is None

    # a stale pivot: the reason names it and its age
    sync = ModalitySynchronizer(SyncConfig(modalities=('rgb', 'depth'),
                                           timeouts={'rgb': 0.2}))
    sync.add('rgb', 10 * S, 'r')
    sync.add('depth', 10 * S, 'd')
    for k in range(1, 18):
        sync.add('depth', 10 * S + k * 30 * MS, 'd')
    assert sync.blocked_reason == "required modality 'rgb' is stale (no message for 0.51 s)"
    assert sync.states()['rgb'].state == 'stale'
    assert ModalitySynchronizer(SyncConfig()).blocked_reason == (
        "no message on pivot modality 'rgb' yet")


def test_modality_without_timeout_waits_then_forces_out_the_oldest_pivot() -> None:
    cfg = SyncConfig(modalities=('rgb', 'lidar'), queue_size=4)
    sync = ModalitySynchronizer(cfg)
    outs = [sync.add('rgb', 10 * S + k * 100 * MS, k) for k in range(4)]
    assert outs == [[]] * 4
    assert sync.blocked_reason == "waiting for modality 'lidar' (never received, no timeout)"
    out = sync.add('rgb', 10 * S + 400 * MS, 4)  # one more than the queue holds
    assert [(st.messages, st.missing) for st in out] == [({'rgb': 0}, frozenset({'lidar'}))]
    assert sync.stats()['forced'] == 1 and sync.cache_sizes()['rgb'] == 4


def test_never_seen_modality_with_timeout_goes_stale_and_rejoins() -> None:
    cfg = SyncConfig(modalities=('rgb', 'event'), timeouts={'event': 0.1}, rejoin_count=2)
    sync = ModalitySynchronizer(cfg)
    assert sync.states()['event'].state == 'missing'
    out = []
    for k in range(10):
        out += sync.add('rgb', 10 * S + k * 50 * MS, k)
    # pivots waited for the first 0.1 s, then came out without events
    assert [st.messages['rgb'] for st in out] == list(range(10))
    assert all(st.missing == frozenset({'event'}) for st in out)
    assert sync.states()['event'].state == 'missing'
    sync.add('event', 10 * S + 455 * MS, 'e1')
    assert sync.states()['event'].state == 'stale'
    sync.add('event', 10 * S + 460 * MS, 'e2')
    assert sync.states()['event'].state == 'ok'
    out = sync.add('rgb', 10 * S + 500 * MS, 10)
    out += sync.add('event', 10 * S + 520 * MS, 'e3')
    assert [st.messages.get('event') for st in out] == ['e3']  # closer than e2, within slop


def test_looping_bag_clears_caches_and_repeats_the_same_sets() -> None:
    rates = {'rgb': 30.0, 'depth': 15.0, 'lidar': 10.0, 'event': 20.0}
    duration = 3.0
    one_pass = make_stream(rates, start=1000.0, duration=duration, jitter=0.003, seed=5)
    t0 = one_pass[0][1]
    cfg = SyncConfig(slop=0.06, timeouts={'depth': 0.5, 'lidar': 0.5, 'event': 0.5})
    ref = [(st.stamp_ns, st.stamps) for _, st in run(ModalitySynchronizer(cfg), one_pass)]
    for latency in ({}, {'rgb': 0.08}, {'lidar': 0.15, 'depth': 0.05}):
        # playback time runs on while stamps start over; each topic has its own latency
        arrivals = []
        for loop in (0, 1):
            for n, (mod, s, _) in enumerate(one_pass):
                t = (s - t0) / S + loop * (duration + 0.01) + latency.get(mod, 0.0)
                arrivals.append((t, loop, n, (mod, s, (mod, s, loop))))
        arrivals.sort()
        events = [e for *_, e in arrivals]
        sync = ModalitySynchronizer(cfg)
        out = run(sync, events)
        assert sync.backward_jumps == 1
        passes = []
        for _, st in out:  # never a mix of the two passes: the caches were cleared
            (loop,) = {msg[2] for msg in st.messages.values()}
            passes.append(loop)
        assert passes == sorted(passes)  # the first pass ends before the second begins
        first = [(st.stamp_ns, st.stamps) for (_, st), k in zip(out, passes, strict=True) if not k]
        second = [(st.stamp_ns, st.stamps) for (_, st), k in zip(out, passes, strict=True) if k]
        assert second == ref  # output resumes and repeats the first pass exactly
        assert len(first) >= len(ref) - 3 and first[:len(ref) - 3] == ref[:len(ref) - 3]
        st = sync.states()
        # only the tail of the first pass is lost: pivots still waiting for a late topic when
        # the loop came (at most its latency's worth) and that topic's stragglers
        assert sum(s.dropped_old for s in st.values()) <= 2 and sync.stats()['cleared'] <= 6
        assert all(s.state == 'ok' for s in st.values())


def test_states_report_rates_ages_and_counts() -> None:
    rates = {'rgb': 30.0, 'depth': 15.0, 'lidar': 10.0, 'event': 20.0}
    events = make_stream({k: v for k, v in rates.items() if k != 'event'}, start=1.0,
                         duration=3.0, jitter=0.001, seed=6)
    cfg = SyncConfig(timeouts={'depth': 0.3, 'lidar': 0.3, 'event': 0.3})
    sync = ModalitySynchronizer(cfg)
    out = [st for _, st in run(sync, events)]
    assert len(out) > 80 and all(s.missing == frozenset({'event'}) for s in out[10:])
    st = sync.states()
    for mod in ('rgb', 'depth', 'lidar'):
        assert st[mod].rate_hz == pytest.approx(rates[mod], rel=0.03)
        assert st[mod].received == sum(1 for m, _, _ in events if m == mod)
        assert st[mod].state == 'ok' and st[mod].alive
        assert 0 <= st[mod].age_s < 1.0 / rates[mod] + 0.01
        assert st[mod].emitted == sum(1 for s in out if mod in s.messages)
    assert st['event'].state == 'missing' and st['event'].rate_hz is None
    assert st['event'].age_s is None and st['event'].emitted == 0
    assert st['rgb'].required and not st['depth'].required
    assert st['rgb'].emitted == len(out) == sync.sets_emitted
    sync.reset()
    assert all(v == 0 for v in sync.cache_sizes().values())
    assert all(s.state == 'missing' for s in sync.states().values())
    assert sync.states()['rgb'].received == st['rgb'].received  # counters survive reset


def test_million_messages_keep_memory_bounded() -> None:
    """1e6 adds in adversarial patterns: caches never exceed queue_size, heap does not grow."""
    qs = 10
    cfg = SyncConfig(queue_size=qs, timeouts={'depth': 0.3, 'event': 0.3})  # lidar: no timeout
    sync = ModalitySynchronizer(cfg)
    add = sync.add
    rng = random.Random(7)
    msg = object()
    one_second = [(mod, s) for mod, s, _ in make_stream(
        {'rgb': 30.0, 'depth': 15.0, 'lidar': 10.0, 'event': 20.0}, 0.0, 1.0, 0.002, seed=7)]
    clock = [10 * S]

    def segment(n: int, kind: int) -> None:
        t = clock[0]
        if kind == 0:  # normal 4-topic traffic
            k = 0
            while k < n:
                for mod, s in one_second[:n - k]:
                    add(mod, t + s, msg)
                k += len(one_second)
                t += S
        elif kind == 1:  # partners flood, no pivot
            for k in range(n):
                add(MODS4[1 + k % 3], t + k * MS, msg)
            t += n * MS
        elif kind == 2:  # pivots only: lidar (no timeout) never comes, pivots are forced out
            for k in range(n):
                add('rgb', t + k * 33 * MS, msg)
            t += n * 33 * MS
        else:  # random stamps and modalities: out of order, drops, backward jumps
            for _ in range(n):
                add(MODS4[rng.randrange(4)], t + rng.randrange(0, 3 * S), msg)
            t += 3 * S
        clock[0] = t + S

    total = 0
    for _round in range(3):  # the bulk, untraced (tracemalloc slows every allocation down)
        for kind in range(4):
            segment(70_000, kind)
            total += 70_000
            assert max(sync.cache_sizes().values()) <= qs
    segment(1_000_000 - total - 2 * 4 * 15_000, 0)
    tracemalloc.start()  # then watch the heap over every pattern, twice
    try:
        base = tracemalloc.get_traced_memory()[0]
        peaks = []
        for _round in range(2):
            for kind in range(4):
                segment(15_000, kind)
                assert max(sync.cache_sizes().values()) <= qs
                peaks.append(tracemalloc.get_traced_memory()[1] - base)
                tracemalloc.reset_peak()
        grown = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert sum(s.received for s in sync.states().values()) == 1_000_000
    # extra heap while streaming stays small, does not grow round after round, nor net
    assert max(peaks) < 500_000, peaks
    assert max(peaks[4:]) <= max(peaks[:4]) * 1.5 + 20_000, peaks
    assert grown < 20_000, grown
    stats = sync.stats()
    assert stats['forced'] > 0 and sync.backward_jumps > 0 and stats['sets_emitted'] > 100_000
    assert stats['pending'] <= qs


# ----------------------------------------------------------------------------- strict mode
def test_strict_mode_equals_approximate_time_synchronizer_reference() -> None:
    rng = random.Random(1234)
    total_sets = 0
    odd_cases = 0
    for _case in range(400):
        mods, slop, qs, stream = random_strict_case(rng)
        ref = ApproxTimeReference(len(mods), qs, slop)
        sync = ModalitySynchronizer(SyncConfig.strict_mode(mods, slop=slop, queue_size=qs))
        index = {m: i for i, m in enumerate(mods)}
        prev = None
        for mod, s, msg in stream:
            want = ref.add(index[mod], s, msg)
            got = [tuple(st.messages[m] for m in mods) for st in sync.add(mod, s, msg)]
            assert got == want, (mods, slop, qs, mod, s)
            for combo in want:
                total_sets += 1
                stamp = combo[0][1]
                if prev is not None and stamp < prev:
                    odd_cases += 1  # the reference emits out of stamp order sometimes
                prev = stamp
        assert max(sync.cache_sizes().values()) <= qs
    assert total_sets > 3000
    assert odd_cases > 0  # the randomised inputs reached the reference's odd corners


def test_strict_mode_consumes_partners_unlike_pivot_mode() -> None:
    events = make_stream({'rgb': 30.0, 'lidar': 10.0}, start=1.0, duration=2.0, seed=8)
    strict = ModalitySynchronizer(SyncConfig.strict_mode(('rgb', 'lidar'), slop=0.05))
    pivot = ModalitySynchronizer(SyncConfig(modalities=('rgb', 'lidar'), slop=0.05))
    n_strict = len(run(strict, events))
    n_pivot = len(run(pivot, events))
    assert n_strict == 20  # one set per lidar scan: matched messages are consumed
    assert n_pivot >= 58  # one per camera frame
    st = strict.states()
    assert st['lidar'].emitted == 20 and st['rgb'].dropped_overflow > 0
    assert strict.blocked_reason is None
