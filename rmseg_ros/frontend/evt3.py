"""Prophesee EVT 3.0 event streams (event_camera_msgs/EventPacket, encoding 'evt3') -> numpy
x, y, t, p arrays, vectorised, without ROS.

EVT 3.0 is a stream of 16-bit words (little-endian from the sensor); the top 4 bits are the
word type and the stream is stateful: a word only says what changed. EVT_ADDR_Y (0x0) sets the
row; EVT_ADDR_X (0x2) is one event at (x, row) with its polarity (bit 11); VECT_BASE_X (0x3)
sets the column and polarity of the vector words that follow; VECT_12 (0x4) / VECT_8 (0x5) are
12 / 8 columns from there, one bit per pixel, and move the column on by 12 / 8; EVT_TIME_LOW
(0x6) and EVT_TIME_HIGH (0x8) set the low and high 12 bits of a 24-bit microsecond time, which
wraps every 2^24 us (~16.8 s): a time-high that goes back by more than ROLLOVER_TOLERANCE steps
is a wrap (smaller steps back are sensor jitter, as in Metavision's and event_camera_codecs'
decoders). EXT_TRIGGER (0xA), OTHERS (0xE) and CONTINUED_4 / CONTINUED_12 (0x7 / 0xF) carry no
change-detection events and are skipped. Like those decoders, nothing is emitted until a
time-high and then a time-low have been seen.

Why vectorised: a driver sends millions of events per second; a word-by-word Python loop would
need a core per camera. Each state (row, time, vector column, polarity) is found for every event
word from a running count of the words that set it, and vector masks expand with unpackbits +
nonzero over 16 bits per word, so stream order is kept. The state carries over between packets
(`Evt3Decoder` per topic, fed in arrival order), as a driver's packets split the stream anywhere.

Other EventPacket encodings (evt2, evt2.1, libcaer_cmp, libcaer, mono, trigger) are not
supported: `decode_packet` refuses them by name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

EVT_ADDR_Y, EVT_ADDR_X, VECT_BASE_X, VECT_12, VECT_8 = 0x0, 0x2, 0x3, 0x4, 0x5
EVT_TIME_LOW, CONTINUED_4, EVT_TIME_HIGH, EXT_TRIGGER, OTHERS, CONTINUED_12 = (
    0x6, 0x7, 0x8, 0xA, 0xE, 0xF)
ROLLOVER_TOLERANCE = 10  # time-high steps back that are jitter, not a wrap
TIME_LOOP_US = 1 << 24
MAX_SENSOR_SIDE = 2048  # 11-bit addresses
SUPPORTED_ENCODINGS = ('evt3',)


@dataclass
class Evt3Events:
    """Decoded change-detection events in stream order; t in sensor microseconds (wraps
    unrolled), p 1 = ON (brightness up), 0 = OFF."""

    x: np.ndarray  # uint16
    y: np.ndarray  # uint16
    t_us: np.ndarray  # int64
    p: np.ndarray  # uint8
    first_time_us: int | None  # the first event's sensor time, else the time valid at the
    #                            packet's start (None: no valid time yet)

    def __len__(self) -> int:
        return len(self.x)


@dataclass
class DecodedEvents:
    """An EventPacket after decoding: what the synchroniser and front end handle in its place
    (its header, events with ROS-time stamps in ns, the sensor size)."""

    header: Any
    x: np.ndarray
    y: np.ndarray
    t_ns: np.ndarray
    p: np.ndarray
    sensor_hw: tuple[int, int]


def _at(values: np.ndarray, flag: np.ndarray, positions: np.ndarray, default: int,
        dtype: Any = np.int64) -> np.ndarray:
    """The value set by the last setter word before each position, `default` (the state
    carried in) where none is. `flag`: which words are setters; `values`: what each one set, in
    stream order. A running count of setters: cheaper than a binary search per position."""
    if not values.size:
        return np.full(positions.size, default, dtype)
    k = np.cumsum(flag, dtype=np.int32)[positions] - 1
    out = values[k].astype(dtype, copy=False)
    if positions.size and k[0] < 0:  # positions ascend: only a prefix predates every setter
        out = np.where(k >= 0, out, default).astype(dtype, copy=False)
    return out


class Evt3Decoder:
    """Stateful EVT 3.0 decoder for one stream (one topic). Events outside width x height
    (when given) are dropped, as a sensor cannot produce them."""

    def __init__(self, width: int = 0, height: int = 0) -> None:
        self.width = int(width)
        self.height = int(height)
        self.valid = False  # a time-high then a time-low seen
        self.high_seen = False
        self.high12 = 0  # last time-high payload
        self.loops = 0  # time wraps so far
        self.time_low = 0
        self.y = 0
        self.base_x = 0
        self.polarity = 0
        self.triggers = 0  # EXT_TRIGGER words seen (not decoded)

    @property
    def time_us(self) -> int:
        return self.loops * TIME_LOOP_US + (self.high12 << 12) + self.time_low

    def decode(self, data: bytes | bytearray | memoryview | np.ndarray,
               bigendian: bool = False) -> Evt3Events:
        """Decode one buffer of the stream (an odd trailing byte is ignored)."""
        raw = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) \
            else data.view(np.uint8).reshape(-1)
        words = raw[: raw.size & ~1].view('>u2' if bigendian else '<u2')
        n = words.size
        code = (words >> 12).astype(np.uint8)
        payload = words & np.uint16(0x0FFF)

        # --- time: every time word counts, valid or not
        is_hi, is_lo = code == EVT_TIME_HIGH, code == EVT_TIME_LOW
        hi_val = payload[is_hi].astype(np.int64)
        lo_val = payload[is_lo].astype(np.int64)
        prev = np.concatenate(([self.high12], hi_val)) if self.high_seen else hi_val
        wraps = np.cumsum(-np.diff(prev) > ROLLOVER_TOLERANCE)
        if not self.high_seen and hi_val.size:
            wraps = np.concatenate(([0], wraps))
        hi_full = (self.loops + wraps) * TIME_LOOP_US + (hi_val << 12)
        state_high = self.loops * TIME_LOOP_US + (self.high12 << 12)

        # --- where decoding starts: the first time-low after a time-high
        start, first_time = 0, None
        if self.valid:
            first_time = self.time_us
        else:
            lo_pos = np.flatnonzero(is_lo)
            first_hi = -1 if self.high_seen else int(np.argmax(is_hi)) if hi_val.size else n
            after = lo_pos[lo_pos > first_hi]
            start = int(after[0]) + 1 if after.size else n
            if after.size:
                self.valid = True
                at = np.array([start - 1])
                first_time = int(_at(hi_full, is_hi, at, state_high)[0]
                                 + lo_val[np.searchsorted(lo_pos, start - 1)])

        # --- per event word: row, time, column, polarity
        is_x = code == EVT_ADDR_X
        is_v12 = code == VECT_12
        is_vec = is_v12 | (code == VECT_8)
        is_y, is_b = code == EVT_ADDR_Y, code == VECT_BASE_X
        if start:  # nothing before the time is valid sets a row, a column or an event
            for flag in (is_x, is_v12, is_vec, is_y, is_b):
                flag[:start] = False
        ev_pos = np.flatnonzero(is_x | is_vec)
        ev_code = code[ev_pos]
        ev_pay = payload[ev_pos]
        y_vals = payload[is_y] & np.uint16(0x07FF)
        ev_y = _at(y_vals, is_y, ev_pos, self.y, np.uint16)
        ev_t = _at(hi_full, is_hi, ev_pos, state_high)
        ev_t += _at(lo_val, is_lo, ev_pos, self.time_low)

        # vector column: the last base + the 12 / 8 steps of vector words since it
        vec_rows = np.flatnonzero(ev_code != EVT_ADDR_X)
        vec_pos = ev_pos[vec_rows]
        vec12 = is_v12[vec_pos]
        steps = np.zeros(vec_pos.size + 1, np.int64)
        np.cumsum(np.where(vec12, 12, 8), out=steps[1:])
        b_pay = payload[is_b]
        b_x = (b_pay & np.uint16(0x07FF)).astype(np.int64)
        b_pol = (b_pay >> 11).astype(np.uint8)
        vec_before_b = np.cumsum(is_vec, dtype=np.int32)[is_b]
        b_origin = b_x - steps[vec_before_b]  # the base minus the steps before it
        vec_base = _at(b_origin, is_b, vec_pos, self.base_x) + steps[:-1]
        vec_pol = _at(b_pol, is_b, vec_pos, self.polarity, np.uint8)

        base = (ev_pay & np.uint16(0x07FF)).astype(np.int64)
        pol = (ev_pay >> 11).astype(np.uint8)
        mask = np.ones(ev_pos.size, np.uint16)
        base[vec_rows] = vec_base
        pol[vec_rows] = vec_pol
        mask[vec_rows] = ev_pay[vec_rows] & np.where(vec12, np.uint16(0x0FFF), np.uint16(0x00FF))
        # 16 bits per word, row-major: flat positions keep stream order (bits 12-15 are 0)
        bits = np.unpackbits(mask.astype('<u2').view(np.uint8), bitorder='little')
        flat = np.flatnonzero(bits.view(bool))  # bool: numpy's fast path
        rows = flat >> 4
        x = base[rows]
        x += flat & 15
        out = Evt3Events(x.astype(np.uint16), ev_y[rows], ev_t[rows], pol[rows], first_time)
        w, h = self.width or MAX_SENSOR_SIDE, self.height or MAX_SENSOR_SIDE
        if ev_pos.size and (int(base.max()) + 11 >= w or int(ev_y.max()) >= h):
            keep = (x < w) & (out.y < h)  # checked per word first: a sensor's stream fits
            if not keep.all():
                out = Evt3Events(out.x[keep], out.y[keep], out.t_us[keep], out.p[keep],
                                 first_time)
        if len(out):
            out.first_time_us = int(out.t_us[0])

        # --- carry the state to the next buffer
        if hi_val.size:
            self.high12 = int(hi_val[-1])
            self.loops += int(wraps[-1])
            self.high_seen = True
        if lo_val.size:
            self.time_low = int(lo_val[-1])
        if y_vals.size:
            self.y = int(y_vals[-1])
        if b_x.size:
            self.base_x = int(b_origin[-1] + steps[-1])
            self.polarity = int(b_pol[-1])
        else:
            self.base_x += int(steps[-1])
        self.triggers += int(np.count_nonzero(code[start:] == EXT_TRIGGER))
        return out


def check_packet(msg: Any) -> tuple[int, int]:
    """(height, width) of an EventPacket after checking what this decoder supports: the
    encoding and a sensor size EVT 3.0 can address (the size sets allocations downstream)."""
    encoding = str(msg.encoding)
    if encoding not in SUPPORTED_ENCODINGS:
        raise ValueError(f'EventPacket encoding {encoding!r} is not supported (only '
                         f'{", ".join(SUPPORTED_ENCODINGS)}; not evt2, evt2.1, libcaer_cmp, '
                         'libcaer, mono or trigger)')
    w, h = int(msg.width), int(msg.height)
    if not (0 < w <= MAX_SENSOR_SIDE and 0 < h <= MAX_SENSOR_SIDE):
        raise ValueError(f'EventPacket size {w} x {h} is not an EVT 3.0 sensor size '
                         f'(1..{MAX_SENSOR_SIDE} per side)')
    return h, w


def decode_packet(msg: Any, decoder: Evt3Decoder, stamp_ns: int) -> DecodedEvents:
    """An event_camera_msgs/EventPacket (rclpy or rosbags) -> DecodedEvents.

    Event ROS time = header stamp + (sensor time - the sensor time of the packet's first
    event): the ROS event-camera drivers stamp a packet with the time of its first event (the
    field time_base is not used by evt3). `decoder` carries the stream state between packets of
    one topic.
    """
    h, w = check_packet(msg)
    decoder.width, decoder.height = w, h
    data = msg.events
    if not isinstance(data, (bytes, bytearray, memoryview, np.ndarray)):
        data = bytes(data)  # rclpy gives array.array('B') or a list
    ev = decoder.decode(data, bool(msg.is_bigendian))
    t_ns = np.asarray(stamp_ns, np.int64) + (ev.t_us - (ev.first_time_us or 0)) * 1000
    return DecodedEvents(msg.header, ev.x, ev.y, t_ns, ev.p, (h, w))
