"""Stamps (issue 21 item 6): one bad stamp never clears the synchroniser, outputs never go back
in time except once at a real clock jump (a bag loop, confirmed by the stamps that follow), and
every rejection names its reason exactly (negative, zero, older than the last output, ...)."""

from __future__ import annotations

import pytest

from rmseg_ros.pipeline.config import InputCheckConfig
from rmseg_ros.pipeline.diagnostics import PerceptionStats, statuses
from rmseg_ros.pipeline.perception import check_stamp, stamp_problem
from rmseg_ros.sync.core import ModalitySynchronizer, SyncConfig
from rmseg_ros.sync.failover import FailoverSynchronizer

S = 1_000_000_000
MS = 1_000_000
T0 = 1_700_000_000 * S


def _stream(seconds: float, start: int = T0, rates=(('rgb', 30), ('depth', 15), ('lidar', 10))
            ) -> list[tuple[str, int]]:
    events = []
    for mod, hz in rates:
        for k in range(int(seconds * hz)):
            events.append((start + round(k * S / hz) + 3 * MS * (mod != 'rgb'), mod))
    return [(mod, s) for s, mod in sorted(events)]


def _feed(sync, events) -> list[tuple[int, dict[str, int]]]:
    out = []
    for mod, s in events:
        out += [(st.stamp_ns, dict(st.stamps)) for st in sync.add(mod, s, (mod, s))]
    return out


def _config(**kw) -> SyncConfig:
    return SyncConfig(modalities=('rgb', 'depth', 'lidar'), slop=0.05,
                      timeouts={'depth': 0.5, 'lidar': 0.5}, **kw)


def test_stamp_problems_name_the_reason_exactly():
    cfg = InputCheckConfig(max_future_s=2.0, max_age_s=5.0)
    now = T0
    assert stamp_problem(-S, now, cfg) == ('stamp_negative', 'stamp negative (-1.000 s)')
    assert stamp_problem(-1, now, cfg)[0] == 'stamp_negative'
    assert 'zero' not in check_stamp(-1, now, cfg)  # it was reported as "stamp is zero"
    assert stamp_problem(0, now, cfg) == ('stamp_zero', 'stamp zero (unset header)')
    assert stamp_problem(now + 3 * S, now, cfg)[0] == 'stamp_in_future'
    assert stamp_problem(now - 6 * S, now, cfg)[0] == 'stamp_too_old'
    assert stamp_problem(now, now, cfg) is None


@pytest.mark.parametrize('stray', [1 * S, T0 - 5 * S, T0 - 2 * S, -7 * S])
@pytest.mark.parametrize('modality', ['rgb', 'depth'])
def test_a_stray_old_stamp_is_dropped_and_clears_nothing(stray, modality):
    """Single messages stamped 1970-01-01T00:00:01, seconds back, or negative, mixed into a
    stream: the output is exactly that of the stream without them (no cache cleared, nothing
    stamped back in time), each stray counted once as `stamp_jumped_back`."""
    events = _stream(3.0)
    ref = _feed(ModalitySynchronizer(_config()), events)
    mixed = list(events)
    for k in (20, 41, 42, 90, 150):  # 41 and 42: two strays in a row, still fewer than 3
        mixed.insert(k, (modality, stray + k * MS))
    sync = ModalitySynchronizer(_config())
    out = _feed(sync, mixed)
    assert out == ref
    assert sync.backward_jumps == 0 and sync.stats()['cleared'] == 0
    assert sync.states()[modality].rejected == {'stamp_jumped_back': 5}
    stamps = [s for s, _ in out]
    assert stamps == sorted(set(stamps))


def test_stamps_older_than_the_last_output_are_dropped_with_that_reason():
    sync = ModalitySynchronizer(_config())
    out = _feed(sync, _stream(1.0))
    last = out[-1][0]
    assert sync.add('rgb', last - 10 * MS, 'late') == []
    assert sync.last_rejection.startswith('message dropped: stamp older than last output')
    assert sync.add('depth', last - 500 * MS, 'late') == []
    assert 'older than the last output' in sync.last_rejection
    sync.add('depth', last + 40 * MS, 'ok')
    assert sync.last_rejection is None
    st = sync.states()
    assert st['rgb'].rejected == {'stamp_older_than_last_output': 1}
    assert st['depth'].rejected == {'stamp_older_than_last_output': 1}


def test_a_bag_loop_resets_once_and_loses_no_set_of_the_new_pass():
    """Stamps start over (a looping bag): confirmed by the pivots that follow, one reset, and
    the second pass gives the same sets as the first, even with strays in between."""
    one = _stream(2.0)
    ref = _feed(ModalitySynchronizer(_config()), one)
    events = [*one, ('rgb', T0 + 9 * S), *one]  # one stray stamp 7 s ahead before the loop
    sync = ModalitySynchronizer(_config())
    out = _feed(sync, events)
    assert sync.backward_jumps == 1
    k = next(i for i in range(1, len(out)) if out[i][0] < out[i - 1][0])  # the one step back
    assert all(a[0] < b[0] for a, b in zip(out[k:], out[k + 1:], strict=False))
    assert out[k:] == ref


def test_failover_keeps_output_in_time_order_through_strays():
    """The failover wrapper reset its last output stamp on any message stamped a second back,
    so a stray on the fallback pivot could come out after newer sets."""
    cfg = SyncConfig(modalities=('rgb', 'depth', 'lidar'), pivot='rgb', slop=0.05,
                     timeouts={'rgb': 0.3, 'depth': 0.3, 'lidar': 0.3}, required=(),
                     rejoin_count=2, pivot_fallback=('depth',))
    sync = FailoverSynchronizer(cfg)
    events = [e for e in _stream(3.0) if not (e[0] == 'rgb' and e[1] > T0 + S)]  # camera dies
    at = next(i for i, (_, s) in enumerate(events) if s > T0 + 1.6 * S)
    events[at:at] = [('depth', 2 * S), ('lidar', 3 * S)]  # strays, depth the active pivot now
    stamps = [s for s, _ in _feed(sync, events)]
    assert sync.active_pivot == 'depth'
    assert stamps == sorted(set(stamps)) and min(stamps) >= T0
    assert sync.backward_jumps == 0


def test_diagnostics_name_the_synchroniser_drops_per_modality():
    sync = ModalitySynchronizer(_config())
    _feed(sync, _stream(1.0))
    sync.add('rgb', 5 * S, 'stray')
    _feed(sync, [('rgb', T0 + 2 * S)])
    stats = PerceptionStats()
    stats.problem('rgb', 'stamp_negative')
    out = statuses('perception', sync.states(), stats.snapshot(), {}, None, True)
    pipeline, rgb = out[0], out[1]
    assert rgb.values['rejected.stamp_jumped_back'] == '1'
    assert rgb.values['rejected.stamp_negative'] == '1'
    assert pipeline.values['rejected.rgb.stamp_jumped_back'] == '1'
    assert pipeline.values['rejected.rgb.stamp_negative'] == '1'
