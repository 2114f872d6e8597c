"""What the perception node reports on /diagnostics, built without ROS.

`PerceptionStats` collects counters and timings from the callbacks and the worker; `statuses`
turns them plus the synchroniser's per-modality states into plain records (name, level, message,
key/values) that the node copies into diagnostic_msgs/DiagnosticArray. Levels follow
diagnostic_msgs: 0 OK, 1 WARN, 2 ERROR.
"""

from __future__ import annotations

import threading
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rmseg_ros.sync.core import ModalityState

OK, WARN, ERROR = 0, 1, 2


@dataclass
class Status:
    name: str
    level: int
    message: str
    values: dict[str, str] = field(default_factory=dict)


def _fmt(value: Any) -> str:
    if value is None:
        return ''
    if isinstance(value, float):
        return f'{value:.3f}'
    return str(value)


#: Stages of one output's latency, in order: the pivot's stamp -> its set complete in the node
#: (driver, transport, synchroniser; by the node's clock), waiting for the worker, decoding and
#: building the model input, the model, labels -> outputs, serialising and publishing.
STAGES = ('receive', 'wait', 'preprocess', 'forward', 'postprocess', 'publish')
STATS_WINDOW = 200  # outputs that the medians in /diagnostics are taken over


class PerceptionStats:
    """Thread-safe counters and recent timings (bounded windows)."""

    def __init__(self, window: int = STATS_WINDOW) -> None:
        self._lock = threading.Lock()
        self.problems: Counter[tuple[str, str]] = Counter()  # (modality, kind) -> count
        self.latency_ms: deque[float] = deque(maxlen=window)  # pivot arrival -> published
        # where the latency goes, per output: STAGES (wait = arrival -> worker start)
        self.stage_ms: dict[str, deque[float]] = {k: deque(maxlen=window) for k in STAGES}
        self.published: deque[float] = deque(maxlen=window)  # monotonic times of outputs
        self.subsets: Counter[str] = Counter()
        self.last_subset: tuple[str, ...] = ()
        self.last_missing: tuple[str, ...] = ()
        self.last_degraded: dict[str, str] = {}
        self.outputs = 0
        self.unsubscribed = 0  # sets not processed because nobody listened

    def problem(self, modality: str, kind: str) -> None:
        with self._lock:
            self.problems[(modality, kind)] += 1

    def output(self, now: float, latency_ms: float, stage_ms: dict[str, float],
               used: tuple[str, ...], missing: tuple[str, ...], degraded: dict[str, str]) -> None:
        """One published result; stage_ms maps (some of) STAGES to milliseconds."""
        with self._lock:
            self.outputs += 1
            self.published.append(now)
            self.latency_ms.append(latency_ms)
            for stage, ms in stage_ms.items():
                self.stage_ms[stage].append(ms)
            name = '+'.join(used)
            self.subsets[name] += 1
            self.last_subset, self.last_missing = used, missing
            self.last_degraded = dict(degraded)

    def rate_hz(self, now: float, horizon_s: float = 5.0) -> float:
        with self._lock:
            recent = [t for t in self.published if now - t <= horizon_s]
        if len(recent) < 2:
            return 0.0
        return (len(recent) - 1) / max(recent[-1] - recent[0], 1e-9)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            lat = np.array(self.latency_ms) if self.latency_ms else None
            stages = {f'{k}_p50_ms': float(np.median(v)) if v else None
                      for k, v in self.stage_ms.items()}
            return {
                'outputs': self.outputs,
                'latency_p50_ms': None if lat is None else float(np.percentile(lat, 50)),
                'latency_p95_ms': None if lat is None else float(np.percentile(lat, 95)),
                **stages,
                'subsets': dict(self.subsets),
                'last_subset': self.last_subset,
                'last_missing': self.last_missing,
                'last_degraded': dict(self.last_degraded),
                'problems': {f'{m}.{k}': n for (m, k), n in sorted(self.problems.items())},
                'unsubscribed': self.unsubscribed,
            }


def statuses(node_name: str, states: dict[str, ModalityState], snap: dict[str, Any],
             extra: dict[str, Any], blocked_reason: str | None, enabled: bool) -> list[Status]:
    """One status for the pipeline, one per modality."""
    out: list[Status] = []
    degraded = snap['last_degraded']
    for name, st in states.items():
        problems = {k.split('.', 1)[1]: n for k, n in snap['problems'].items()
                    if k.startswith(name + '.')}
        for kind, n in st.rejected.items():  # the synchroniser's drops, by exact reason
            problems[kind] = problems.get(kind, 0) + n
        state = st.state
        if state == 'ok' and name in degraded:
            state = 'degraded'
        level = OK if state == 'ok' else (ERROR if st.required and state != 'degraded'
                                          else WARN)
        message = state if state != 'degraded' else f'degraded: {degraded[name]}'
        values = {'state': state, 'age_s': _fmt(st.age_s), 'rate_hz': _fmt(st.rate_hz),
                  'received': _fmt(st.received), 'used_in_sets': _fmt(st.emitted),
                  'dropped_old': _fmt(st.dropped_old),
                  'dropped_overflow': _fmt(st.dropped_overflow),
                  'required': _fmt(st.required)}
        values.update({f'rejected.{k}': str(n) for k, n in problems.items()})
        out.append(Status(f'{node_name}: modality {name}', level, message, values))
    if not enabled:
        level, message = WARN, 'disabled (set_enabled false)'
    elif blocked_reason:
        level, message = ERROR, f'no output: {blocked_reason}'
    elif snap['outputs'] == 0:
        level, message = WARN, 'waiting for the first synchronised set'
    else:
        used = '+'.join(snap['last_subset'])
        level = OK if not snap['last_missing'] else WARN
        message = f'running on {used}' + (f" (missing {'+'.join(snap['last_missing'])})"
                                          if snap['last_missing'] else '')
    values = {'subset_used': '+'.join(snap['last_subset']),
              'missing': '+'.join(snap['last_missing']),
              'latency_p50_ms': _fmt(snap['latency_p50_ms']),
              'latency_p95_ms': _fmt(snap['latency_p95_ms']),
              **{f'{k}_p50_ms': _fmt(snap[f'{k}_p50_ms']) for k in STAGES},
              'outputs': _fmt(snap['outputs']),
              'unsubscribed_sets': _fmt(snap['unsubscribed']),
              'blocked_reason': blocked_reason or '',
              'enabled': _fmt(enabled)}
    values.update({k: _fmt(v) for k, v in extra.items()})
    values.update({f'subset_count.{k}': str(n) for k, n in snap['subsets'].items()})
    rejected = dict(snap['problems'])
    for name, st in states.items():
        for kind, n in st.rejected.items():
            rejected[f'{name}.{kind}'] = rejected.get(f'{name}.{kind}', 0) + n
    values.update({f'rejected.{k}': str(n) for k, n in sorted(rejected.items())})
    out.insert(0, Status(f'{node_name}: pipeline', level, message, values))
    return out
