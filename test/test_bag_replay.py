"""Bag replay: the ROS-free core (timing, selection, remapping, validation, counts, errors) and
the `bag_replay` node replaying real rosbag2 files (mcap and sqlite3) to a subscriber in another
process over DDS."""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from rmseg_ros.bag_replay import (
    DEFAULT_LOOP_PERIOD_NS,
    BagReplay,
    BagReplayError,
    due_offset_s,
    loop_period_ns,
    parse_remap,
)

# rosbags parses message definitions with lark, which imports deprecated sre_* modules
pytestmark = pytest.mark.filterwarnings('ignore::DeprecationWarning:lark.*')

TS = get_typestore(Stores.ROS2_KILTED)
T0 = 1_700_000_000 * 10**9  # log time of the first record
IMAGE, INFO, TF = '/camera/image', '/camera/camera_info', '/tf'
N_IMAGES, N_INFOS, N_TFS = 20, 10, 3
CORRUPT_AFTER = 7  # the garbage record sits between image 7 and image 8
# CDR header + header.stamp, then a string length of ~4e9: cannot be an Image.
GARBAGE = b'\x00\x01\x00\x00' + b'\xde\xad\xbe\xef' * 3
STORAGES = ['mcap', 'sqlite3']
SUFFIX = {'mcap': '.mcap', 'sqlite3': '.db3'}


@dataclass(frozen=True)
class Written:
    topic: str
    msgtype: str
    log_ns: int
    data: bytes
    stamp: tuple[int, int]  # header stamp (sec, nanosec); (0, 0) where there is no header


def _header(sec: int, nanosec: int, frame: str) -> object:
    return TS.types['std_msgs/msg/Header'](
        stamp=TS.types['builtin_interfaces/msg/Time'](sec=sec, nanosec=nanosec), frame_id=frame)


def _image(i: int) -> object:
    data = (np.arange(4 * 3 * 3, dtype=np.uint8) * (i + 1) + i).astype(np.uint8)
    return TS.types['sensor_msgs/msg/Image'](
        header=_header(100 + i, 1000 * i + 7, 'cam'), height=3, width=4, encoding='rgb8',
        is_bigendian=0, step=12, data=data)


def _info(i: int) -> object:
    k = np.array([500.0 + i, 0, 2, 0, 500.0 + i, 1.5, 0, 0, 1])
    return TS.types['sensor_msgs/msg/CameraInfo'](
        header=_header(200 + i, 3 * i + 1, 'cam'), height=3, width=4,
        distortion_model='plumb_bob', d=np.array([0.1 * i, 0, 0, 0, 0]), k=k, r=np.eye(3).ravel(),
        p=np.hstack([k.reshape(3, 3), np.zeros((3, 1))]).ravel(), binning_x=0, binning_y=0,
        roi=TS.types['sensor_msgs/msg/RegionOfInterest'](
            x_offset=0, y_offset=0, height=0, width=0, do_rectify=False))


def _tf(i: int) -> object:
    vec = TS.types['geometry_msgs/msg/Vector3'](x=float(i), y=0.0, z=0.0)
    quat = TS.types['geometry_msgs/msg/Quaternion'](x=0.0, y=0.0, z=0.0, w=1.0)
    ts = TS.types['geometry_msgs/msg/TransformStamped'](
        header=_header(300 + i, 0, 'map'), child_frame_id='base',
        transform=TS.types['geometry_msgs/msg/Transform'](translation=vec, rotation=quat))
    return TS.types['tf2_msgs/msg/TFMessage'](transforms=[ts])


def write_bag(path: Path, storage: str, *, extra_unknown: bool = False) -> list[Written]:
    """A small recording: images at 10 Hz, camera infos at 5 Hz, a few TF messages (a type that
    cannot be imported in rclpy here) and one garbage record on the image connection. Written
    out of log-time order on purpose. Returns every record as written."""
    written: list[Written] = []
    with Writer(path, version=9, storage_plugin=StoragePlugin[storage.upper()]) as writer:
        conns = {
            IMAGE: writer.add_connection(IMAGE, 'sensor_msgs/msg/Image', typestore=TS),
            INFO: writer.add_connection(INFO, 'sensor_msgs/msg/CameraInfo', typestore=TS),
            TF: writer.add_connection(TF, 'tf2_msgs/msg/TFMessage', typestore=TS),
        }
        for topic, msgtype, n, make, period_ms, shift_ms in [
                (IMAGE, 'sensor_msgs/msg/Image', N_IMAGES, _image, 100, 0),
                (INFO, 'sensor_msgs/msg/CameraInfo', N_INFOS, _info, 200, 10),
                (TF, 'tf2_msgs/msg/TFMessage', N_TFS, _tf, 500, 20)]:
            for i in range(n):
                msg = make(i)
                data = bytes(TS.serialize_cdr(msg, msgtype))
                log_ns = T0 + (i * period_ms + shift_ms) * 10**6
                stamp = (msg.header.stamp.sec, msg.header.stamp.nanosec) if topic != TF else (0, 0)
                written.append(Written(topic, msgtype, log_ns, data, stamp))
                writer.write(conns[topic], log_ns, data)
        garbage_ns = T0 + (CORRUPT_AFTER * 100 + 50) * 10**6
        writer.write(conns[IMAGE], garbage_ns, GARBAGE)
        written.append(Written(IMAGE, 'sensor_msgs/msg/Image', garbage_ns, GARBAGE, (0, 0)))
        if extra_unknown:
            conn = writer.add_connection('/thing', 'my_pkg/msg/Thing', msgdef='',
                                         rihs01='RIHS01_' + '0' * 64)
            writer.write(conn, T0 + 5 * 10**6, b'\x00\x01\x00\x00\x01\x02\x03\x04')
            written.append(Written('/thing', 'my_pkg/msg/Thing', T0 + 5 * 10**6,
                                   b'\x00\x01\x00\x00\x01\x02\x03\x04', (0, 0)))
    return sorted(written, key=lambda w: w.log_ns)


def good(written: list[Written], topics: tuple[str, ...] = (IMAGE, INFO, TF),
         start_ns: int = T0) -> list[Written]:
    return [w for w in written if w.topic in topics and w.data != GARBAGE and w.log_ns >= start_ns]


@pytest.fixture(params=STORAGES)
def bag(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Path, list[Written]]:
    path = tmp_path / f'bag_{request.param}'
    return path, write_bag(path, request.param, extra_unknown=True)


# --------------------------------------------------------------------------------------------
# Pure timing
# --------------------------------------------------------------------------------------------

def test_due_offset_follows_log_time_rate_and_pass() -> None:
    assert due_offset_s(T0 + 2 * 10**9, T0) == pytest.approx(2.0)
    assert due_offset_s(T0 + 2 * 10**9, T0, rate=4.0) == pytest.approx(0.5)
    assert due_offset_s(T0 + 2 * 10**9, T0 + 10**9, rate=0.5) == pytest.approx(2.0)
    # third pass (index 2) of a 3 s loop at double speed: (2 s + 2 * 3 s) / 2
    assert due_offset_s(T0 + 2 * 10**9, T0, rate=2.0, pass_index=2,
                        loop_period_ns=3 * 10**9) == pytest.approx(4.0)
    for bad_rate in (0.0, -1.0, float('nan')):
        with pytest.raises(ValueError):
            due_offset_s(T0, T0, rate=bad_rate)


@given(gaps=st.lists(st.integers(0, 10**10), min_size=1, max_size=30),
       rate=st.floats(0.01, 100.0), start=st.integers(0, 2**62))
def test_due_offsets_keep_order_and_scale_with_rate(gaps: list[int], rate: float,
                                                    start: int) -> None:
    times = list(itertools.accumulate(gaps, initial=start))
    due = [due_offset_s(t, start, rate) for t in times]
    assert due == sorted(due)
    assert due[0] == 0.0
    assert due[-1] == pytest.approx((times[-1] - start) / 1e9 / rate, rel=1e-9)


def test_loop_period_adds_the_mean_gap() -> None:
    assert loop_period_ns(0, 900, 10) == 1000  # ten records 100 ns apart: next pass at +1000
    assert loop_period_ns(5, 5, 3) == DEFAULT_LOOP_PERIOD_NS  # no span: never spin
    assert loop_period_ns(5, 5, 1) == DEFAULT_LOOP_PERIOD_NS


def test_parse_remap() -> None:
    assert parse_remap(['camera/image:=/rgb', '/a:=b', '']) == {'/camera/image': '/rgb',
                                                                '/a': 'b'}
    for bad in (['/a'], ['/a:='], [':=/b']):
        with pytest.raises(ValueError):
            parse_remap(bad)


# --------------------------------------------------------------------------------------------
# Core on real bags
# --------------------------------------------------------------------------------------------

def test_lists_topics_and_replays_everything_in_log_time_order(bag) -> None:
    path, written = bag
    skipped = []
    with BagReplay(path, on_skip=skipped.append) as replay:
        topics = replay.topics
        assert {n: (t.msgtype, t.count) for n, t in topics.items()} == {
            IMAGE: ('sensor_msgs/msg/Image', N_IMAGES + 1),
            INFO: ('sensor_msgs/msg/CameraInfo', N_INFOS),
            TF: ('tf2_msgs/msg/TFMessage', N_TFS),
            '/thing': ('my_pkg/msg/Thing', 1),
        }
        assert replay.duration_s == pytest.approx((written[-1].log_ns - T0) / 1e9)
        records = list(replay.records())
    expected = good(written)
    assert [(r.topic, r.msgtype, r.log_time_ns, r.data) for r in records] == [
        (w.topic, w.msgtype, w.log_ns, w.data) for w in expected]
    assert [r.due_s for r in records] == pytest.approx([(w.log_ns - T0) / 1e9 for w in expected])
    counts = replay.counts
    assert counts.skipped_corrupt == {IMAGE: 1}
    assert counts.skipped_unknown_type == {'/thing': 1}  # no definition anywhere
    assert counts.passes == 1
    assert [(s.topic, s.reason) for s in skipped] == [('/thing', 'unknown_type'),
                                                      (IMAGE, 'corrupt')]
    assert skipped[1].log_time_ns == T0 + (CORRUPT_AFTER * 100 + 50) * 10**6


def test_whitelist_remap_offset_and_rate(bag) -> None:
    path, written = bag
    with BagReplay(path, topics=['camera/image', INFO, '/not/recorded'], rate=4.0,
                   start_offset=1.05, remap={IMAGE: '/rgb'}) as replay:
        assert replay.missing_topics == ['/not/recorded']
        assert [(t.bag_topic, t.topic) for t in replay.selected_topics] == [
            (INFO, INFO), (IMAGE, '/rgb')]
        records = list(replay.records())
    start = T0 + 1_050_000_000
    expected = good(written, (IMAGE, INFO), start)
    assert expected[0].log_ns > start  # the offset falls between records
    assert [(r.bag_topic, r.log_time_ns) for r in records] == [
        (w.topic, w.log_ns) for w in expected]
    assert {r.topic for r in records} == {'/rgb', INFO}
    assert [r.due_s for r in records] == pytest.approx(
        [(w.log_ns - start) / 1e9 / 4.0 for w in expected])
    assert replay.counts.skipped_corrupt == {}  # the garbage record lies before the offset


def test_loop_repeats_the_window_with_continuing_times(bag) -> None:
    path, written = bag
    with BagReplay(path, topics=[INFO], loop=True, rate=2.0) as replay:
        records = list(itertools.islice(replay.records(), 2 * N_INFOS + 3))
    infos = good(written, (INFO,))
    span = infos[-1].log_ns - infos[0].log_ns
    period = span + span // (N_INFOS - 1)
    assert [r.pass_index for r in records] == [0] * N_INFOS + [1] * N_INFOS + [2] * 3
    assert [r.data for r in records] == [w.data for w in infos * 3][:len(records)]
    for k, r in enumerate(records):
        w = infos[k % N_INFOS]
        assert r.due_s == pytest.approx((w.log_ns - T0 + (k // N_INFOS) * period) / 2e9)
    assert np.all(np.diff([r.due_s for r in records]) > 0)


def test_types_the_consumer_cannot_publish_are_counted(bag) -> None:
    path, _ = bag
    with BagReplay(path, topics=[TF, INFO]) as replay:
        topics = [r.topic for r in replay.records(skip_types={'tf2_msgs/msg/TFMessage'})]
    assert topics == [INFO] * N_INFOS
    assert replay.counts.skipped_unknown_type == {TF: N_TFS}


def test_play_publishes_each_record_when_due_and_stops_on_request(bag) -> None:
    path, written = bag
    now = [50.0]
    waits: list[float] = []

    def clock() -> float:
        return now[0]

    def wait(seconds: float) -> bool:  # a fake sleep that advances the fake clock
        waits.append(seconds)
        now[0] += seconds
        return False

    published: list[tuple[float, int]] = []
    with BagReplay(path, topics=[IMAGE], rate=10.0) as replay:
        counts = replay.play(lambda r: published.append((now[0], r.log_time_ns)),
                             clock=clock, wait=wait)
    images = good(written, (IMAGE,))
    assert [t for _, t in published] == [w.log_ns for w in images]
    assert [p - 50.0 for p, _ in published] == pytest.approx(
        [(w.log_ns - T0) / 1e10 for w in images])
    assert counts.published == {IMAGE: N_IMAGES}
    assert counts.skipped_corrupt == {IMAGE: 1}
    assert min(waits) >= 0.0

    stop_after = 5
    calls = itertools.count()
    with BagReplay(path, topics=[IMAGE]) as replay:
        counts = replay.play(lambda r: None, clock=clock,
                             wait=lambda s: next(calls) >= stop_after)
    assert counts.published == {IMAGE: stop_after}


def test_play_sleeps_until_due_in_real_time(tmp_path: Path) -> None:
    """With the default clock and wait no record goes out early, and 1.8 s of camera infos at
    rate 9 take about 0.2 s."""
    path = tmp_path / 'bag'
    written = write_bag(path, 'mcap')
    sent: list[tuple[float, float]] = []
    with BagReplay(path, topics=[INFO], rate=9.0) as replay:
        t0 = time.monotonic()
        replay.play(lambda r: sent.append((time.monotonic() - t0, r.due_s)))
        elapsed = time.monotonic() - t0
    infos = good(written, (INFO,))
    assert len(sent) == N_INFOS
    assert all(at >= due - 0.002 for at, due in sent)
    assert sent[-1][1] == pytest.approx((infos[-1].log_ns - T0) / 9e9)
    assert sent[-1][1] <= elapsed < sent[-1][1] + 1.0


def test_bad_options_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        BagReplay(tmp_path, rate=0.0)
    with pytest.raises(ValueError):
        BagReplay(tmp_path, start_offset=-1.0)


def _corrupt(path: Path, storage: str, case: str) -> str:
    """Damage a copy of a good bag; return the file name the error must mention."""
    meta = path / 'metadata.yaml'
    db = path / f'{path.name}{SUFFIX[storage]}'
    if case == 'garbage_metadata':
        meta.write_bytes(b'\x00\xff\xfe: [{{ not yaml')
    elif case == 'truncated_metadata':
        meta.write_text(meta.read_text()[:150])
    elif case == 'missing_metadata':
        meta.unlink()
    elif case == 'garbage_storage':
        db.write_bytes(b'garbage!' * 64)
    elif case == 'truncated_storage':
        db.write_bytes(db.read_bytes()[:200])
    elif case == 'missing_storage':
        db.unlink()
    return meta.name if 'metadata' in case else db.name


@pytest.mark.parametrize('storage', STORAGES)
@pytest.mark.parametrize('case', ['garbage_metadata', 'truncated_metadata', 'missing_metadata',
                                  'garbage_storage', 'truncated_storage', 'missing_storage'])
def test_unreadable_bag_raises_an_error_naming_the_file(tmp_path: Path, storage: str,
                                                        case: str) -> None:
    path = tmp_path / 'bag'
    write_bag(path, storage)
    name = _corrupt(path, storage, case)
    with pytest.raises(BagReplayError, match=re.escape(name)), BagReplay(path) as replay:
        list(replay.records())


def test_missing_bag_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(BagReplayError, match='does not exist'):
        BagReplay(tmp_path / 'nope').open()


# --------------------------------------------------------------------------------------------
# Truncated and damaged mcap files (issue 21 item 11)
# --------------------------------------------------------------------------------------------

def write_chunked_bag(path: Path, compression: str = 'none', n: int = 20) -> Path:
    """Images of ~150 KB: rosbags closes a chunk every MiB, so the file holds several chunks.
    Returns the .mcap file."""
    from training.sim.bag_writer import BagWriter, image_msg

    rng = np.random.default_rng(3)
    with BagWriter(path, 'mcap', compression) as writer:
        for i in range(n):
            stamp = T0 + i * 10**8
            writer.write('camera/image', stamp, image_msg(
                rng.integers(0, 255, (200, 256, 3), dtype=np.uint8), 'rgb8', stamp, 'cam'))
    return path / f'{path.name}.mcap'


def chunk_messages(mcap: Path) -> list[tuple[int, int, list[tuple[int, bytes]]]]:
    """(offset, length, [(log time, data)]) of every chunk, read by rosbags itself."""
    from rosbags.rosbag2.storage_mcap import McapReader, msgsrc

    reader = McapReader(mcap)
    reader.open()
    try:
        cmap = {c.id: c for c in reader.connections}
        return [(c.chunk_start_offset, c.chunk_length,
                 [(m.timestamp, m.data) for m in msgsrc(c, cmap, 0, 2**63 - 1, reader.bio)
                  if m.connection is not None])
                for c in reader.chunks]
    finally:
        reader.close()


def _replayed(path: Path) -> tuple[list[tuple[int, bytes]], object]:
    with BagReplay(path) as replay:
        records = [(r.log_time_ns, r.data) for r in replay.records()]
    return records, replay.counts


def test_truncated_mcap_replays_the_messages_of_its_complete_chunks(tmp_path: Path) -> None:
    """Cut to half, as a killed recorder leaves it (no summary, no footer): rosbags refuses the
    file; the replay gives every message of the chunks that are complete, bit-exactly, and
    says the file was cut short."""
    from rosbags.rosbag2 import Reader

    mcap = write_chunked_bag(tmp_path / 'bag')
    chunks = chunk_messages(mcap)
    assert len(chunks) >= 3
    data = mcap.read_bytes()
    cut = len(data) // 2
    mcap.write_bytes(data[:cut])
    with pytest.raises(Exception, match='magic'), Reader(tmp_path / 'bag') as reader:
        list(reader.messages())
    records, counts = _replayed(tmp_path / 'bag')
    complete = [m for off, length, msgs in chunks if off + length <= cut for m in msgs]
    assert 0 < len(complete) < sum(len(m) for *_, m in chunks)
    assert records == complete
    assert counts.truncated and counts.damaged_bytes > 0 and counts.damaged_chunks == 0
    # the .mcap file itself, as a recorder killed before writing metadata.yaml leaves it
    (tmp_path / 'bag' / 'metadata.yaml').unlink()
    assert _replayed(mcap)[0] == complete


@pytest.mark.parametrize('case', ['record_length', 'compressed_bytes', 'summary'])
def test_damaged_chunk_is_skipped_and_counted_and_replay_goes_on(tmp_path: Path,
                                                                 case: str) -> None:
    """Damaged bytes cost only their chunk (or, when a record inside it is broken, the records
    from there on): every other message is replayed, the loss counted. rosbags alone stops."""
    from rosbags.rosbag2 import Reader

    mcap = write_chunked_bag(tmp_path / 'bag', 'zstd' if case == 'compressed_bytes' else 'none')
    chunks = chunk_messages(mcap)
    data = bytearray(mcap.read_bytes())
    off, _, msgs = chunks[1]
    kept = [m for i, (*_, ms) in enumerate(chunks) if i != 1 for m in ms]
    if case == 'record_length':  # the length of the 4th message record inside chunk 1
        pos = off + 9 + 28
        comp_len = int.from_bytes(data[pos:pos + 4], 'little')
        pos += 4 + comp_len + 8  # the chunk's records start here
        seen = 0
        while seen < 3 or data[pos] != 0x05:
            seen += data[pos] == 0x05
            pos += 9 + int.from_bytes(data[pos + 1:pos + 9], 'little')
        data[pos + 1:pos + 9] = b'\xff' * 8
        kept_in_chunk = msgs[:3]
    elif case == 'compressed_bytes':  # the start of the zstd frame (image data is stored
        start = off + 9 + 28 + 4 + len('zstd') + 8  # raw: damage there goes unnoticed)
        data[start:start + 16] = bytes(16)
        kept_in_chunk = []
    else:  # the index at the end: the records are scanned instead
        data[-100:] = bytes(100)
        kept_in_chunk = msgs
    mcap.write_bytes(bytes(data))
    if case != 'summary':
        with pytest.raises(Exception), Reader(tmp_path / 'bag') as reader:  # noqa: B017
            list(reader.messages())
    records, counts = _replayed(tmp_path / 'bag')
    assert records == sorted(kept + kept_in_chunk)
    lost = len(msgs) - len(kept_in_chunk)
    assert counts.damaged_chunks == (lost > 0) and counts.damaged_records == lost
    assert not counts.truncated


def test_flipped_bytes_lose_only_the_chunk_they_hit(tmp_path: Path) -> None:
    """200 bytes flipped at seeded random places inside one chunk (its header too) and in the
    summary: replay never stops, the damage is counted, and every message of the untouched
    chunks comes out bit-exactly."""
    mcap = write_chunked_bag(tmp_path / 'bag', 'zstd')
    chunks = chunk_messages(mcap)
    data = bytearray(mcap.read_bytes())
    off, length, _ = chunks[1]
    rng = np.random.default_rng(21)
    for pos in [*rng.integers(off, off + 64, 10), *rng.integers(off, off + length, 180),
                *rng.integers(len(data) - 300, len(data) - 8, 10)]:
        data[pos] ^= 0xFF
    mcap.write_bytes(bytes(data))
    records, counts = _replayed(tmp_path / 'bag')
    untouched = [m for i, (*_, ms) in enumerate(chunks) if i != 1 for m in ms]
    assert set(untouched) <= set(records)
    assert counts.damaged_chunks + counts.damaged_bytes > 0


def test_seeded_damage_never_escapes_as_another_error(tmp_path: Path) -> None:
    """Cuts, bit flips and zeroed runs at seeded random places: the replay either reads what is
    left or raises BagReplayError naming the file, nothing else."""
    mcap = write_chunked_bag(tmp_path / 'bag', n=12)
    original = mcap.read_bytes()
    rng = np.random.default_rng(11)
    outcomes = set()
    for case in range(30):
        data = bytearray(original)
        if case % 3 == 0:
            data = data[:int(rng.integers(0, len(data)))]
        elif case % 3 == 1:
            for pos in rng.integers(0, len(data), int(rng.choice([1, 10, 200]))):
                data[pos] ^= 1 << int(rng.integers(0, 8))
        else:
            start = int(rng.integers(0, len(data)))
            data[start:start + 4096] = bytes(len(data[start:start + 4096]))
        mcap.write_bytes(bytes(data))
        try:
            outcomes.add(len(_replayed(tmp_path / 'bag')[0]) > 0)
        except BagReplayError as exc:
            assert mcap.name in str(exc)
            outcomes.add('error')
    assert True in outcomes


# --------------------------------------------------------------------------------------------
# The node, in its own process, to a subscriber in this process
# --------------------------------------------------------------------------------------------

SUMMARY_RE = re.compile(
    r'summary: published=(\d+) skipped_corrupt=(\d+) skipped_unknown_type=(\d+) passes=(\d+) '
    r'elapsed_s=\S+ published_per_topic=(\{.*?\}) corrupt_per_topic=(\{.*?\}) '
    r'unknown_type_per_topic=(\{.*?\})')


def _summary(text: str) -> dict[str, object]:
    match = SUMMARY_RE.search(text)
    assert match, f'no summary line in:\n{text}'
    total, corrupt, unknown, passes = (int(match.group(i)) for i in range(1, 5))
    return {'published': total, 'corrupt': corrupt, 'unknown': unknown, 'passes': passes,
            'per_topic': json.loads(match.group(5)), 'corrupt_per_topic': json.loads(
                match.group(6)), 'unknown_per_topic': json.loads(match.group(7))}


class Probe:
    """Subscriptions in the test process; raw ones keep the exact bytes that arrived."""

    def __init__(self, context: object, raw_topics: dict[str, str], clock: bool = False) -> None:
        import importlib

        from rclpy.executors import SingleThreadedExecutor
        from rclpy.node import Node
        from rclpy.qos import QoSProfile

        self.node = Node('bag_replay_probe', context=context)
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        self.received: dict[str, list[bytes]] = {t: [] for t in raw_topics}
        qos = QoSProfile(depth=100)
        for topic, msgtype in raw_topics.items():
            pkg, _, name = msgtype.split('/')
            cls = getattr(importlib.import_module(pkg + '.msg'), name)
            self.node.create_subscription(cls, topic, self.received[topic].append, qos, raw=True)
        self.clock: list[int] = []
        if clock:
            from rosgraph_msgs.msg import Clock
            self.node.create_subscription(
                Clock, '/clock',
                lambda m: self.clock.append(m.clock.sec * 10**9 + m.clock.nanosec), qos)

    def spin_until(self, proc: subprocess.Popen, expected: dict[str, int],
                   timeout: float = 25.0) -> None:
        """Spin until every topic got its count, or the child has exited (plus a grace
        period for messages in flight), or the timeout; then drain briefly, because messages
        on different topics (/clock) may arrive in another order than they were sent."""
        deadline = time.monotonic() + timeout
        exited_at = None
        while time.monotonic() < deadline:
            self.executor.spin_once(timeout_sec=0.05)
            if all(len(self.received[t]) >= n for t, n in expected.items()):
                break
            if proc.poll() is not None:
                exited_at = exited_at or time.monotonic()
                if time.monotonic() - exited_at > 2.0:
                    break
        drain_until = time.monotonic() + 0.5
        while time.monotonic() < drain_until:
            self.executor.spin_once(timeout_sec=0.05)

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()


def _unpadded(received: list[bytes], written: list[Written]) -> list[bytes]:
    """The received payloads without the 0-3 zero bytes DDS adds to reach a multiple of 4
    (rosbags writes the unpadded CDR); any other difference is kept and so fails the test."""
    out = []
    for got, w in zip(received, written, strict=False):
        n = len(w.data)
        tail = got[n:]
        out.append(got[:n] if len(got) % 4 == 0 and len(tail) < 4 and not any(tail) else got)
    return out + received[len(written):]


def _finish(proc: subprocess.Popen) -> tuple[int, str]:
    out, err = proc.communicate(timeout=25)
    return proc.returncode, out + err


@pytest.mark.ros
@pytest.mark.parametrize('storage', STORAGES)
def test_node_replays_every_good_record_bit_exactly(storage: str, tmp_path: Path,
                                                    rclpy_context, spawn_python) -> None:
    path = tmp_path / f'bag_{storage}'
    written = write_bag(path, storage)
    probe = Probe(rclpy_context, {IMAGE: 'sensor_msgs/msg/Image',
                                  '/replayed/info': 'sensor_msgs/msg/CameraInfo'}, clock=True)
    try:
        proc = spawn_python(args=[
            '-m', 'rmseg_ros.nodes.bag_replay_node', '--ros-args',
            '-p', f'bag:={path}', '-p', 'rate:=10', '-p', 'publish_clock:=true',
            '-p', f'remap:=["{INFO}:=/replayed/info"]',
            '-p', 'wait_for_subscribers:=1', '-p', 'wait_for_subscribers_timeout:=20.0'])
        probe.spin_until(proc, {IMAGE: N_IMAGES, '/replayed/info': N_INFOS})
        code, output = _finish(proc)
    finally:
        probe.close()
    assert code == 0, output
    images, infos = good(written, (IMAGE,)), good(written, (INFO,))
    # every good record, in order, with exactly the recorded bytes (so stamps and data too)
    assert _unpadded(probe.received[IMAGE], images) == [w.data for w in images], output
    assert _unpadded(probe.received['/replayed/info'], infos) == [w.data for w in infos], output
    stamps = [(m.header.stamp.sec, m.header.stamp.nanosec) for m in (
        TS.deserialize_cdr(b, 'sensor_msgs/msg/Image') for b in probe.received[IMAGE])]
    assert stamps == [w.stamp for w in images]
    summary = _summary(output)
    assert summary['per_topic'] == {IMAGE: N_IMAGES, '/replayed/info': N_INFOS}
    assert summary['corrupt_per_topic'] == {IMAGE: 1}
    assert summary['unknown_per_topic'] == {TF: N_TFS}  # tf2_msgs is not importable here
    assert output.count('tf2_msgs/msg/TFMessage cannot be published here') == 1
    assert 'skipping corrupt record on /camera/image' in output
    assert 'start: bag=' in output and 'rate=10' in output
    # /clock carried the recorded log times of the published records, ending with the last one
    published_log_times = [w.log_ns for w in images + infos]
    assert probe.clock, output
    assert set(probe.clock) <= set(published_log_times)
    assert probe.clock == sorted(probe.clock)
    assert probe.clock[-1] == max(published_log_times)


@pytest.mark.ros
def test_node_cli_options_select_topics_and_start_offset(tmp_path: Path, rclpy_context,
                                                         spawn_python) -> None:
    path = tmp_path / 'bag_mcap'
    written = write_bag(path, 'mcap')
    probe = Probe(rclpy_context, {'/rgb': 'sensor_msgs/msg/Image'})
    try:
        proc = spawn_python(args=[
            '-m', 'rmseg_ros.nodes.bag_replay_node', str(path), '--rate', '20',
            '--topics', 'camera/image', '--remap', f'{IMAGE}:=/rgb', '--start-offset', '1.0',
            '--wait-for-subscribers', '1', '--wait-timeout', '20'])
        expected = good(written, (IMAGE,), T0 + 10**9)
        probe.spin_until(proc, {'/rgb': len(expected)})
        code, output = _finish(proc)
    finally:
        probe.close()
    assert code == 0, output
    assert _unpadded(probe.received['/rgb'], expected) == [w.data for w in expected], output
    summary = _summary(output)
    assert summary['per_topic'] == {'/rgb': len(expected)}
    assert summary['corrupt'] == 0 and summary['unknown'] == 0


@pytest.mark.ros
@pytest.mark.parametrize('case', ['garbage_metadata', 'garbage_storage'])
def test_node_exits_nonzero_naming_a_corrupt_bag_file(case: str, tmp_path: Path,
                                                      spawn_python) -> None:
    path = tmp_path / 'bag'
    write_bag(path, 'mcap')
    name = _corrupt(path, 'mcap', case)
    proc = spawn_python(args=['-m', 'rmseg_ros.nodes.bag_replay_node', '--ros-args',
                              '-p', f'bag:={path}'])
    code, output = _finish(proc)
    assert code == 2, output
    assert 'cannot start' in output and name in output, output


def test_node_help_lists_the_options() -> None:
    import sys
    out = subprocess.run([sys.executable, '-m', 'rmseg_ros.nodes.bag_replay_node', '--help'],
                         capture_output=True, text=True, timeout=60,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 0, out.stderr
    for option in ('--rate', '--loop', '--start-offset', '--topics', '--remap', '--clock',
                   '--wait-for-subscribers'):
        assert option in out.stdout


@pytest.mark.ros
def test_node_loops_until_terminated_then_reports(tmp_path: Path, rclpy_context,
                                                  spawn_python) -> None:
    path = tmp_path / 'bag_sqlite3'
    written = write_bag(path, 'sqlite3')
    infos = good(written, (INFO,))
    probe = Probe(rclpy_context, {INFO: 'sensor_msgs/msg/CameraInfo'})
    try:
        proc = spawn_python(args=[
            '-m', 'rmseg_ros.nodes.bag_replay_node', '--ros-args', '-p', f'bag:={path}',
            '-p', f'topics:=["{INFO}"]', '-p', 'loop:=true', '-p', 'rate:=20.0',
            '-p', 'wait_for_subscribers:=1', '-p', 'wait_for_subscribers_timeout:=20.0'])
        probe.spin_until(proc, {INFO: 2 * N_INFOS + 1})
        assert proc.poll() is None  # a looping replay does not end by itself
        proc.terminate()
        code, output = _finish(proc)
    finally:
        probe.close()
    assert code == 0, output
    got = probe.received[INFO]
    assert len(got) > 2 * N_INFOS, output
    cycle = [w.data for w in infos]
    assert _unpadded(got[:2 * N_INFOS + 1], (infos * 3)[:2 * N_INFOS + 1]) == \
        (cycle * 3)[:2 * N_INFOS + 1]
    summary = _summary(output)
    assert summary['passes'] >= 2
    assert summary['per_topic'][INFO] >= len(got)


def test_cli_and_ros_arguments_are_told_apart() -> None:
    from rmseg_ros.nodes.bag_replay_node import build_parser, cli_to_parameters, split_ros_args

    ours, ros = split_ros_args(['/b', '--remap', '/a:=/c', '--ros-args', '-p', 'rate:=2', '--',
                                '--loop', '--ros-args', '-r', '__ns:=/x'])
    assert ours == ['/b', '--remap', '/a:=/c', '--loop']
    assert ros == ['--ros-args', '-p', 'rate:=2', '--', '--ros-args', '-r', '__ns:=/x']
    params = {p.name: p.value for p in cli_to_parameters(build_parser().parse_args(ours))}
    assert params == {'bag': '/b', 'remap': ['/a:=/c'], 'loop': True}


def test_message_classes_are_resolved() -> None:
    from sensor_msgs.msg import Image

    from rmseg_ros.nodes.bag_replay_node import resolve_message_class

    assert resolve_message_class('sensor_msgs/msg/Image') == (Image, '')
    assert resolve_message_class('sensor_msgs/Image')[0] is Image
    for unavailable in ('tf2_msgs/msg/TFMessage', 'sensor_msgs/msg/NoSuchThing', 'garbage'):
        cls, why = resolve_message_class(unavailable)
        assert cls is None and why


def test_a_folder_of_recordings_plays_the_first_and_names_the_rest(tmp_path: Path) -> None:
    first = write_bag(tmp_path / 'demo' / 'test' / 'scene_1', 'mcap')
    write_bag(tmp_path / 'demo' / 'train' / 'scene_2', 'sqlite3')
    with BagReplay(tmp_path / 'demo', topics=[IMAGE]) as replay:
        assert replay.requested == tmp_path / 'demo'
        assert replay.path == tmp_path / 'demo' / 'test' / 'scene_1'
        assert replay.other_bags == [tmp_path / 'demo' / 'train' / 'scene_2']
        assert [r.data for r in replay.records()] == [w.data for w in good(first, (IMAGE,))]
    (tmp_path / 'empty' / 'sub').mkdir(parents=True)
    with pytest.raises(BagReplayError, match=r'metadata\.yaml'):
        BagReplay(tmp_path / 'empty').open()
