"""Bundle index records: the header and one ``BundleEntryProto`` per tensor (docs/format.md §4).

``BundleEntry`` is the plain-data form every other stage uses; ``build_index`` and
``parse_index`` convert between a table of entries and the bytes of a ``.index`` file.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import NamedTuple

from google.protobuf.message import DecodeError

from ..errors import DataLossError, DataLossReason
from . import dtypes, index_template, proto, sstable
from .dtypes import DType

_UNSUPPORTED_ENUMS = {20: "resource", 21: "variant"}
MAX_RANK = 64  # NumPy's limit; TensorFlow never writes more
MAX_TENSOR_BYTES = (1 << 63) - 1  # each dimension (zeros counted as one) times the item size must fit an index
MAX_SLICE_COMPARISONS = 10_000_000  # work bound of the slice-overlap check


@dataclass(frozen=True)
class Extent:
    """One dimension of a slice: ``[start, start + length)``; ``length=None`` is the whole dimension."""

    start: int
    length: int | None


class BundleEntry(NamedTuple):
    """Where and how one tensor (or one slice of it) is stored. ``crc32c`` is the masked CRC.

    A NamedTuple, not a frozen dataclass: an index holds one per tensor, and a tuple is one object for
    the cycle collector to track instead of two (the instance and its ``__dict__``), built by ``tuple.__new__``.
    """

    dtype: DType
    shape: tuple[int, ...]
    shard_id: int = 0
    offset: int = 0
    size: int = 0
    crc32c: int = 0
    slices: tuple[tuple[Extent, ...], ...] = ()

    @property
    def num_elements(self) -> int:
        return math.prod(self.shape)

    @property
    def is_sliced(self) -> bool:
        """True for the full entry of a partitioned tensor, whose bytes live in slice entries."""
        return bool(self.slices)


@dataclass(frozen=True)
class BundleIndex:
    """A parsed ``.index`` file: shard count, tensor entries by key, and slice entries by binary key."""

    num_shards: int
    entries: dict[str, BundleEntry]
    slice_entries: dict[bytes, BundleEntry]

    @cached_property
    def extents(self) -> dict[int, list[tuple[int, int, str]]]:
        """Per data shard, ``(offset, end, key)`` of every stored entry that holds bytes, by offset.

        Computed once, when the index is validated; the checks of the data files at open read it too."""
        out: dict[int, list[tuple[int, int, str]]] = {}
        for key, e in self.entries.items():
            if e.size and not e.slices:
                out.setdefault(e.shard_id, []).append((e.offset, e.offset + e.size, key))
        for raw, e in self.slice_entries.items():
            if e.size:
                out.setdefault(e.shard_id, []).append((e.offset, e.offset + e.size, repr(raw)))
        for ranges in out.values():
            ranges.sort()
        return out

    @cached_property
    def used_shards(self) -> frozenset[int]:
        """The shards named by stored entries (whole tensors and slice pieces, empty ones included)."""
        used = {e.shard_id for e in self.entries.values() if not e.slices}
        return frozenset(used.union(e.shard_id for e in self.slice_entries.values()))


def data_file_name(prefix: str, shard: int, num_shards: int) -> str:
    """``prefix.data-SSSSS-of-NNNNN``."""
    return f"{prefix}.data-{shard:05d}-of-{num_shards:05d}"


def encode_header(num_shards: int) -> bytes:
    header = proto.BundleHeaderProto(num_shards=num_shards)
    header.version.producer = 1
    return header.SerializeToString()


def encode_entry(entry: BundleEntry) -> bytes:
    """Serialize an entry with TensorFlow's field order and omissions."""
    msg = proto.BundleEntryProto(
        dtype=entry.dtype.enum,
        shard_id=entry.shard_id,
        offset=entry.offset,
        size=entry.size,
        crc32c=entry.crc32c,
    )
    msg.shape.SetInParent()
    for dim in entry.shape:
        msg.shape.dim.add(size=dim)
    for piece in entry.slices:
        sl = msg.slices.add()
        for ext in piece:
            if ext.length is None:
                sl.extent.add(start=ext.start)
            else:
                sl.extent.add(start=ext.start, length=ext.length)
    return msg.SerializeToString()


def build_index(num_shards: int, entries: Mapping[str | bytes, BundleEntry]) -> bytes:
    """The bytes of a ``.index`` file: the header under key ``""``, then entries in byte order."""
    items = [(k.encode("utf-8") if isinstance(k, str) else k, e) for k, e in entries.items()]
    items.sort(key=lambda kv: kv[0])
    table = [(b"", encode_header(num_shards))]
    table += [(key, encode_entry(entry)) for key, entry in items]
    return sstable.build_table(table)


def _decode_header(raw: bytes, path: str | None) -> int:
    try:
        header = proto.BundleHeaderProto.FromString(raw)
    except DecodeError as exc:
        raise DataLossError(f"corrupt bundle header in {path!r}: {exc}", path=path) from exc
    if header.endianness != 0:
        raise DataLossError(f"{path!r} is a big-endian bundle, which gpuckpt does not read", path=path)
    if header.version.min_consumer > 1 or 1 in header.version.bad_consumers:
        raise DataLossError(
            f"{path!r} needs a newer reader (min_consumer {header.version.min_consumer})", path=path
        )
    if header.num_shards < 1:
        raise DataLossError(f"corrupt bundle header in {path!r}: num_shards {header.num_shards}", path=path)
    return header.num_shards


def _corrupt(path: str | None, key: str | None, why: str) -> DataLossError:
    return DataLossError(f"corrupt entry for key {key!r} in {path!r}: {why}", path=path, key=key,
                         reason=DataLossReason.BAD_ENTRY)


_new = tuple.__new__
# enum -> (dtype, item size) of the dtypes whose entries take decode_entry's fast path
_NUMERIC = {e: (d, d.itemsize) for e, d in dtypes.BY_ENUM.items() if not d.is_string}


def _entry(dtype: DType, shape: tuple[int, ...], shard_id: int, offset: int, size: int, crc32c: int,
           slices: tuple[tuple[Extent, ...], ...]) -> BundleEntry:
    """A BundleEntry built without the generated ``__new__``'s argument handling (one entry per tensor)."""
    return _new(BundleEntry, (dtype, shape, shard_id, offset, size, crc32c, slices))


def decode_entry(raw: bytes, *, path: str | None = None, key: str | None = None) -> BundleEntry:
    """Parse and validate one ``BundleEntryProto``.

    The common entry (a whole numeric tensor of known rank) takes a short path with the same checks;
    everything else (strings, slices, anything malformed) goes through :func:`_decode_entry_full`.
    """
    try:
        msg = _ENTRY_FROM_STRING(raw)
    except DecodeError as exc:
        raise _corrupt(path, key, str(exc)) from exc
    known = _NUMERIC.get(msg.dtype)
    if known is None or msg.slices:
        return _decode_entry_full(msg, path, key)
    shape_msg = msg.shape
    dims = shape_msg.dim
    shape = tuple([d.size for d in dims]) if dims else ()
    count = math.prod(shape)
    dtype, itemsize = known
    shard_id, offset, size = msg.shard_id, msg.offset, msg.size
    if shape_msg.unknown_rank or count <= 0 or len(shape) > MAX_RANK or count * itemsize > MAX_TENSOR_BYTES \
            or (shard_id | offset | size) < 0 or size != count * itemsize or (shape and min(shape) < 0):
        return _decode_entry_full(msg, path, key)  # says what is wrong (or accepts an empty tensor)
    return _entry(dtype, shape, shard_id, offset, size, msg.crc32c, ())


def _decode_entry_full(msg, path: str | None, key: str | None) -> BundleEntry:
    """Every check of an entry, one by one, each with its own message."""

    def bad(why: str) -> DataLossError:
        return _corrupt(path, key, why)

    if msg.dtype in _UNSUPPORTED_ENUMS:
        raise bad(f"{_UNSUPPORTED_ENUMS[msg.dtype]} tensors are not supported")
    if msg.dtype not in dtypes.BY_ENUM:
        raise bad(f"unknown dtype enum {msg.dtype}")
    dtype = dtypes.BY_ENUM[msg.dtype]
    if msg.shape.unknown_rank or any(d.size < 0 for d in msg.shape.dim):
        raise bad("shape is unknown or negative")
    shape = tuple(d.size for d in msg.shape.dim)
    if len(shape) > MAX_RANK:
        raise bad(f"rank {len(shape)} exceeds {MAX_RANK}")
    if math.prod(max(d, 1) for d in shape) * max(dtype.itemsize, 1) > MAX_TENSOR_BYTES:
        raise bad(f"shape {list(shape)} of {dtype.name} is larger than any array can be")
    if msg.offset < 0 or msg.size < 0 or msg.shard_id < 0:
        raise bad("negative shard, offset or size")
    slices = tuple(
        tuple(Extent(e.start, e.length if e.HasField("length") else None) for e in sl.extent) for sl in msg.slices
    )
    entry = _entry(dtype, shape, msg.shard_id, msg.offset, msg.size, msg.crc32c, slices)
    if not slices and not dtype.is_string and entry.size != entry.num_elements * dtype.itemsize:
        raise bad(f"size {entry.size} does not match shape {list(shape)} of {dtype.name}")
    return entry


_ENTRY_FROM_STRING = proto.BundleEntryProto.FromString


def parse_index(data, path: str | None = None) -> BundleIndex:
    """Parse a ``.index`` file (its bytes, or an ``sstable.FileSource``) into a :class:`BundleIndex`.

    The whole index is validated here, once, before any tensor is touched: header, every entry,
    shard ids, the byte ranges of stored entries (no two overlap), and the slices of each partitioned
    tensor (each names a slice entry of its shape and dtype; together they cover the tensor exactly once).
    An index that differs from one of the last few parsed only in CRCs is rebuilt from that one's
    template instead (``index_template``): the same entries, already validated, its CRCs its own.
    """
    raw = index_template.whole_file(data)
    layout = None
    if raw is not None:
        reused = index_template.reuse(raw, path)
        if reused is not None:
            return reused
        data, layout = sstable.BytesSource(raw), sstable.TableLayout()
    table = sstable.read_table(data, path, layout)
    if not table or table[0][0] != b"":
        raise DataLossError(f"{path!r} has no bundle header entry", path=path)
    num_shards = _decode_header(table[0][1], path)
    entries: dict[str, BundleEntry] = {}
    slice_entries: dict[bytes, BundleEntry] = {}
    for raw_key, value in itertools.islice(table, 1, None):
        if raw_key[:1] == b"\x00":
            slice_entries[raw_key] = decode_entry(value, path=path, key=repr(raw_key))
            continue
        key = raw_key.decode("utf-8", errors="surrogateescape")
        entry = decode_entry(value, path=path, key=key)
        if entry.shard_id >= num_shards and not entry.slices:
            raise DataLossError(
                f"entry {key!r} in {path!r} names shard {entry.shard_id} of {num_shards}", path=path, key=key,
                reason=DataLossReason.BAD_ENTRY,
            )
        entries[key] = entry
    for slice_key, entry in slice_entries.items():
        if entry.shard_id >= num_shards:
            raise DataLossError(f"slice entry {slice_key!r} in {path!r} names shard {entry.shard_id}", path=path,
                                reason=DataLossReason.BAD_ENTRY)
    index = BundleIndex(num_shards, entries, slice_entries)
    validate_index(index, path)
    if raw is not None and layout is not None:
        index_template.remember(raw, layout, table, index)
    return index


def with_crc(entry: BundleEntry, crc32c: int) -> BundleEntry:
    """``entry`` with another CRC (built as :func:`_entry` builds entries)."""
    dtype, shape, shard_id, offset, size, _, slices = entry
    return _new(BundleEntry, (dtype, shape, shard_id, offset, size, crc32c, slices))


def stored_entries(index: BundleIndex) -> list[tuple[str, BundleEntry]]:
    """Every entry that holds bytes in a data file (whole tensors and slice pieces), named for messages."""
    out = [(key, e) for key, e in index.entries.items() if not e.is_sliced]
    return out + [(repr(key), e) for key, e in index.slice_entries.items()]


def validate_index(index: BundleIndex, path: str | None) -> None:
    """DataLossError unless stored byte ranges are disjoint and every partitioned tensor is covered once."""
    _check_disjoint_ranges(index, path)
    for key, entry in index.entries.items():
        if entry.slices:
            _check_slices(key, entry, index, path)


def _check_disjoint_ranges(index: BundleIndex, path: str | None) -> None:
    for shard in sorted(index.extents):
        end, key = 0, ""
        for start, next_end, next_key in index.extents[shard]:
            if start < end:
                raise DataLossError(f"entries {key!r} and {next_key!r} in {path!r} claim overlapping bytes of shard "
                                    f"{shard} (at {start}, before {end})", path=path, key=next_key,
                                    reason=DataLossReason.BAD_ENTRY)
            end, key = next_end, next_key


def _check_slices(key: str, entry: BundleEntry, index: BundleIndex, path: str | None) -> None:
    from .slices import slice_key  # slices imports this module

    def bad(why: str) -> DataLossError:
        return DataLossError(f"partitioned tensor {key!r} in {path!r}: {why}", path=path, key=key,
                             reason=DataLossReason.BAD_ENTRY)

    boxes: list[tuple[tuple[int, int], ...]] = []
    for extents in entry.slices:
        if len(extents) != len(entry.shape):
            raise bad(f"a slice has rank {len(extents)}, the tensor {len(entry.shape)}")
        box = []
        for ext, dim in zip(extents, entry.shape):
            length = dim - ext.start if ext.length is None else ext.length
            if ext.start < 0 or length < 0 or ext.start + length > dim:
                raise bad(f"a slice lies outside its shape {list(entry.shape)}")
            box.append((ext.start, ext.start + length))
        boxes.append(tuple(box))
    if len(set(boxes)) != len(boxes):
        raise bad("a slice is listed more than once")
    volume = sum(math.prod(hi - lo for lo, hi in b) for b in boxes)
    if volume != entry.num_elements:
        raise bad(f"its slices hold {volume} elements, its shape {list(entry.shape)} needs {entry.num_elements}")
    _check_boxes_disjoint(boxes, bad)
    for extents, bounds in zip(entry.slices, boxes):
        piece_key = slice_key(key, extents)
        piece = index.slice_entries.get(piece_key)
        shape = tuple(hi - lo for lo, hi in bounds)
        if piece is None:
            raise bad(f"its slice entry {piece_key!r} is missing")
        if piece.shape != shape or piece.dtype != entry.dtype:
            raise bad(f"slice entry {piece_key!r} holds {piece.dtype.name} {list(piece.shape)}, "
                      f"not {entry.dtype.name} {list(shape)}")


def _check_boxes_disjoint(boxes: list[tuple[tuple[int, int], ...]], bad) -> None:
    """Pairwise disjointness by a sweep along the dimension with the most distinct starts (grid
    partitions then compare each slice with few others); the work is capped."""
    if len(boxes) < 2 or not boxes[0]:
        return
    rank = len(boxes[0])
    dim = max(range(rank), key=lambda d: len({b[d][0] for b in boxes}))
    order = sorted((b for b in boxes if all(lo < hi for lo, hi in b)), key=lambda b: b[dim][0])
    work = 0
    for i, a in enumerate(order):
        for b in order[i + 1 :]:
            if b[dim][0] >= a[dim][1]:
                break
            work += 1
            if work > MAX_SLICE_COMPARISONS:
                raise bad(f"its {len(boxes)} slices are too entangled to check")
            if all(lo1 < hi2 and lo2 < hi1 for (lo1, hi1), (lo2, hi2) in zip(a, b)):
                raise bad(f"slices {list(a)} and {list(b)} overlap")
