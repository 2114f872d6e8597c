"""ROS-free core of the rosbag2 replay that stands in for `ros2 bag play` here.

It reads one rosbag2 recording (mcap or sqlite3 storage) with `rosbags`, selects topics, renames
them, validates every record by deserialising it, and tells *when* each record is due. The rclpy
shell (`rmseg_ros.nodes.bag_replay_node`) only creates publishers and publishes the raw CDR bytes,
so what goes out is bit-exactly what was recorded.

Timing: playback starts at `bag start + start_offset`; a record logged at `t` is due
`(t - play_start) / rate` seconds after playback began. With `loop`, pass k adds k times the loop
period (the played window's span plus its mean gap, so the first record of the next pass follows
the last one like any other record). A damaged record is skipped and counted, never fatal; mcap
storage is read with `rmseg_ros.bag_recovery`, so a truncated file (a killed recorder) or damaged
bytes cost only the chunks they hit, counted in `ReplayCounts` (damaged_*); a file that cannot be
read at all, or holds no complete chunk, raises `BagReplayError` naming the file.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Literal

import yaml
from rosbags.interfaces import MessageDefinitionFormat
from rosbags.typesys import Stores, get_types_from_idl, get_types_from_msg, get_typestore

from rmseg_ros.bag_recovery import RecoveringReader as Reader
from rmseg_ros.bag_recovery import damage_of

if TYPE_CHECKING:
    from rosbags.interfaces import Connection
    from rosbags.typesys.store import Typestore

NS_PER_S = 1_000_000_000
# Loop period used when the played window has no span (one record, or equal log times): a full
# second instead of zero, so looping such a window never spins.
DEFAULT_LOOP_PERIOD_NS = NS_PER_S

SkipReason = Literal['corrupt', 'unknown_type']


class BagReplayError(RuntimeError):
    """The recording (or one of its files) cannot be read; the message names the file."""


def due_offset_s(log_time_ns: int, play_start_ns: int, rate: float = 1.0, pass_index: int = 0,
                 loop_period_ns: int = 0) -> float:
    """Seconds after the start of playback at which a record logged at `log_time_ns` is due.

    Pure so that rate, offset and loop timing are unit-testable without a bag or ROS.
    """
    if not rate > 0.0:
        raise ValueError(f'rate must be > 0, got {rate}')
    if pass_index < 0 or loop_period_ns < 0:
        raise ValueError('pass_index and loop_period_ns must be >= 0')
    elapsed_ns = (log_time_ns - play_start_ns) + pass_index * loop_period_ns
    return elapsed_ns / (NS_PER_S * rate)


def loop_period_ns(first_ns: int, last_ns: int, count: int) -> int:
    """Length of one pass when looping: the window's span plus its mean gap between records."""
    if count < 2 or last_ns <= first_ns:
        return DEFAULT_LOOP_PERIOD_NS
    span = last_ns - first_ns
    return span + span // (count - 1)


def normalize_topic(name: str) -> str:
    """Bag topics are fully qualified; accept 'camera/image' for '/camera/image' in options."""
    name = name.strip()
    return name if name.startswith('/') else '/' + name


def parse_remap(items: Collection[str]) -> dict[str, str]:
    """Turn ['from:=to', ...] (the ROS remapping syntax) into {from: to}."""
    mapping: dict[str, str] = {}
    for item in items:
        if not item.strip():
            continue
        src, sep, dst = item.partition(':=')
        if not sep or not src.strip() or not dst.strip():
            raise ValueError(f"remap entry {item!r} is not of the form 'from:=to'")
        mapping[normalize_topic(src)] = dst.strip()
    return mapping


@dataclass(frozen=True)
class TopicSummary:
    """One topic of the recording as it will be replayed."""

    bag_topic: str
    topic: str  # after remapping
    msgtype: str  # e.g. 'sensor_msgs/msg/Image'
    count: int  # records in the whole bag (from its metadata)


@dataclass(frozen=True)
class ReplayRecord:
    topic: str  # after remapping
    bag_topic: str
    msgtype: str
    data: bytes  # CDR bytes exactly as recorded
    log_time_ns: int
    due_s: float  # seconds after the start of playback, already divided by the rate
    pass_index: int  # 0 for the first pass, k for the k-th repetition when looping


@dataclass(frozen=True)
class SkippedRecord:
    topic: str
    msgtype: str
    log_time_ns: int
    reason: SkipReason
    detail: str


@dataclass
class ReplayCounts:
    """What happened to the records, per output topic (why: the summary line and the tests)."""

    published: dict[str, int] = field(default_factory=dict)
    skipped_corrupt: dict[str, int] = field(default_factory=dict)
    skipped_unknown_type: dict[str, int] = field(default_factory=dict)
    passes: int = 0  # complete passes over the window
    # mcap storage read around damage (rmseg_ros.bag_recovery): chunks skipped or read in part,
    # messages known lost, bytes passed over, and whether the file was cut short
    damaged_chunks: int = 0
    damaged_records: int = 0
    damaged_bytes: int = 0
    truncated: bool = False

    @staticmethod
    def _bump(counter: dict[str, int], topic: str) -> None:
        counter[topic] = counter.get(topic, 0) + 1

    def add_published(self, topic: str) -> None:
        self._bump(self.published, topic)

    def add_skipped(self, topic: str, reason: SkipReason) -> None:
        self._bump(self.skipped_corrupt if reason == 'corrupt' else self.skipped_unknown_type,
                   topic)

    def set_damage(self, reader: Reader) -> None:
        d = damage_of(reader)
        self.damaged_chunks = d.chunks_skipped + d.chunks_partial
        self.damaged_records = d.records_skipped
        self.damaged_bytes = d.bytes_skipped
        self.truncated = d.truncated

    @property
    def total_published(self) -> int:
        return sum(self.published.values())

    @property
    def total_corrupt(self) -> int:
        return sum(self.skipped_corrupt.values())

    @property
    def total_unknown_type(self) -> int:
        return sum(self.skipped_unknown_type.values())


def build_typestore(connections: Collection[Connection]) -> tuple[Typestore, dict[str, str]]:
    """Type store to validate records: the bag's embedded definitions over ROS 2 Kilted's.

    The bag's own definitions win because its bytes were written to them. Returns the store and
    {msgtype: problem} for embedded definitions that could not be parsed (those fall back).
    """
    base = get_typestore(Stores.ROS2_KILTED)
    typs = dict(base.fielddefs)
    problems: dict[str, str] = {}
    sep = '=' * 80 + '\n'
    for conn in connections:
        msgdef = conn.msgdef
        if msgdef.format == MessageDefinitionFormat.NONE or not msgdef.data.strip():
            continue  # no definition (an empty text would define an empty message, wrongly)
        try:
            if msgdef.format == MessageDefinitionFormat.MSG:
                typs.update(get_types_from_msg(msgdef.data, conn.msgtype))
            elif msgdef.data.startswith(f'{sep}IDL: '):
                for block in msgdef.data.split(sep)[1:]:
                    typs.update(get_types_from_idl(block.split('\n', 1)[1]))
            else:
                typs.update(get_types_from_idl(msgdef.data))
        except Exception as exc:  # any parse failure means "use the defaults"
            problems[conn.msgtype] = f'{type(exc).__name__}: {exc}'
    store = get_typestore(Stores.EMPTY)
    try:
        store.register(typs)
    except Exception as exc:  # inconsistent embedded types: fall back to Kilted
        problems['*'] = f'embedded definitions ignored ({type(exc).__name__}: {exc})'
        store = base
    return store, problems


def _read_metadata_files(path: Path) -> list[Path]:
    """Check metadata.yaml ourselves so that a broken one is reported by name; return the
    storage files it lists."""
    meta = path / 'metadata.yaml'
    if not meta.is_file():
        raise BagReplayError(f'{path} is not a rosbag2 directory: {meta} does not exist (a '
                             'recording cut before it was written: give its .mcap file)')
    try:
        info = yaml.safe_load(meta.read_text(encoding='utf-8'))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise BagReplayError(f'corrupt rosbag2 metadata file {meta}: '
                             f'{type(exc).__name__}: {exc}') from None
    if not isinstance(info, dict) or not isinstance(
            info.get('rosbag2_bagfile_information'), dict):
        raise BagReplayError(f'corrupt rosbag2 metadata file {meta}: '
                             "no 'rosbag2_bagfile_information' mapping")
    files = info['rosbag2_bagfile_information'].get('relative_file_paths')
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
        raise BagReplayError(f"corrupt rosbag2 metadata file {meta}: bad 'relative_file_paths'")
    return [path / PurePath(f).name for f in files]


def find_bags(path: str | Path) -> list[Path]:
    """The rosbag2 recordings `path` names: itself when it is one (a directory with
    metadata.yaml, or a storage file), else every directory below it holding a metadata.yaml,
    sorted. Why: `make demo-bag` writes data/demo/test/scene_001000, users name data/demo."""
    path = Path(path)
    if not path.is_dir() or (path / 'metadata.yaml').is_file():
        return [path]
    return sorted(m.parent for m in path.rglob('metadata.yaml'))


class BagReplay:
    """One rosbag2 recording prepared for replay (use as a context manager or open()/close()).

    A folder holding recordings (not one itself) plays the first of them (sorted by path);
    `requested` keeps what was asked for and `other_bags` the ones not played.
    """

    def __init__(self, path: str | Path, *, topics: Collection[str] = (), rate: float = 1.0,
                 start_offset: float = 0.0, loop: bool = False,
                 remap: Mapping[str, str] | None = None, validate: bool = True,
                 on_skip: Callable[[SkippedRecord], None] | None = None) -> None:
        if not rate > 0.0:
            raise ValueError(f'rate must be > 0, got {rate}')
        if not start_offset >= 0.0:
            raise ValueError(f'start_offset must be >= 0 s, got {start_offset}')
        self.requested = self.path = Path(path)
        self.other_bags: list[Path] = []
        self.whitelist = [normalize_topic(t) for t in topics if t.strip()]
        self.rate = float(rate)
        self.start_offset = float(start_offset)
        self.loop = bool(loop)
        self.remap = {normalize_topic(k): v for k, v in (remap or {}).items()}
        self.validate = validate
        self.on_skip = on_skip
        self.counts = ReplayCounts()
        self.type_problems: dict[str, str] = {}
        self._reader: Reader | None = None
        self._typestore: Typestore | None = None
        self._storage_files: list[Path] = []

    # -- opening ---------------------------------------------------------------------------
    def _files_text(self) -> str:
        return ', '.join(str(f) for f in self._storage_files) or str(self.path)

    def open(self) -> None:
        """Open the recording; every way of failing becomes a BagReplayError naming the file."""
        if self._reader is not None:
            return
        if not self.path.exists():
            raise BagReplayError(f'bag {self.path} does not exist')
        bags = find_bags(self.requested)
        if not bags:
            raise BagReplayError(f'{self.requested} is not a rosbag2 directory: '
                                 f'{self.requested / "metadata.yaml"} does not exist, and no '
                                 'recording (a folder with metadata.yaml) is below it')
        self.path, self.other_bags = bags[0], bags[1:]
        self._storage_files = _read_metadata_files(self.path) if self.path.is_dir() \
            else [self.path]
        try:
            reader = Reader(self.path)
            reader.open()
        except Exception as exc:  # storage plugins raise many kinds
            raise BagReplayError(f'cannot read rosbag2 storage {self._files_text()}: '
                                 f'{type(exc).__name__}: {exc}') from None
        self._reader = reader
        try:
            self._typestore, self.type_problems = build_typestore(reader.connections)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self._reader is not None:
            reader, self._reader = self._reader, None
            reader.close()

    def __enter__(self) -> BagReplay:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def reader(self) -> Reader:
        if self._reader is None:
            raise RuntimeError('BagReplay is not open')
        return self._reader

    # -- what is in it ---------------------------------------------------------------------
    @property
    def start_time_ns(self) -> int:
        return self.reader.start_time if self.reader.message_count else 0

    @property
    def duration_s(self) -> float:
        """Log-time span of the whole recording in seconds (0 for an empty bag)."""
        if not self.reader.message_count:
            return 0.0
        return max(self.reader.end_time - 1 - self.reader.start_time, 0) / NS_PER_S

    @property
    def play_start_ns(self) -> int:
        return self.start_time_ns + round(self.start_offset * NS_PER_S)

    def output_topic(self, bag_topic: str) -> str:
        return self.remap.get(normalize_topic(bag_topic), bag_topic)

    @property
    def topics(self) -> dict[str, TopicSummary]:
        """Every topic in the recording (by bag name), whether selected or not."""
        out: dict[str, TopicSummary] = {}
        for name, info in self.reader.topics.items():
            msgtype = info.msgtype or info.connections[0].msgtype
            out[name] = TopicSummary(name, self.output_topic(name), msgtype, info.msgcount)
        return out

    def _selected(self, name: str) -> bool:
        return not self.whitelist or normalize_topic(name) in self.whitelist

    @property
    def selected_topics(self) -> list[TopicSummary]:
        """The topics that will be replayed (whitelist applied), sorted by bag name."""
        return [t for name, t in sorted(self.topics.items()) if self._selected(name)]

    @property
    def missing_topics(self) -> list[str]:
        """Whitelisted topics that the recording does not contain (worth a warning)."""
        have = {normalize_topic(name) for name in self.reader.topics}
        return [t for t in self.whitelist if t not in have]

    # -- reading ---------------------------------------------------------------------------
    def _window(self) -> Iterator[tuple[Connection, int, bytes]]:
        """Selected records at or after the playback start, in log-time order."""
        conns = [c for c in self.reader.connections if self._selected(c.topic)]
        if not conns:
            return
        try:
            yield from self.reader.messages(connections=conns, start=self.play_start_ns)
        except Exception as exc:  # damage found while reading the storage
            raise BagReplayError(f'cannot read rosbag2 storage {self._files_text()} '
                                 f'(failed while reading records): '
                                 f'{type(exc).__name__}: {exc}') from None

    def _skip(self, topic: str, conn: Connection, log_time_ns: int, reason: SkipReason,
              detail: str) -> None:
        self.counts.add_skipped(topic, reason)
        if self.on_skip is not None:
            self.on_skip(SkippedRecord(topic, conn.msgtype, log_time_ns, reason, detail))

    def _check(self, conn: Connection, log_time_ns: int, data: bytes, topic: str,
               skip_types: Collection[str]) -> bool:
        """True when the record may be published; otherwise count and report why not."""
        assert self._typestore is not None
        if conn.msgtype in skip_types:
            self._skip(topic, conn, log_time_ns, 'unknown_type', 'type cannot be published here')
            return False
        if not self.validate:
            return True
        if conn.msgtype not in self._typestore.types:
            self._skip(topic, conn, log_time_ns, 'unknown_type', 'no definition for this type')
            return False
        try:
            self._typestore.deserialize_cdr(data, conn.msgtype)
        except Exception as exc:  # a damaged record may fail in any way
            self._skip(topic, conn, log_time_ns, 'corrupt', f'{type(exc).__name__}: {exc}')
            return False
        return True

    def records(self, skip_types: Collection[str] = ()) -> Iterator[ReplayRecord]:
        """Valid records of the selected topics in log-time order, each with its due time.

        Records of a type in `skip_types` (types the consumer cannot publish) count as
        unknown-type skips. With `loop` this never ends unless the window is empty.
        """
        skip_types = frozenset(skip_types)
        play_start = self.play_start_ns
        period = 0
        pass_index = 0
        while True:
            first = last = None
            count = 0
            for conn, log_time, raw in self._window():
                first = log_time if first is None else first
                last = log_time
                count += 1
                topic = self.output_topic(conn.topic)
                data = raw if isinstance(raw, bytes) else bytes(raw)
                if not self._check(conn, log_time, data, topic, skip_types):
                    continue
                yield ReplayRecord(topic, conn.topic, conn.msgtype, data, log_time,
                                   due_offset_s(log_time, play_start, self.rate, pass_index,
                                                period),
                                   pass_index)
            self.counts.set_damage(self.reader)
            self.counts.passes += 1
            if not self.loop or count == 0:
                return
            if pass_index == 0:
                assert first is not None and last is not None
                period = loop_period_ns(first, last, count)
            pass_index += 1

    def play(self, publish: Callable[[ReplayRecord], None], *,
             skip_types: Collection[str] = (),
             clock: Callable[[], float] = time.monotonic,
             wait: Callable[[float], bool] | None = None) -> ReplayCounts:
        """Hand each record to `publish` when it is due, then count it as published.

        `wait(seconds)` sleeps and returns True when playback must stop (the semantics of
        `threading.Event.wait`); it is called before every record, with 0 when already late,
        so a stop request is seen even while catching up. Late records are not dropped.
        """
        if wait is None:
            wait = threading.Event().wait
        t0 = clock()
        for record in self.records(skip_types):
            if wait(max(t0 + record.due_s - clock(), 0.0)):
                break
            publish(record)
            self.counts.add_published(record.topic)
        return self.counts
