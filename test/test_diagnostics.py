"""PerceptionStats / statuses: the latency breakdown and the pipeline status the node publishes."""

from __future__ import annotations

import math

from rmseg_ros.pipeline.diagnostics import ERROR, OK, STAGES, WARN, PerceptionStats, statuses
from rmseg_ros.sync.core import ModalityState


def _state(name: str, state: str = 'ok', required: bool = False) -> ModalityState:
    return ModalityState(name=name, state=state, age_s=0.01, rate_hz=30.0, received=10,
                         dropped_old=0, dropped_overflow=0, emitted=9, required=required,
                         alive=state == 'ok', jumps=0)


def test_stage_medians_and_latency_percentiles():
    stats = PerceptionStats(window=4)
    for i in range(6):  # the window keeps the last 4 outputs: i = 2..5
        stats.output(float(i), latency_ms=100.0 + i,
                     stage_ms={'wait': float(i), 'forward': 40.0 + i, 'publish': 1.0},
                     used=('rgb', 'depth'), missing=('lidar',), degraded={})
    snap = stats.snapshot()
    assert snap['outputs'] == 6
    assert snap['wait_p50_ms'] == 3.5 and snap['forward_p50_ms'] == 43.5
    assert snap['publish_p50_ms'] == 1.0 and snap['preprocess_p50_ms'] is None
    assert math.isclose(snap['latency_p50_ms'], 103.5)
    assert snap['subsets'] == {'rgb+depth': 6}
    assert math.isclose(stats.rate_hz(5.0), 1.0)


def test_pipeline_status_carries_every_stage_and_the_missing_modality():
    stats = PerceptionStats()
    stats.output(1.0, 50.0, {k: 1.0 + j for j, k in enumerate(STAGES)}, ('rgb',), ('lidar',), {})
    out = statuses('perception', {'rgb': _state('rgb'), 'lidar': _state('lidar', 'stale')},
                   stats.snapshot(), {'backend': 'onnx'}, None, True)
    pipeline, rgb, lidar = out
    assert pipeline.level == WARN and 'missing lidar' in pipeline.message
    for j, k in enumerate(STAGES):
        assert pipeline.values[f'{k}_p50_ms'] == f'{1.0 + j:.3f}'
    assert pipeline.values['backend'] == 'onnx'
    assert rgb.level == OK and lidar.level == WARN and lidar.message == 'stale'
    blocked = statuses('perception', {'rgb': _state('rgb', 'stale', required=True)},
                       stats.snapshot(), {}, "required modality 'rgb' is stale", True)
    assert blocked[0].level == ERROR and blocked[1].level == ERROR
