"""EVT 3.0 decoding (rmseg_ros.frontend.evt3) on hand-built packets: single and vector events, both
polarities, rows, time-high wrap-around and jitter, state carried between packets, the words
that carry no events, byte order, the sensor size; and against a word-by-word reference
decoder written from the format's description on random streams cut into random packets."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import numpy as np
import pytest
from evt3_stream import BASE, TH, TL, V8, V12, X, Y, pack, word
from hypothesis import given, settings
from hypothesis import strategies as st

from rmseg_ros.frontend.evt3 import TIME_LOOP_US, Evt3Decoder, check_packet, decode_packet
from rmseg_ros.frontend.sensor_geometry import SensorGeometry


def events(ev):
    return list(zip(ev.x.tolist(), ev.y.tolist(), ev.t_us.tolist(), ev.p.tolist(), strict=True))


def test_single_events_with_rows_and_both_polarities():
    ev = Evt3Decoder().decode(pack([TH(1), TL(5), Y(7), X(3, 1), X(4, 0), Y(8), X(2047, 1)]))
    t = (1 << 12) + 5
    assert events(ev) == [(3, 7, t, 1), (4, 7, t, 0), (2047, 8, t, 1)]
    assert ev.x.dtype == np.uint16 and ev.t_us.dtype == np.int64 and ev.p.dtype == np.uint8


def test_nothing_is_emitted_before_a_time_high_then_a_time_low():
    dec = Evt3Decoder()
    ev = dec.decode(pack([Y(9), X(1, 1), TH(0), X(2, 1), Y(4), TL(3), X(3, 0)]))
    assert events(ev) == [(3, 0, 3, 0)]  # the row set before the time was valid is not used
    assert ev.first_time_us == 3
    assert len(Evt3Decoder().decode(pack([TL(1), X(1, 1), TH(2), X(2, 1)]))) == 0


def test_vector_events_move_their_column_and_keep_the_base_polarity():
    ev = Evt3Decoder().decode(pack([
        TH(0), TL(0), Y(2),
        BASE(100, 1), V12(0b1000_0000_0101), V8(0b1000_0001),
        X(50, 0),  # a single event between vectors changes neither base nor polarity
        V8(0b11),
        BASE(10, 0), V12(0), V8(0b11), TL(9), Y(3), V12(1 << 11)]))
    assert events(ev) == [
        (100, 2, 0, 1), (102, 2, 0, 1), (111, 2, 0, 1),  # VECT_12 from 100
        (112, 2, 0, 1), (119, 2, 0, 1),  # VECT_8 from 112
        (50, 2, 0, 0),
        (120, 2, 0, 1), (121, 2, 0, 1),  # VECT_8 from 120
        (22, 2, 0, 0), (23, 2, 0, 0),  # an empty VECT_12 still moves the column 10 -> 22
        (41, 3, 9, 0)]  # 30 + 11


def test_time_high_wraps_and_jitter_is_not_a_wrap():
    dec = Evt3Decoder()
    ev = dec.decode(pack([TH(4095), TL(10), Y(0), X(1, 1), TH(0), TL(20), X(2, 1),
                          TH(100), TL(0), X(3, 1), TH(95), X(4, 1)]))
    assert ev.t_us.tolist() == [(4095 << 12) + 10, TIME_LOOP_US + 20,
                                TIME_LOOP_US + (100 << 12), TIME_LOOP_US + (95 << 12)]
    # and across packets: the next one starts after a wrap
    dec2 = Evt3Decoder()
    dec2.decode(pack([TH(4000), TL(1), Y(1)]))
    later = dec2.decode(pack([TH(2), TL(7), X(9, 0), TH(1), TL(8), X(10, 0)]))
    assert later.t_us.tolist() == [TIME_LOOP_US + (2 << 12) + 7, TIME_LOOP_US + (1 << 12) + 8]
    assert later.first_time_us == later.t_us[0]
    assert dec2.decode(pack([Y(3)])).first_time_us == TIME_LOOP_US + (1 << 12) + 8  # no events


def test_state_carries_over_between_packets():
    dec = Evt3Decoder()
    first = dec.decode(pack([TH(3), TL(4), Y(5), BASE(20, 1), V12(1)]))
    second = dec.decode(pack([V8(0b10), X(7, 0), Y(6), V8(1)]))
    t = (3 << 12) + 4
    assert events(first) == [(20, 5, t, 1)]
    assert events(second) == [(33, 5, t, 1), (7, 5, t, 0), (40, 6, t, 1)]
    assert second.first_time_us == t


def test_words_without_events_are_skipped_and_triggers_counted():
    dec = Evt3Decoder()
    ev = dec.decode(pack([TH(0), TL(0), Y(1), word(0xA, 0x101), word(0xE, 5),
                          word(0xF, 0xFFF), word(0x7, 0xF), X(5, 1)]))
    assert events(ev) == [(5, 1, 0, 1)] and dec.triggers == 1


def test_byte_order_odd_tail_and_sensor_size():
    words = [TH(0), TL(1), Y(479), X(639, 1), X(640, 1), Y(480), X(0, 0)]
    little = events(Evt3Decoder(640, 480).decode(pack(words) + b'\x00'))
    assert little == [(639, 479, 1, 1)]  # x 640 and y 480 are outside the sensor
    assert events(Evt3Decoder(640, 480).decode(pack(words, bigendian=True), True)) == little


def _packet(words, encoding='evt3', width=640, height=480, stamp=(100, 0)):
    header = SimpleNamespace(stamp=SimpleNamespace(sec=stamp[0], nanosec=stamp[1]))
    return SimpleNamespace(header=header, encoding=encoding, width=width, height=height,
                           is_bigendian=False, time_base=0,
                           events=np.frombuffer(pack(words), np.uint8))


def test_decode_packet_anchors_event_times_at_the_header_stamp():
    dec = Evt3Decoder()
    stamp = 100 * 10**9
    out = decode_packet(_packet([TH(1), TL(0), Y(3), X(1, 1), TL(250), X(2, 0)]), dec, stamp)
    assert out.t_ns.tolist() == [stamp, stamp + 250_000] and out.sensor_hw == (480, 640)
    # the next packet continues the stream: its stamp is its first event's time
    nxt = decode_packet(_packet([TL(500), X(3, 1), TL(900), X(4, 0)]), dec, stamp + 10**6)
    assert nxt.t_ns.tolist() == [stamp + 10**6, stamp + 10**6 + 400_000]


@pytest.mark.parametrize('encoding', ['evt2', 'evt2.1', 'libcaer_cmp', 'mono'])
def test_other_encodings_are_refused_by_name(encoding):
    with pytest.raises(ValueError, match=encoding):
        check_packet(_packet([], encoding=encoding))


@pytest.mark.parametrize('size', [(0, 480), (4096, 480), (640, 70000)])
def test_impossible_sensor_sizes_are_refused(size):
    with pytest.raises(ValueError, match='sensor size'):
        check_packet(_packet([], width=size[0], height=size[1]))


# ---------------------------------------------------------------- against a reference decoder

class Reference:
    """Word by word, as the format describes it (slow and obvious)."""

    def __init__(self):
        self.hi = self.lo = self.y = self.base = self.pol = self.loops = 0
        self.hi_seen = self.valid = False

    def decode(self, words):
        out = []
        for w in words:
            code, pay = w >> 12, w & 0xFFF
            if code == 0x8:
                if self.hi_seen and self.hi - pay > 10:
                    self.loops += 1
                self.hi, self.hi_seen = pay, True
                continue
            if code == 0x6:
                self.lo = pay
                self.valid = self.valid or self.hi_seen
                continue
            if not self.valid:
                continue
            t = self.loops * TIME_LOOP_US + (self.hi << 12) + self.lo
            if code == 0x0:
                self.y = pay & 0x7FF
            elif code == 0x2:
                out.append((pay & 0x7FF, self.y, t, pay >> 11))
            elif code == 0x3:
                self.base, self.pol = pay & 0x7FF, pay >> 11
            elif code in (0x4, 0x5):
                n = 12 if code == 0x4 else 8
                out += [(self.base + i, self.y, t, self.pol) for i in range(n) if pay >> i & 1]
                self.base += n
        return out


WORD = st.one_of(
    st.integers(0, 2047).map(Y), st.tuples(st.integers(0, 2047), st.integers(0, 1)).map(
        lambda a: X(*a)),
    st.tuples(st.integers(0, 2000), st.integers(0, 1)).map(lambda a: BASE(*a)),
    st.integers(0, 4095).map(V12), st.integers(0, 255).map(V8),
    st.integers(0, 4095).map(TL), st.integers(0, 4095).map(TH),
    st.sampled_from([word(0xA, 1), word(0xE, 0), word(0xF, 0), word(0x7, 0)]))


@settings(max_examples=150, deadline=None)
@given(st.lists(WORD, max_size=120), st.lists(st.integers(0, 120), max_size=4))
def test_matches_the_reference_on_random_streams_in_random_packets(words, cuts):
    bounds = [0, *sorted(cuts), len(words)]
    dec = Evt3Decoder()
    got = []
    for a, b in itertools.pairwise(bounds):
        got += events(dec.decode(pack(words[a:max(a, b)])))
    assert got == Reference().decode(words)


# ---------------------------------------------------------------- wired: front end and training

EVENT_PACKET_MSG = '''std_msgs/Header header
uint32 height
uint32 width
uint64 seq
uint64 time_base
string encoding
bool is_bigendian
uint8[] events
'''
STAMP0 = 1_700_000_000 * 10**9


def _frame_events(i, rng, n=400):
    """Events of frame i: sensor time (us) from 5 s + i * 100 ms, over 20 ms."""
    t_us = np.sort(rng.integers(0, 20_000, n)) + 5_000_000 + i * 100_000
    return (rng.integers(0, 160, n), rng.integers(0, 120, n), t_us, rng.integers(0, 2, n))


def _voxel_of(x, y, t_ns, p, camera, frontend):
    from rmseg_ros.frontend.preprocess import EventBatch, RawFrame, build_model_input

    frame = RawFrame(stamp_ns=int(t_ns[-1]), camera=camera, event_sensor_hw=(120, 160))
    frame.events = EventBatch(np.asarray(x), np.asarray(y), np.asarray(t_ns, np.int64),
                              np.asarray(p, np.int8))
    return build_model_input(frame, frontend).tensors['event']


def test_decoded_packets_feed_the_front_end_like_raw_events():
    from evt3_stream import encode, packet

    from rmseg_ros.camera import CameraIntrinsics
    from rmseg_ros.frontend.preprocess import FrontendConfig, build_model_input, frame_from_messages

    rng = np.random.default_rng(3)
    camera = CameraIntrinsics.from_fov(320, 240, 80.0)  # events on a 160 x 120 sensor
    frontend = FrontendConfig(height=60, width=80)
    x, y, t_us, p = _frame_events(0, rng)
    decoder = Evt3Decoder()
    decoded = decode_packet(packet(encode(x, y, t_us, p), STAMP0), decoder, STAMP0)
    got = build_model_input(frame_from_messages(STAMP0, {'event': decoded}, SensorGeometry(camera)),
                            frontend).tensors['event']
    t_ns = STAMP0 + (t_us - t_us[0]) * 1000
    np.testing.assert_array_equal(got, _voxel_of(x, y, t_ns, p, camera, frontend))
    assert np.abs(got).sum() > 0


def test_training_reads_event_packets_from_an_mcap_bag(tmp_path):
    from evt3_stream import encode
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    from rmseg_ros.camera import CameraIntrinsics
    from rmseg_ros.sync.core import SyncConfig
    from training.data.bag_samples import EVENT_PACKET, BagSampleReader, DatasetConfig
    from training.sim import bag_writer as bw

    # the writer knows EventPacket; the reader only gets it from the bag (mcap schema)
    store = get_typestore(Stores.ROS2_KILTED)
    store.register(get_types_from_msg(EVENT_PACKET_MSG, EVENT_PACKET))
    Packet = store.types[EVENT_PACKET]
    camera = CameraIntrinsics.from_fov(160, 120, 80.0)
    rng = np.random.default_rng(5)
    expected = {}
    state: dict = {}
    bag = tmp_path / 'evbag'
    with Writer(bag, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        conns = {t: writer.add_connection(t, m, typestore=store) for t, m in [
            ('/camera/camera_info', 'sensor_msgs/msg/CameraInfo'),
            ('/camera/image', 'sensor_msgs/msg/Image'), ('/events', EVENT_PACKET)]}
        writer.write(conns['/camera/camera_info'], STAMP0, store.serialize_cdr(
            bw.camera_info_msg(camera, STAMP0, 'cam'), 'sensor_msgs/msg/CameraInfo'))
        for i in range(5):
            stamp = STAMP0 + i * 100_000_000
            x, y, t_us, p = _frame_events(i, rng)
            header = store.types['std_msgs/msg/Header'](
                stamp=store.types['builtin_interfaces/msg/Time'](
                    sec=stamp // 10**9, nanosec=stamp % 10**9), frame_id='ev')
            msg = Packet(header=header, height=120, width=160, seq=i, time_base=0,
                         encoding='evt3', is_bigendian=False,
                         events=np.frombuffer(pack(encode(x, y, t_us, p, state)), np.uint8))
            writer.write(conns['/events'], stamp, store.serialize_cdr(msg, EVENT_PACKET))
            rgb = rng.integers(0, 255, (120, 160, 3)).astype(np.uint8)
            writer.write(conns['/camera/image'], stamp + 1, store.serialize_cdr(
                bw.image_msg(rgb, 'rgb8', stamp, 'cam'), 'sensor_msgs/msg/Image'))
            expected[stamp] = (x, y, stamp + (t_us - t_us[0]) * 1000, p)
    config = DatasetConfig.load()
    config.sync = SyncConfig(modalities=('rgb', 'event'), required=('rgb',))
    frontend = config.frontend()
    reader = BagSampleReader(bag, config, frontend)
    samples = list(reader)
    assert reader.stats.messages['event'] == 5 and reader.stats.malformed == 0
    assert len(samples) >= 4
    for s in samples:
        assert s.model_input.presence.tolist() == [True, False, False, True]
        x, y, t_ns, p = expected[s.model_input.stamp_ns]
        np.testing.assert_allclose(s.model_input.tensors['event'],
                                   _voxel_of(x, y, t_ns, p, camera, frontend), atol=1e-6)
