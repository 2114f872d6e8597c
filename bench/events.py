"""Event-camera packet decoding benchmark (rmseg_ros.frontend.evt3).

Prints (DESIGN.md section 7 format):
  evt3_decode_mevents_per_s: decoded change-detection events per second (millions), EVT 3.0
                   stream cut into 64 KiB packets as a driver publishes them, decoded by one
                   Evt3Decoder in order (state carried between packets), median of runs
The stream is sensor-like: a time-low per microsecond, a time-high every 4096 us, each tick a
few rows, half of them vector rows (VECT_BASE_X + VECT_12 / VECT_8 words, about half the bits
set) and half single EVT_ADDR_X events, both polarities. Target: >= 20 M events/s.
Exits non-zero when the decoded count differs from the count the stream was built with.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np

from rmseg_ros.frontend.evt3 import Evt3Decoder


def sensor_stream(ticks: int, seed: int = 0) -> tuple[np.ndarray, int]:
    """(uint16 words, number of events they hold)."""
    rng = np.random.default_rng(seed)
    words: list[int] = []
    n_events = 0
    for tick in range(ticks):
        if tick % 4096 == 0:
            words.append(0x8000 | ((tick >> 12) & 0xFFF))
        words.append(0x6000 | (tick & 0xFFF))
        for y in rng.integers(0, 720, 4):
            words.append(int(y))
            pol = int(rng.integers(0, 2)) << 11
            if rng.random() < 0.5:
                words.append(0x3000 | pol | int(rng.integers(0, 1200)))
                for _ in range(int(rng.integers(2, 5))):
                    mask = int(rng.integers(1, 4096))
                    words.append(0x4000 | mask)
                    n_events += mask.bit_count()
                mask = int(rng.integers(1, 256))
                words.append(0x5000 | mask)
                n_events += mask.bit_count()
            else:
                for _ in range(int(rng.integers(1, 4))):
                    words.append(0x2000 | pol | int(rng.integers(0, 1280)))
                    n_events += 1
    return np.array(words, dtype='<u2'), n_events


def bench(words: np.ndarray, expected: int, packet_bytes: int, repeat: int) -> float:
    data = words.tobytes()
    packets = [data[i:i + packet_bytes] for i in range(0, len(data), packet_bytes)]
    rates = []
    for _ in range(repeat):
        decoder = Evt3Decoder(1280, 720)
        t0 = time.perf_counter()
        n = sum(len(decoder.decode(p)) for p in packets)
        rates.append(n / (time.perf_counter() - t0))
        if n != expected:
            raise RuntimeError(f'decoded {n} events, the stream holds {expected}')
    return statistics.median(rates) / 1e6


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--ticks', type=int, default=100_000, help='microseconds of stream')
    ap.add_argument('--packet-bytes', type=int, default=65536)
    ap.add_argument('--repeat', type=int, default=5)
    opts = ap.parse_args(argv)
    try:
        words, expected = sensor_stream(opts.ticks)
        rate = bench(words, expected, opts.packet_bytes, opts.repeat)
    except Exception as exc:  # a figure that could not be measured is an error
        print(f'bench/events.py: {type(exc).__name__}: {exc}', file=sys.stderr)
        return 1
    print(f'evt3_decode_mevents_per_s: {rate:.1f} Mev/s')
    return 0


if __name__ == '__main__':
    sys.exit(main())
