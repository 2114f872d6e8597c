"""Pivot failover: output continues from the other modalities when an optional camera dies."""

from __future__ import annotations

import pytest

from rmseg_ros.sync.core import SyncConfig
from rmseg_ros.sync.failover import FailoverSynchronizer

MS = 1_000_000
T0 = 1_700_000_000 * 1_000_000_000


def _config(required=(), fallback=('lidar', 'depth')) -> SyncConfig:
    return SyncConfig(modalities=('rgb', 'depth', 'lidar'), pivot='rgb', slop=0.05,
                      queue_size=10, timeouts={'rgb': 0.3, 'depth': 0.3, 'lidar': 0.3},
                      required=required, rejoin_count=2, pivot_fallback=fallback)


def _stream(sync, t_from_ms, t_to_ms, rates_hz, out):
    """Interleave messages of the given modalities in stamp order, feed them, collect sets."""
    events = []
    for mod, hz in rates_hz.items():
        period = round(1000 / hz)
        t = t_from_ms - t_from_ms % period + (period if t_from_ms % period else 0)
        while t < t_to_ms:
            events.append((t, mod))
            t += period
    for t, mod in sorted(events):
        out.extend(sync.add(mod, T0 + t * MS, (mod, t)))


def test_optional_camera_fails_over_to_lidar_and_back():
    sync = FailoverSynchronizer(_config())
    out = []
    _stream(sync, 0, 1000, {'rgb': 20, 'lidar': 10, 'depth': 10}, out)
    assert out and all(s.messages['rgb'][0] == 'rgb' for s in out)
    n_cam = len(out)
    assert sync.active_pivot == 'rgb'
    # the camera dies: after its 0.3 s timeout LiDAR drives the output
    _stream(sync, 1000, 3000, {'lidar': 10, 'depth': 10}, out)
    after = [s for s in out[n_cam:] if s.stamp_ns > T0 + 1050 * MS]  # past the slop
    assert sync.active_pivot == 'lidar'
    assert len(after) >= 14  # ~1.7 s of 10 Hz LiDAR after the timeout
    assert all('rgb' in s.missing and 'lidar' in s.messages for s in after)
    assert all(s.stamp_ns == s.stamps['lidar'] for s in after)
    assert sync.states()['rgb'].state == 'stale'
    assert sync.blocked_reason is None
    # the camera comes back: it drives the output again
    _stream(sync, 3000, 4000, {'rgb': 20, 'lidar': 10, 'depth': 10}, out)
    assert sync.active_pivot == 'rgb'
    assert out[-1].stamps.get('rgb') == out[-1].stamp_ns
    stamps = [s.stamp_ns for s in out]
    assert stamps == sorted(set(stamps)), 'output stamps must strictly increase across switches'
    assert sync.stats()['pivot_switches'] == 2


def test_required_camera_stops_output_and_says_why():
    sync = FailoverSynchronizer(_config(required=('rgb',)))
    out = []
    _stream(sync, 0, 1000, {'rgb': 20, 'lidar': 10, 'depth': 10}, out)
    n = len(out)
    _stream(sync, 1000, 3000, {'lidar': 10, 'depth': 10}, out)
    assert len(out) - n <= 1  # at most the last pivot still waiting for its partners
    assert sync.pivots == ('rgb',)
    reason = sync.blocked_reason
    assert reason is not None and "'rgb'" in reason and 'stale' in reason


def test_camera_never_seen_falls_back_after_its_timeout():
    sync = FailoverSynchronizer(_config())
    out = []
    _stream(sync, 0, 2000, {'lidar': 10, 'depth': 10}, out)
    assert sync.active_pivot == 'lidar'
    # the LiDAR frames that waited for the camera's timeout come out too: nothing is lost
    assert [s.stamp_ns for s in out] == [T0 + k * 100 * MS for k in range(20)]
    assert all(s.missing == {'rgb'} for s in out)


def test_second_fallback_when_lidar_is_dead_too():
    sync = FailoverSynchronizer(_config())
    out = []
    _stream(sync, 0, 2000, {'depth': 10}, out)
    assert sync.active_pivot == 'depth'
    assert out and all(s.missing == {'rgb', 'lidar'} for s in out)


def test_memory_stays_bounded():
    sync = FailoverSynchronizer(_config())
    out = []
    _stream(sync, 0, 20_000, {'lidar': 50, 'depth': 30}, out)
    assert all(n <= 10 for s in sync._syncs for n in s.cache_sizes().values())


def test_fallback_must_not_name_the_pivot():
    with pytest.raises(ValueError, match='pivot_fallback'):
        _config(fallback=('rgb',))
    with pytest.raises(ValueError, match='pivot_fallback'):
        _config(fallback=('lidar', 'lidar'))


def test_no_wait_mode_emits_on_the_pivot_without_waiting_for_a_later_partner():
    from rmseg_ros.sync.core import ModalitySynchronizer

    def run(wait: bool) -> list:
        cfg = SyncConfig(modalities=('rgb', 'lidar'), pivot='rgb', slop=0.1, queue_size=10,
                         timeouts={'lidar': 0.5}, required=('rgb',), wait_for_closer=wait)
        sync = ModalitySynchronizer(cfg)
        sync.add('lidar', T0, 'l0')
        return sync.add('rgb', T0 + 60 * MS, 'c0')  # lidar at +100 ms would be closer

    assert run(wait=True) == []  # waits: a closer LiDAR scan may still come
    out = run(wait=False)
    assert len(out) == 1 and out[0].messages['lidar'] == 'l0'
