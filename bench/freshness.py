"""The perception worker's scheduling (rmseg_ros.pipeline.freshness) on a simulated clock.

A camera delivers a complete set every `--period-ms`; a worker whose forward time is F ms (normal
jitter, `--jitter` relative std) takes the newest set when it is free (latest-only), or, with the
FreshnessPolicy, may hold on for the next one. The real FreshnessPolicy decides; only the clock is
simulated, so the figures are exact for the policy and free of host noise. Printed per F and
policy (DESIGN.md section 7 format):
  freshness_<policy>_F<F>_rate_hz        outputs per second
  freshness_<policy>_F<F>_wait_p50_ms    median time a processed set waited for the worker
  freshness_<policy>_F<F>_age_ms         mean age of the newest output over time
"""

from __future__ import annotations

import argparse

import numpy as np

from rmseg_ros.pipeline.freshness import FreshnessConfig, FreshnessPolicy, mean_age_of_information


def simulate(forward_ms: float, period_ms: float, jitter: float, policy: FreshnessPolicy | None,
             frames: int, seed: int = 0) -> tuple[float, float, float]:
    """-> (rate Hz, median wait ms, mean age of information ms)."""
    rng = np.random.default_rng(seed)
    arrivals = np.arange(frames) * period_ms / 1e3
    t, nxt, fed = 0.0, 0, 0  # clock; next set not yet taken; arrivals told to the policy
    waits, published, data = [], [], []
    while True:
        newest = int(np.searchsorted(arrivals, t + 1e-12, side='right')) - 1
        if newest < nxt:  # nothing waiting: idle until the next set
            t, newest = arrivals[nxt], nxt
        if newest >= frames - 2:
            break
        if policy is not None:
            while arrivals[fed] <= t:
                policy.arrived(arrivals[fed])
                fed += 1
            hold = policy.hold_until(arrivals[newest], t)
            if hold is not None and arrivals[newest + 1] <= hold:  # a newer set came in time
                newest += 1
                t = arrivals[newest]
                policy.arrived(t)
                fed += 1
            elif hold is not None:  # none came: the waiting set after all
                t = hold
            policy.started(t)
        waits.append(t - arrivals[newest])
        t += max(forward_ms * (1 + jitter * rng.standard_normal()), 0.5 * forward_ms) / 1e3
        published.append(t)
        data.append(arrivals[newest])
        nxt = newest + 1
    span = published[-1] - published[0]
    return ((len(published) - 1) / span, float(np.median(waits)) * 1e3,
            mean_age_of_information(np.array(published), np.array(data)) * 1e3)


def main() -> int:
    defaults = FreshnessConfig()
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--forward-ms', type=float, nargs='+', default=[20, 31, 34, 38, 44, 50, 60],
                    help='forward (worker busy) times to simulate')
    ap.add_argument('--period-ms', type=float, default=1000 / 30, help='camera period')
    ap.add_argument('--jitter', type=float, default=0.15, help='relative std of forward time')
    ap.add_argument('--max-wait-ms', type=float, default=defaults.max_wait_s * 1e3)
    ap.add_argument('--min-rate-hz', type=float, default=defaults.min_rate_hz)
    ap.add_argument('--frames', type=int, default=3000, help='camera frames per simulation')
    opts = ap.parse_args()
    cfg = FreshnessConfig(max_wait_s=opts.max_wait_ms / 1e3, min_rate_hz=opts.min_rate_hz)
    print(f'# camera {opts.period_ms:.1f} ms, jitter {opts.jitter:.0%}, policy max_wait '
          f'{opts.max_wait_ms:g} ms, min_rate {opts.min_rate_hz:g} Hz')
    for forward in opts.forward_ms:
        for name, policy in (('latest', None), ('fresh', FreshnessPolicy(cfg))):
            rate, wait, age = simulate(forward, opts.period_ms, opts.jitter, policy, opts.frames)
            key = f'freshness_{name}_F{forward:g}'
            print(f'{key}_rate_hz: {rate:.1f} Hz')
            print(f'{key}_wait_p50_ms: {wait:.1f} ms')
            print(f'{key}_age_ms: {age:.1f} ms')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
