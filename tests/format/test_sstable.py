"""TensorFlow's SSTable layout: round trips, block cuts, separators, restarts, and rejection of bad bytes."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpuckpt.errors import DataLossError
from gpuckpt.format import sstable


def test_separators_follow_leveldb() -> None:
    assert sstable.shortest_separator(b"abcd", b"abzz") == b"abd"
    assert sstable.shortest_separator(b"abc", b"abd") == b"abc"  # a[i]+1 == b[i]: keep a
    assert sstable.shortest_separator(b"ab", b"abc") == b"ab"  # prefix: keep a
    assert sstable.short_successor(b"v/.ATTRIBUTES/VARIABLE_VALUE") == b"w"
    assert sstable.short_successor(b"\xff\xffa") == b"\xff\xffb"
    assert sstable.short_successor(b"\xff\xff") == b"\xff\xff"


@given(st.lists(st.tuples(st.binary(max_size=40), st.binary(max_size=60)), max_size=80))
def test_round_trip(pairs) -> None:
    table = sorted(dict(pairs).items())
    assert sstable.read_table(sstable.build_table(table)) == table


def test_many_keys_span_several_blocks_with_restarts_every_16() -> None:
    table = [(f"model/layer_{i:05d}/kernel/.ATTRIBUTES/VARIABLE_VALUE".encode(), b"x" * 30) for i in range(9000)]
    data = sstable.build_table(table)
    assert sstable.read_table(data) == table
    first_block_size = sstable.BLOCK_SIZE  # blocks are cut once they reach 256 KiB
    (num_restarts,) = struct.unpack_from("<I", data, _first_block_end(data) - 4)
    assert _first_block_end(data) >= first_block_size
    assert num_restarts == -(-_entries_in_first_block(data) // 16)


def _index_handles(data: bytes) -> list[tuple[int, int]]:
    footer = data[-48:]
    from gpuckpt.format import varint

    _, pos = varint.decode(footer, 0, 48)
    _, pos = varint.decode(footer, pos, 48)
    off, pos = varint.decode(footer, pos, 48)
    size, _ = varint.decode(footer, pos, 48)
    block = memoryview(data)[off : off + size]
    handles = []
    for _, value in sstable._iter_block(block, None):
        o, p = varint.decode(value, 0, len(value))
        s, _ = varint.decode(value, p, len(value))
        handles.append((o, s))
    return handles


def _first_block_end(data: bytes) -> int:
    offset, size = _index_handles(data)[0]
    return offset + size


def _entries_in_first_block(data: bytes) -> int:
    offset, size = _index_handles(data)[0]
    return sum(1 for _ in sstable._iter_block(memoryview(data)[offset : offset + size], None))


def test_empty_table_layout() -> None:
    data = sstable.build_table([])
    assert len(data) == 13 + 13 + 48 and sstable.read_table(data) == []


def test_unsorted_keys_rejected_when_writing() -> None:
    with pytest.raises(ValueError, match="strictly increasing"):
        sstable.build_table([(b"b", b""), (b"a", b"")])


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d[:20], "shorter than a footer"),
        (lambda d: d[:-1] + b"\x00", "bad magic"),
        (lambda d: bytes([d[0] ^ 1]) + d[1:], "checksum mismatch"),
        (lambda d: d[:5] + d[6:], "bad magic|checksum|corrupt|out of range"),
    ],
)
def test_corrupt_tables_rejected(mutate, message) -> None:
    data = sstable.build_table([(b"", b"\x08\x01"), (b"k", b"value")])
    with pytest.raises(DataLossError, match=message):
        sstable.read_table(mutate(data), "x.index")
