"""Reading what is left of a truncated or damaged mcap recording (rosbags' reader, made tolerant).

Why one long module: the mcap record scanner and the tolerant reader built on it share the
record layout and the damage counters.

A recorder killed mid-write leaves an mcap file without its summary and footer, and `rosbags`
then refuses the whole file; a few damaged bytes inside one chunk stop its message iteration.
Every complete chunk of such a file is still good data. `RecoveringMcapReader` is rosbags'
`McapReader` with two changes:
- when the summary (index) cannot be read, the file is scanned record by record from its
  start (mcap: magic, then records of opcode u8 + length u64 + body; Chunk records hold the
  schema, channel and message records, optionally lz4/zstd compressed) and the index is rebuilt
  from the complete chunks; damaged bytes are skipped up to the next plausible Chunk record;
- a chunk that cannot be decompressed, fails its CRC, or holds a broken record is skipped (the
  messages before the broken record are kept) instead of ending the iteration.
What was skipped is counted in `damage` (`McapDamage`). A file whose header is not mcap, or in
which not one complete chunk or message remains, is still an error.

`RecoveringReader` (rosbag2 directory or .mcap file) and `open_any_reader` (rosbags'
AnyReader) use it for mcap storage; sqlite3 storage is read as before.
"""

from __future__ import annotations

import heapq
import logging
import struct
import sys
from binascii import crc32
from collections.abc import Collection, Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from lz4.frame import LZ4FrameDecompressor
from rosbags.highlevel import AnyReader
from rosbags.interfaces import Connection, ConnectionExtRosbag2
from rosbags.rosbag2 import Reader
from rosbags.rosbag2.errors import ReaderError
from rosbags.rosbag2.reader import DirectoryReader
from rosbags.rosbag2.storage_mcap import (
    MAXSIZE,
    Channel,
    McapReader,
    Schema,
    Statistics,
    get_msgdef,
    get_qos,
)

if sys.version_info >= (3, 14):
    from compression import zstd
else:  # as rosbags does
    from backports import zstd

__all__ = ['McapDamage', 'RecoveringMcapReader', 'RecoveringReader', 'damage_of',
           'open_any_reader']

log = logging.getLogger(__name__)

MAGIC = b'\x89MCAP0\r\n'
OP_HEADER, OP_FOOTER, OP_SCHEMA, OP_CHANNEL, OP_MESSAGE, OP_CHUNK = 1, 2, 3, 4, 5, 6
_KNOWN_OPS = frozenset(range(0x01, 0x11))
_U16, _U32, _U64 = struct.Struct('<H'), struct.Struct('<I'), struct.Struct('<Q')
_CHUNK_HEAD = struct.Struct('<QQQI')  # start, end, uncompressed size, crc
_MESSAGE_HEAD = struct.Struct('<HIQQ')  # channel, sequence, log time, publish time
_MAX_DETAILS = 20
_SCAN_BLOCK = 1 << 20
#: A chunk declaring more than this is taken for damage (recorders write chunks of a few MiB);
#: it bounds what one damaged size field can make the reader allocate.
MAX_CHUNK_BYTES = 1 << 30


@dataclass
class McapDamage:
    """What a tolerant read of one mcap file had to skip."""

    index_rebuilt: str = ''  # why the summary was not used ('' when it was)
    chunks_skipped: int = 0  # chunks whose data could not be read at all
    chunks_partial: int = 0  # chunks read up to a broken record
    records_skipped: int = 0  # messages known to be lost (from the index, where there is one)
    bytes_skipped: int = 0  # damaged or incomplete bytes passed over while scanning
    truncated: bool = False  # the file ends inside a record (a killed recorder)
    details: list[str] = field(default_factory=list)

    @property
    def any(self) -> bool:
        return bool(self.index_rebuilt or self.chunks_skipped or self.chunks_partial
                    or self.records_skipped or self.bytes_skipped or self.truncated)

    def note(self, text: str) -> None:
        if len(self.details) < _MAX_DETAILS:
            self.details.append(text)
        log.warning('%s', text)

    def add(self, other: McapDamage) -> None:
        self.index_rebuilt = self.index_rebuilt or other.index_rebuilt
        self.chunks_skipped += other.chunks_skipped
        self.chunks_partial += other.chunks_partial
        self.records_skipped += other.records_skipped
        self.bytes_skipped += other.bytes_skipped
        self.truncated = self.truncated or other.truncated
        self.details.extend(other.details[:max(0, _MAX_DETAILS - len(self.details))])

    def summary(self) -> str:
        parts = []
        if self.index_rebuilt:
            parts.append(f'index rebuilt by scanning ({self.index_rebuilt})')
        if self.truncated:
            parts.append('file truncated')
        parts.append(f'{self.chunks_skipped} chunks skipped, {self.chunks_partial} read in part, '
                     f'{self.records_skipped} messages known lost, {self.bytes_skipped} bytes '
                     'skipped')
        return '; '.join(parts)


@dataclass(frozen=True)
class _Chunk:
    offset: int  # of the Chunk record (its opcode byte)
    start: int  # message log time range
    end: int
    counts: dict[int, int]  # messages per channel (from the index, or counted while scanning)


def _string(body: bytes, pos: int) -> tuple[str, int]:
    (n,) = _U32.unpack_from(body, pos)
    pos += 4
    if pos + n > len(body):
        raise ValueError('string runs past its record')
    return body[pos:pos + n].decode(), pos + n


def _decompress(data: bytes, compression: str, size: int) -> bytes:
    """Decompress at most `size` + 1 bytes, whatever sizes a damaged frame header declares."""
    if compression == '':
        return data
    out = []
    n = 0
    while data and n <= size:
        d = zstd.ZstdDecompressor() if compression == 'zstd' else LZ4FrameDecompressor()
        out.append(d.decompress(data, max_length=size + 1 - n))
        n += len(out[-1])
        if not d.eof:
            break
        data = d.unused_data  # several frames in one chunk
    return b''.join(out)


def _chunk_payload(body: bytes) -> tuple[int, int, bytes]:
    """(start, end, decompressed records) of a Chunk record's body; raises on any damage."""
    start, end, size, crc = _CHUNK_HEAD.unpack_from(body, 0)
    compression, pos = _string(body, _CHUNK_HEAD.size)
    if compression not in ('', 'zstd', 'lz4'):
        raise ValueError(f'unknown chunk compression {compression!r}')
    if size > MAX_CHUNK_BYTES:
        raise ValueError(f'implausible chunk size {size}')
    (csize,) = _U64.unpack_from(body, pos)
    pos += 8
    if pos + csize > len(body):
        raise ValueError('compressed data runs past its chunk record')
    raw = _decompress(body[pos:pos + csize], compression, size)
    if len(raw) != size:
        raise ValueError(f'chunk holds {len(raw)} bytes, its header says {size}')
    if crc and crc32(raw) != crc:
        raise ValueError('chunk checksum mismatch')
    return start, end, raw


def _records(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(opcode, body) of the records in a chunk; ValueError at the first broken one."""
    pos, n = 0, len(data)
    while pos < n:
        if n - pos < 9:
            raise ValueError(f'record header cut at byte {pos} of the chunk')
        op = data[pos]
        (length,) = _U64.unpack_from(data, pos + 1)
        if op not in _KNOWN_OPS or pos + 9 + length > n:
            raise ValueError(f'broken record (opcode {op}, length {length}) at byte {pos} '
                             'of the chunk')
        yield op, data[pos + 9:pos + 9 + length]
        pos += 9 + length


class RecoveringMcapReader(McapReader):
    """rosbags' mcap storage reader that reads around truncation and damage (module doc)."""

    def __init__(self, path: Any) -> None:
        super().__init__(path)
        self.damage = McapDamage()
        self._index: list[_Chunk] = []
        self._loose: list[tuple[int, int, int, int]] = []  # unchunked: time, offset, size, channel
        self._counted: set[int] = set()  # damaged chunks already counted (a loop reads again)
        self._size = 0

    # -- opening ---------------------------------------------------------------------------
    def _check_header(self) -> None:
        """The start of the file must be mcap (ros2 profile): otherwise no recovery applies."""
        assert self.bio
        self.bio.seek(0)
        head = self.bio.read(8)
        if not head:
            raise ReaderError(f'File {str(self.path)!r} seems to be empty.')
        if head != MAGIC:
            raise ReaderError('File magic is invalid.')
        rec = self.bio.read(9)
        if len(rec) < 9 or rec[0] != OP_HEADER:
            raise ReaderError('Unexpected record.')
        (length,) = _U64.unpack_from(rec, 1)
        body = self.bio.read(min(length, 1 << 16))
        try:
            profile, _ = _string(body, 0)
        except (ValueError, struct.error, UnicodeDecodeError):
            raise ReaderError('Truncated or damaged mcap header record.') from None
        if profile != 'ros2':
            raise ReaderError('Profile is not ros2.')
        self.data_start = 8 + 9 + length

    def _open(self) -> None:
        self._check_header()
        assert self.bio
        self._size = self.bio.seek(0, 2)
        self.bio.seek(0)
        try:
            super()._open()
        except Exception as exc:  # a missing or damaged summary fails in many ways
            self._reset()
            self._scan(f'{type(exc).__name__}: {exc}')
            return
        self._index = [_Chunk(c.chunk_start_offset, c.message_start_time, c.message_end_time,
                              dict(c.channel_count)) for c in self.chunks]

    def _reset(self) -> None:
        self.schemas.clear()
        self.channels.clear()
        self.chunks.clear()
        self.connections.clear()
        self.statistics = None
        self._index = []
        self._loose = []

    # -- scanning --------------------------------------------------------------------------
    def _add_schema(self, body: bytes) -> None:
        (key,) = _U16.unpack_from(body, 0)
        name, pos = _string(body, 2)
        encoding, pos = _string(body, pos)
        data, _ = _string(body, pos)
        self.schemas[key] = Schema(key, name, encoding, data)

    def _add_channel(self, body: bytes) -> None:
        key, schema_id = struct.unpack_from('<HH', body, 0)
        topic, pos = _string(body, 4)
        encoding, pos = _string(body, pos)
        (n,) = _U32.unpack_from(body, pos)
        metadata = body[pos + 4:pos + 4 + n]
        schema = self.schemas.get(schema_id, Schema(0, '__schemaless__', 'cdr', ''))
        self.channels[key] = Channel(key, schema.name, topic, encoding, metadata)
        if all(c.id != key for c in self.connections):
            self.connections.append(Connection(
                key, topic, schema.name, get_msgdef(self.schemas.get(schema_id)), '', 0,
                ConnectionExtRosbag2(encoding, get_qos(metadata)), self))

    def _plausible_chunk(self, pos: int, size: int) -> bool:
        """Whether a Chunk record could start at `pos` (to resynchronise after damage)."""
        assert self.bio
        self.bio.seek(pos)
        head = self.bio.read(9 + _CHUNK_HEAD.size + 4 + 8)
        if len(head) < 9 + _CHUNK_HEAD.size + 4 or head[0] != OP_CHUNK:
            return False
        (length,) = _U64.unpack_from(head, 1)
        start, end, _, _ = _CHUNK_HEAD.unpack_from(head, 9)
        (clen,) = _U32.unpack_from(head, 9 + _CHUNK_HEAD.size)
        return 40 <= length <= min(size - pos - 9, MAX_CHUNK_BYTES) and start <= end and clen <= 4

    def _resync(self, pos: int, size: int) -> int:
        """Offset of the next plausible Chunk record after `pos`, or `size`."""
        assert self.bio
        at = pos + 1
        while at < size:
            self.bio.seek(at)
            block = self.bio.read(_SCAN_BLOCK)
            k = block.find(bytes([OP_CHUNK]))
            while k >= 0:
                if self._plausible_chunk(at + k, size):
                    return at + k
                k = block.find(bytes([OP_CHUNK]), k + 1)
            at += len(block)
        return size

    def _scan_chunk(self, pos: int, body: bytes) -> None:
        try:
            start, end, data = _chunk_payload(body)
        except Exception as exc:
            self.damage.chunks_skipped += 1
            self.damage.note(f'{self.path}: chunk at byte {pos} skipped: '
                             f'{type(exc).__name__}: {exc}')
            return
        counts: dict[int, int] = {}
        first, last = MAXSIZE, 0
        try:
            for op, rec in _records(data):
                if op == OP_SCHEMA:
                    self._add_schema(rec)
                elif op == OP_CHANNEL:
                    self._add_channel(rec)
                elif op == OP_MESSAGE:
                    cid, _, t, _ = _MESSAGE_HEAD.unpack_from(rec, 0)
                    counts[cid] = counts.get(cid, 0) + 1
                    first, last = min(first, t), max(last, t)
        except Exception as exc:
            self._counted.add(pos)  # reading it later breaks at the same record: counted here
            self.damage.chunks_partial += 1
            self.damage.note(f'{self.path}: chunk at byte {pos} read in part: '
                             f'{type(exc).__name__}: {exc}')
        if counts:
            self._index.append(_Chunk(pos, min(start, first), max(end, last), counts))

    def _scan(self, why: str) -> None:
        """Rebuild schemas, channels and the chunk index from the records themselves."""
        assert self.bio
        bio = self.bio
        size = self._size
        self.damage.index_rebuilt = why
        self.damage.note(f'{self.path}: mcap summary unusable ({why}); scanning the records')
        pos = self.data_start
        while pos < size:
            bio.seek(pos)
            head = bio.read(9)
            if len(head) < 9:
                self.damage.truncated = True
                self.damage.bytes_skipped += size - pos
                break
            op = head[0]
            (length,) = _U64.unpack_from(head, 1)
            if op == OP_FOOTER and length == 20:
                break
            too_big = length > (MAX_CHUNK_BYTES if op == OP_CHUNK else 1 << 24
                                if op in (OP_SCHEMA, OP_CHANNEL) else MAXSIZE)
            if op not in _KNOWN_OPS or op == OP_FOOTER or length > size - pos - 9 or too_big:
                nxt = self._resync(pos, size)
                if nxt >= size and op in _KNOWN_OPS:  # a record cut by the end of the file
                    self.damage.truncated = True
                self.damage.bytes_skipped += nxt - pos
                self.damage.note(f'{self.path}: {nxt - pos} bytes from byte {pos} skipped '
                                 f'(no complete record: opcode {op}, length {length})')
                pos = nxt
                continue
            body = bio.read(length) if op in (OP_SCHEMA, OP_CHANNEL, OP_CHUNK) else b''
            try:
                if op == OP_CHUNK:
                    self._scan_chunk(pos, body)
                elif op == OP_SCHEMA:
                    self._add_schema(body)
                elif op == OP_CHANNEL:
                    self._add_channel(body)
                elif op == OP_MESSAGE and length >= _MESSAGE_HEAD.size:
                    cid, _, t, _ = _MESSAGE_HEAD.unpack_from(bio.read(_MESSAGE_HEAD.size), 0)
                    self._loose.append((t, pos, length, cid))
            except Exception as exc:
                self.damage.note(f'{self.path}: record at byte {pos} skipped: '
                                 f'{type(exc).__name__}: {exc}')
            pos += 9 + length
        self.data_end = pos
        self._finish_scan()

    def _finish_scan(self) -> None:
        counts: dict[int, int] = {}
        times = []
        for c in self._index:
            for cid, n in c.counts.items():
                counts[cid] = counts.get(cid, 0) + n
            times += [c.start, c.end]
        for t, _, _, cid in self._loose:
            counts[cid] = counts.get(cid, 0) + 1
            times.append(t)
        self._loose.sort()
        total = sum(counts.values())
        if not total:
            raise ReaderError(f'{self.path}: no complete chunk or message could be recovered '
                              f'({self.damage.summary()})')
        self.statistics = Statistics(total, len(self.schemas), len(self.channels), 0, 0,
                                     len(self._index), min(times), max(times), counts)
        self.connections = [c._replace(msgcount=counts.get(c.id, 0)) for c in self.connections]
        start, end = min(times), max(times)
        self.metadata = self.metadata._replace(duration=end - start + 1, start_time=start,
                                               end_time=end + 1, message_count=total)
        log.warning('%s: recovered %d messages in %d chunks; %s', self.path, total,
                    len(self._index), self.damage.summary())

    # -- reading ---------------------------------------------------------------------------
    def _chunk_messages(self, chunk: _Chunk, cmap: dict[int, Connection], start: int,
                        stop: int) -> Generator[tuple[int, int, Connection | None, bytes | None]]:
        """Messages of one chunk in time order; a damaged chunk yields what precedes the
        damage and is counted."""
        yield chunk.start, 0, None, None  # decompressed only when its turn comes (merge order)
        assert self.bio
        self.bio.seek(chunk.offset)
        head = self.bio.read(9)
        out = []
        try:
            if len(head) < 9 or head[0] != OP_CHUNK:
                raise ValueError('no chunk record at the indexed offset')
            (length,) = _U64.unpack_from(head, 1)
            if length > self._size - chunk.offset - 9:
                raise ValueError('chunk record runs past the end of the file')
            body = self.bio.read(length)
            _, _, data = _chunk_payload(body)
        except Exception as exc:
            if chunk.offset not in self._counted:
                self._counted.add(chunk.offset)
                self.damage.chunks_skipped += 1
                self.damage.records_skipped += sum(chunk.counts.values())
                self.damage.note(f'{self.path}: chunk at byte {chunk.offset} skipped: '
                                 f'{type(exc).__name__}: {exc}')
            return
        seen = 0
        try:
            for op, rec in _records(data):
                if op != OP_MESSAGE:
                    continue
                seen += 1
                cid, _, t, _ = _MESSAGE_HEAD.unpack_from(rec, 0)
                if start <= t < stop and cid in cmap:
                    out.append((t, chunk.offset, cmap[cid], rec[_MESSAGE_HEAD.size:]))
        except Exception as exc:
            if chunk.offset not in self._counted:
                self._counted.add(chunk.offset)
                self.damage.chunks_partial += 1
                self.damage.records_skipped += max(0, sum(chunk.counts.values()) - seen)
                self.damage.note(f'{self.path}: chunk at byte {chunk.offset} read in part '
                                 f'({seen} messages): {type(exc).__name__}: {exc}')
        out.sort(key=lambda m: m[0])
        yield from out

    def _loose_messages(self, cmap: dict[int, Connection], start: int, stop: int
                        ) -> Generator[tuple[int, int, Connection | None, bytes | None]]:
        assert self.bio
        for t, pos, length, cid in self._loose:
            if start <= t < stop and cid in cmap:
                self.bio.seek(pos + 9 + _MESSAGE_HEAD.size)
                yield t, pos, cmap[cid], self.bio.read(length - _MESSAGE_HEAD.size)

    def messages(self, connections: Collection[Connection], start: int | None = None,
                 stop: int | None = None) -> Generator[tuple[Connection, int, bytes]]:
        """Messages in log-time order (rosbags' contract), around damaged chunks."""
        assert self.bio
        if not self._index and not self._loose:
            try:  # an unchunked file with a valid summary: rosbags' own scan
                yield from super().messages(connections, start, stop)
            except Exception as exc:
                self.damage.note(f'{self.path}: reading stopped at damaged records: '
                                 f'{type(exc).__name__}: {exc}')
                self.damage.bytes_skipped += 1
            return
        lo = 0 if start is None else start
        hi = MAXSIZE if stop is None else stop
        cmap = {c.id: c for c in connections}
        sources = [self._chunk_messages(c, cmap, lo, hi) for c in self._index
                   if c.start < hi and lo <= c.end and any(c.counts.get(k) for k in cmap)]
        sources.append(self._loose_messages(cmap, lo, hi))
        for t, _, conn, data in heapq.merge(*sources, key=lambda m: (m[0], m[1] != 0)):
            if conn is None:
                continue
            assert data is not None
            yield conn, t, data


class _RecoveringDirectoryReader(DirectoryReader):
    STORAGE_PLUGINS = MappingProxyType({**DirectoryReader.STORAGE_PLUGINS,
                                        'mcap': RecoveringMcapReader})


class RecoveringReader(Reader):
    """rosbags' rosbag2 Reader whose mcap storage is a RecoveringMcapReader."""

    STORAGE_PLUGINS = MappingProxyType({**Reader.STORAGE_PLUGINS,
                                        'dir': _RecoveringDirectoryReader,
                                        '.mcap': RecoveringMcapReader})


def damage_of(reader: Reader | AnyReader) -> McapDamage:
    """Everything the mcap storages of an open (or finished) reader skipped so far."""
    total = McapDamage()
    readers = reader.readers if isinstance(reader, AnyReader) else [reader]
    for r in readers:
        storage = getattr(r, 'storage', None)
        for s in getattr(storage, 'storages', [storage]):
            if isinstance(s, RecoveringMcapReader):
                total.add(s.damage)
    return total


def open_any_reader(path: str | Path) -> AnyReader:
    """rosbags' AnyReader over one rosbag2 recording, reading mcap storage tolerantly (not yet
    opened: use it as a context manager)."""
    reader = AnyReader([Path(path)])
    reader.readers = [RecoveringReader(Path(path))]
    return reader
