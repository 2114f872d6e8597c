"""Hand-built EVT 3.0 words for the tests (pytest puts this directory on sys.path): one builder
per word type, named as in Prophesee's format description, and a plain encoder."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np


def word(code: int, payload: int) -> int:
    return (code << 12) | payload


def TH(v):  # noqa: N802 - the format's names
    return word(0x8, v)


def TL(v):  # noqa: N802
    return word(0x6, v)


def Y(y):  # noqa: N802
    return word(0x0, y)


def X(x, p):  # noqa: N802
    return word(0x2, (p << 11) | x)


def BASE(x, p):  # noqa: N802
    return word(0x3, (p << 11) | x)


def V12(mask):  # noqa: N802
    return word(0x4, mask)


def V8(mask):  # noqa: N802
    return word(0x5, mask)


def pack(words, bigendian=False) -> bytes:
    return np.array(words, '>u2' if bigendian else '<u2').tobytes()


def encode(x, y, t_us, p, state=None) -> list[int]:
    """Events in time order -> EVT_TIME_HIGH / LOW, EVT_ADDR_Y and EVT_ADDR_X words; `state`
    (a dict) carries the last time and row across calls, as a sensor's stream does."""
    state = {} if state is None else state
    words = []
    for xi, yi, ti, pi in zip(x, y, t_us, p, strict=True):
        hi, lo = (int(ti) >> 12) & 0xFFF, int(ti) & 0xFFF
        if state.get('hi') != hi:
            words.append(TH(hi))
            state['hi'], state['lo'] = hi, None
        if state.get('lo') != lo:
            words.append(TL(lo))
            state['lo'] = lo
        if state.get('y') != int(yi):
            words.append(Y(int(yi)))
            state['y'] = int(yi)
        words.append(X(int(xi), int(pi > 0)))
    return words


def packet(words, stamp_ns, width=160, height=120, encoding='evt3'):
    """An EventPacket-shaped object (the attributes rclpy's and rosbags' messages have)."""
    sec, nanosec = divmod(int(stamp_ns), 10**9)
    header = SimpleNamespace(stamp=SimpleNamespace(sec=sec, nanosec=nanosec), frame_id='ev')
    return SimpleNamespace(header=header, encoding=encoding, width=width, height=height,
                           seq=0, time_base=0, is_bigendian=False,
                           events=np.frombuffer(pack(words), np.uint8))
