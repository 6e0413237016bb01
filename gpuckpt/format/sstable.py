"""The ``.index`` file: an SSTable laid out exactly as TensorFlow's table builder does.

Layout (docs/format.md §3): data blocks, an empty metaindex block, an index block, a 48-byte
footer. Each block is followed by a type byte and a masked CRC32C. TensorFlow cuts data
blocks at 256 KiB, restarts key-prefix compression every 16 entries in data blocks and at
every entry in the index block, and shortens the index block's separator keys.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from ..errors import DataLossError, DataLossReason
from . import crc, varint

_BAD_INDEX = DataLossReason.BAD_INDEX  # the reason of every DataLossError this module raises

BLOCK_SIZE = 262144
DATA_RESTART_INTERVAL = 16
FOOTER_SIZE = 48
MAGIC = 0xDB4775248B80FB57
TRAILER_SIZE = 5
_NO_COMPRESSION = 0
_SNAPPY = 1
HOLE_CHECK_BYTES = 1 << 20  # blocks larger than this must not span a hole of a sparse file
KEY_EXPANSION = 32  # cap on the key bytes one block's prefix compression may build, per byte of block


def _common_prefix(a: bytes, b: bytes) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class _BlockBuilder:
    """Accumulates sorted entries with prefix compression and a restart array."""

    def __init__(self, restart_interval: int):
        self.interval = restart_interval
        self.buf = bytearray()
        self.restarts = [0]
        self.counter = 0
        self.last_key = b""

    def add(self, key: bytes, value: bytes) -> int:
        """Append an entry; return where its value starts in the block."""
        if self.counter < self.interval:
            shared = _common_prefix(self.last_key, key)
        else:
            shared = 0
            self.restarts.append(len(self.buf))
            self.counter = 0
        self.buf += varint.encode(shared) + varint.encode(len(key) - shared) + varint.encode(len(value))
        self.buf += key[shared:]
        start = len(self.buf)
        self.buf += value
        self.last_key = key
        self.counter += 1
        return start

    @property
    def empty(self) -> bool:
        return not self.buf

    def size_estimate(self) -> int:
        return len(self.buf) + 4 * len(self.restarts) + 4

    def finish(self) -> bytes:
        return bytes(self.buf) + struct.pack(f"<{len(self.restarts)}I", *self.restarts) + struct.pack(
            "<I", len(self.restarts)
        )


def shortest_separator(a: bytes, b: bytes) -> bytes:
    """A short key >= a and < b (LevelDB's bytewise FindShortestSeparator)."""
    i = _common_prefix(a, b)
    if i >= min(len(a), len(b)):
        return a
    if a[i] < 0xFF and a[i] + 1 < b[i]:
        return a[:i] + bytes([a[i] + 1])
    return a


def short_successor(a: bytes) -> bytes:
    """A short key >= a (LevelDB's bytewise FindShortSuccessor)."""
    for i, byte in enumerate(a):
        if byte != 0xFF:
            return a[:i] + bytes([byte + 1])
    return a


def _handle(offset: int, size: int) -> bytes:
    return varint.encode(offset) + varint.encode(size)


@dataclass
class TableLayout:
    """Where ``build_table`` put things, or ``read_table`` found them: each entry's value (offset in the
    table, in entry order) and each data block (offset, length of its body and type byte, which its
    trailing CRC covers)."""

    values: list[int] = field(default_factory=list)
    data_blocks: list[tuple[int, int]] = field(default_factory=list)


def build_table(entries: Iterable[tuple[bytes, bytes]], layout: TableLayout | None = None) -> bytes:
    """Serialize strictly increasing (key, value) pairs into TensorFlow's SSTable bytes
    (recording in ``layout``, if given, where each value and data block lies)."""
    out = bytearray()
    in_block: list[int] = []  # where the values of the current data block start in it
    data = _BlockBuilder(DATA_RESTART_INTERVAL)
    index = _BlockBuilder(1)
    pending_handle: bytes | None = None
    last_key: bytes | None = None

    def write_block(block: _BlockBuilder) -> bytes:
        body = block.finish()
        if layout is not None and block is data:
            layout.values.extend(len(out) + position for position in in_block)
            layout.data_blocks.append((len(out), len(body) + 1))
            in_block.clear()
        handle = _handle(len(out), len(body))
        out.extend(body)
        out.append(_NO_COMPRESSION)
        out.extend(struct.pack("<I", crc.masked_crc32c(body + bytes([_NO_COMPRESSION]))))
        return handle

    for key, value in entries:
        if last_key is not None and key <= last_key:
            raise ValueError(f"SSTable keys must be strictly increasing: {key!r} after {last_key!r}")
        if last_key is not None and len(key) + len(value) >= 2 * BLOCK_SIZE and not data.empty:
            pending_handle = write_block(data)
            data = _BlockBuilder(DATA_RESTART_INTERVAL)
        if pending_handle is not None:
            assert last_key is not None  # a block was written, so it held at least one key
            index.add(shortest_separator(last_key, key), pending_handle)
            pending_handle = None
        in_block.append(data.add(key, value))
        last_key = key
        if data.size_estimate() >= BLOCK_SIZE:
            pending_handle = write_block(data)
            data = _BlockBuilder(DATA_RESTART_INTERVAL)
    if not data.empty:
        pending_handle = write_block(data)
    metaindex_handle = write_block(_BlockBuilder(DATA_RESTART_INTERVAL))
    if pending_handle is not None:
        assert last_key is not None  # a block was written, so it held at least one key
        index.add(short_successor(last_key), pending_handle)
    index_handle = write_block(index)
    footer = metaindex_handle + index_handle
    out += footer + bytes(40 - len(footer)) + struct.pack("<Q", MAGIC)
    return bytes(out)


def _read_handle(buf, pos: int, limit: int, path: str | None) -> tuple[int, int, int]:
    offset, pos = varint.decode(buf, pos, limit, path=path, what="block handle")
    size, pos = varint.decode(buf, pos, limit, path=path, what="block handle")
    return offset, size, pos


class BytesSource:
    """A table held in memory, read like a file."""

    def __init__(self, data: bytes | memoryview):
        self._view = memoryview(data).cast("B")
        self.size = len(self._view)

    def read(self, offset: int, size: int) -> memoryview:
        return self._view[offset : offset + size]


class FileSource:
    """A table read from an open regular file: only the ranges asked for, each checked against the file's
    real length, and never across a hole (a sparse file's GiBs of nothing are not read into memory)."""

    def __init__(self, fd: int, size: int, path: str | None):
        self.fd, self.size, self.path = fd, size, path

    def read(self, offset: int, size: int) -> memoryview:
        if offset < 0 or size < 0 or offset + size > self.size:
            raise DataLossError(f"index file {self.path!r} is truncated or corrupt: range {offset} (+{size}) "
                                f"outside its {self.size} bytes", path=self.path, reason=_BAD_INDEX)
        if size > HOLE_CHECK_BYTES:
            self._refuse_holes(offset, size)
        out = bytearray(size)
        view = memoryview(out)
        while view:
            n = os.preadv(self.fd, [view], offset)
            if n == 0:
                raise DataLossError(f"index file {self.path!r} ended while reading it (it shrank)", path=self.path,
                                    reason=_BAD_INDEX)
            view, offset = view[n:], offset + n
        return memoryview(out)

    def _refuse_holes(self, offset: int, size: int) -> None:
        try:
            hole = os.lseek(self.fd, offset, os.SEEK_HOLE)
        except (OSError, AttributeError):
            return  # the file system cannot tell; the range is still bounded by the file's length
        if hole < offset + size:
            raise DataLossError(f"index file {self.path!r} is sparse: a block of {size} bytes at {offset} runs "
                                f"over a hole at {hole}, which no checkpoint writer leaves", path=self.path,
                                reason=_BAD_INDEX)


def read_block(table, offset: int, size: int, path: str | None) -> memoryview:
    """The CRC-checked bytes of one block; every bound is checked before use."""
    table = table if isinstance(table, FileSource | BytesSource) else BytesSource(table)
    end = offset + size
    if end + TRAILER_SIZE > table.size:
        raise DataLossError(
            f"index file {path!r} is truncated or corrupt: block at {offset} (+{size}) runs past its end",
            path=path,
            reason=_BAD_INDEX,
        )
    raw = table.read(offset, size + TRAILER_SIZE)
    kind = raw[size]
    (stored,) = struct.unpack_from("<I", raw, size + 1)
    actual = crc.mask(crc.crc32c(raw[size : size + 1], crc.crc32c(raw[:size])))
    if stored != actual:
        raise DataLossError(f"block checksum mismatch in index file {path!r} (block at offset {offset})", path=path,
                            reason=_BAD_INDEX)
    if kind == _SNAPPY:
        raise DataLossError(
            f"index file {path!r} has a Snappy-compressed block, which gpuckpt does not read", path=path,
            reason=_BAD_INDEX,
        )
    if kind != _NO_COMPRESSION:
        raise DataLossError(f"index file {path!r}: unknown block compression type {kind}", path=path, reason=_BAD_INDEX)
    return raw[:size]


def _iter_block(block: memoryview, path: str | None) -> Iterator[tuple[bytes, bytes]]:
    """The entries of one block (see :func:`_decode_block`)."""
    entries: list[tuple[bytes, bytes]] = []
    _decode_block(block, path, entries, ordered=False)
    return iter(entries)


def _decode_block(block: memoryview, path: str | None, out: list[tuple[bytes, bytes]], *, ordered: bool = True,
                  values_at: list[int] | None = None, at: int = 0) -> None:
    """Append the entries of one block to ``out``; ``ordered``: check that keys keep increasing after ``out``'s last;
    ``values_at``: append where each value starts in the file (the block starting at file offset ``at``).

    Prefix compression lets a few bytes name long keys, so the bytes of the keys built are capped at
    ``KEY_EXPANSION`` times the block (TF's restarts bound real tables far below). The loop is the
    restore's per-tensor hot path: one-byte varints (nearly all of them) are read inline.
    """
    size = len(block)
    if size < 4:
        raise DataLossError(f"corrupt block in index file {path!r}: too short for its restart count", path=path,
                            reason=_BAD_INDEX)
    (num_restarts,) = struct.unpack_from("<I", block, size - 4)
    limit = size - 4 * (num_restarts + 1)
    if num_restarts == 0 or limit < 0:
        raise DataLossError(f"corrupt block in index file {path!r}: bad restart array", path=path, reason=_BAD_INDEX)
    data = bytes(block[:limit])  # one copy: bytes index and slice faster than a memoryview
    budget = KEY_EXPANSION * size + 65536
    decode = varint.decode
    append = out.append
    last = out[-1][0] if out and ordered else None
    pos, key = 0, b""
    while pos < limit:
        shared = data[pos]
        if shared < 0x80:
            pos += 1
        else:
            shared, pos = decode(data, pos, limit, path=path, what="entry header")
        non_shared = data[pos] if pos < limit else 0x80
        if non_shared < 0x80:
            pos += 1
        else:
            non_shared, pos = decode(data, pos, limit, path=path, what="entry header")
        value_len = data[pos] if pos < limit else 0x80
        if value_len < 0x80:
            pos += 1
        else:
            value_len, pos = decode(data, pos, limit, path=path, what="entry header")
        if shared > len(key) or pos + non_shared + value_len > limit:
            raise DataLossError(f"corrupt entry in index file {path!r} at block offset {pos}", path=path,
                                reason=_BAD_INDEX)
        budget -= shared + non_shared
        if budget < 0:
            raise DataLossError(f"corrupt block in index file {path!r}: its shared key prefixes expand far "
                                "beyond the block's size", path=path, reason=_BAD_INDEX)
        key = key[:shared] + data[pos : pos + non_shared]
        pos += non_shared
        if last is not None and key <= last:
            raise DataLossError(f"index file {path!r} is corrupt: keys out of order at {key!r}", path=path,
                                reason=_BAD_INDEX)
        if ordered:
            last = key
        append((key, data[pos : pos + value_len]))
        if values_at is not None:
            values_at.append(at + pos)
        pos += value_len


def read_table(data, path: str | None = None, layout: TableLayout | None = None) -> list[tuple[bytes, bytes]]:
    """Decode every (key, value) of an SSTable, checking the footer, each block CRC and key order.

    ``data`` is the table's bytes or a :class:`FileSource`. The footer is read first, then only the
    blocks it names; data blocks must lie before the index block, in order and without overlap, so no
    byte of the file is read twice and memory stays bounded by the file's real length. ``layout``, if
    given, receives where the data blocks and the values lie in the file (as ``build_table`` fills it).
    """
    table = data if isinstance(data, FileSource | BytesSource) else BytesSource(data)
    if table.size < FOOTER_SIZE:
        raise DataLossError(f"{path!r} is not a checkpoint index: {table.size} bytes, shorter than a footer", path=path,
                            reason=_BAD_INDEX)
    footer_at = table.size - FOOTER_SIZE
    footer = table.read(footer_at, FOOTER_SIZE)
    (magic,) = struct.unpack_from("<Q", footer, FOOTER_SIZE - 8)
    if magic != MAGIC:
        raise DataLossError(f"{path!r} is not a checkpoint index (bad magic number)", path=path, reason=_BAD_INDEX)
    meta_offset, meta_size, pos = _read_handle(footer, 0, FOOTER_SIZE - 8, path)
    index_offset, index_size, _ = _read_handle(footer, pos, FOOTER_SIZE - 8, path)
    if index_offset + index_size + TRAILER_SIZE > footer_at or meta_offset + meta_size + TRAILER_SIZE > footer_at:
        raise DataLossError(f"index file {path!r} is corrupt: block handle out of range", path=path, reason=_BAD_INDEX)
    read_block(table, meta_offset, meta_size, path)  # unused, but its CRC guards the footer's first bytes
    entries: list[tuple[bytes, bytes]] = []
    index_block = read_block(table, index_offset, index_size, path)
    next_free = 0
    for _, handle in _iter_block(index_block, path):
        offset, size, _ = _read_handle(handle, 0, len(handle), path)
        if offset < next_free or offset + size + TRAILER_SIZE > index_offset:
            raise DataLossError(f"index file {path!r} is corrupt: data block handle out of range or out of order",
                                path=path, reason=_BAD_INDEX)
        next_free = offset + size + TRAILER_SIZE
        if layout is not None:
            layout.data_blocks.append((offset, size + 1))
        _decode_block(read_block(table, offset, size, path), path, entries,
                      values_at=None if layout is None else layout.values, at=offset)
    return entries
