"""Restore plans: which stored bytes go where. The twin of ``plan.build_save_plan``; pure functions over data.

A restore strategy (object-graph or name-based matching, or a distributed rank's layout) asks
for values with :class:`Request`\\ s: a checkpoint key, the dtype and shape the destination has
and, for a rank holding one block of a tensor, that block. :func:`build_restore_plan` checks
every request against the index (key present, dtype, shape, string or numeric, slices that
tile their tensor, bytes inside their data file) and lists the reads: each stored range once,
with its shard, file offset, length and stored CRC, and where its bytes go. All problems of
dtype or shape are reported together, before any byte is read, so a mismatch changes nothing.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from .errors import DataLossError, InvalidArgumentError, NotFoundError
from .format.bundle import BundleEntry, BundleIndex
from .format.dtypes import DType
from .format.slices import slice_key

Region = tuple[slice, ...]


class Request(NamedTuple):
    """One destination to fill from checkpoint key ``key``.

    ``dtype`` and ``shape`` are the destination's (for a block: the whole tensor's shape, which
    must equal the stored one); ``block`` is ``None`` for the whole tensor, else ``(offsets,
    lengths)`` of the part this destination holds. ``label`` names it in messages (its ``str``: a
    path, or a ``graph.NodeLabel`` rendered only when a message is written).

    A NamedTuple, not a frozen dataclass: a restore makes one per tensor, and this is 3x cheaper.
    """

    key: str
    label: Any
    dtype: DType
    shape: tuple[int, ...]
    block: tuple[tuple[int, ...], tuple[int, ...]] | None = None

    @property
    def dest_shape(self) -> tuple[int, ...]:
        return self.shape if self.block is None else self.block[1]


class ReadItem(NamedTuple):
    """One stored numeric range: ``length`` bytes at ``offset`` of ``shard`` with masked CRC ``crc32c``.

    ``src is None``: the range is request ``request``'s whole destination, read in place.
    Otherwise it is a stored block of shape ``block_shape`` read whole into a scratch buffer
    (its CRC covers all of it), of which ``src`` is copied into ``dst`` of the destination.
    A NamedTuple (one per tensor; see :class:`Request`).
    """

    request: int
    key: str
    shard: int
    offset: int
    length: int
    crc32c: int
    block_shape: tuple[int, ...]
    src: Region | None = None
    dst: Region | None = None

    @property
    def in_place(self) -> bool:
        return self.src is None


@dataclass(frozen=True)
class StringItem:
    """A string tensor's payload: decoded (and verified) on the host into request ``request``."""

    request: int
    key: str
    shard: int
    offset: int
    length: int
    crc32c: int
    shape: tuple[int, ...]


@dataclass(frozen=True)
class RestorePlan:
    """Every read of one restore, numeric ones in file order."""

    requests: tuple[Request, ...]
    reads: tuple[ReadItem, ...]
    strings: tuple[StringItem, ...]

    @property
    def total_bytes(self) -> int:
        return sum(r.length for r in self.reads) + sum(s.length for s in self.strings)

    def reads_of(self, request: int) -> tuple[ReadItem, ...]:
        return tuple(r for r in self.reads if r.request == request)


def build_restore_plan(index: BundleIndex, requests: Sequence[Request], shard_size: Callable[[int], int], *,
                       prefix: str = "", shard_path: Callable[[int], str] | None = None) -> RestorePlan:
    """Check ``requests`` against ``index`` and list their reads (see the module docstring).

    ``shard_size(shard)`` gives a data file's size (NotFoundError when it is missing), ``shard_path``
    its name for messages.
    InvalidArgumentError lists every dtype or shape mismatch; DataLossError names a key whose
    bytes cannot be where the index says; nothing is read here.
    """
    entries = index.entries
    found = _entries_checked(entries, requests, prefix)
    bounds = _Bounds(shard_size, shard_path)
    reads: list[ReadItem] = []
    strings: list[StringItem] = []
    sizes = bounds.sizes
    append, new = reads.append, tuple.__new__
    for i, (r, entry) in enumerate(zip(requests, found)):
        if not entry.slices and r.block is None and entry.dtype.numpy is not None:
            # the common case: one whole numeric tensor, read in place
            size = sizes.get(entry.shard_id)
            if size is None or entry.offset + entry.size > size:
                bounds.check(entry, r.key)
            append(new(ReadItem, (i, r.key, entry.shard_id, entry.offset, entry.size, entry.crc32c, entry.shape,
                                  None, None)))  # without ReadItem's generated __new__: one per tensor
            continue
        if entry.dtype.is_string:
            if entry.is_sliced or r.block is not None:
                raise InvalidArgumentError(f"key {r.key!r} ({r.label}): sliced or sharded string tensors are not "
                                           "supported", path=prefix, key=r.key)
            bounds.check(entry, r.key)
            strings.append(StringItem(i, r.key, entry.shard_id, entry.offset, entry.size, entry.crc32c, entry.shape))
            continue
        for block_offsets, piece in _stored_blocks(index, r.key, entry, prefix):
            item = _read_for(i, r, block_offsets, piece)
            if item is not None:
                bounds.check(piece, r.key)
                reads.append(item)
    if any(a.shard > b.shard or a.shard == b.shard and a.offset > b.offset for a, b in zip(reads, reads[1:])):
        reads.sort(key=_file_order)
    return RestorePlan(tuple(requests), tuple(reads), tuple(strings))


def _entries_checked(entries: Mapping[str, BundleEntry], requests: Sequence[Request], prefix: str
                     ) -> list[BundleEntry]:
    """Each request's entry; DataLossError for a key the index lacks, else InvalidArgumentError listing every
    request whose dtype or shape differs from its entry's (or whose block does not fit), before anything is read."""
    found: list[BundleEntry] = []
    append, get = found.append, entries.get
    same = True
    for r in requests:
        entry = get(r.key)
        if entry is None:
            raise DataLossError(f"checkpoint {prefix or 'checkpoint'} lists key {r.key!r} for {r.label} but has "
                                "no such tensor", path=prefix, key=r.key)
        if same and (entry.dtype is not r.dtype or entry.shape != r.shape or r.block is not None):
            same = False
        append(entry)
    if not same:
        check_requests(entries, requests, prefix=prefix)
    return found


def _file_order(item: ReadItem) -> tuple[int, int]:
    return item.shard, item.offset


def check_requests(entries: Mapping[str, BundleEntry], requests: Sequence[Request], *, prefix: str = "") -> None:
    """InvalidArgumentError listing every request whose dtype, shape or block does not fit its stored entry."""
    problems = [(r.key, p) for r in requests if (p := _mismatch(r, entries[r.key]))]
    if problems:
        raise InvalidArgumentError(f"cannot restore from checkpoint {prefix or 'checkpoint'}: "
                                   + "; ".join(p for _, p in problems), path=prefix, key=problems[0][0])


def _mismatch(r: Request, entry: BundleEntry) -> str | None:
    where = f"key {r.key!r} ({r.label})"
    if entry.dtype != r.dtype:
        return f"{where}: expected dtype {r.dtype.name} does not equal original dtype {entry.dtype.name}"
    if tuple(entry.shape) != tuple(r.shape):
        return (f"{where}: received incompatible tensor with shape {tuple(entry.shape)} when attempting "
                f"to restore variable with shape {tuple(r.shape)}")
    if r.block is not None:
        offsets, lengths = r.block
        if len(offsets) != len(r.shape) or len(lengths) != len(r.shape) or any(
                o < 0 or n < 0 or o + n > d for o, n, d in zip(offsets, lengths, r.shape)):
            return f"{where}: block {list(zip(offsets, lengths))} lies outside shape {list(r.shape)}"
    return None


class _Bounds:
    """Checks that a stored range lies inside its data file (each file's size asked once)."""

    def __init__(self, shard_size: Callable[[int], int], shard_path: Callable[[int], str] | None):
        self._size = shard_size
        self._path = shard_path
        self.sizes: dict[int, int] = {}  # shard -> file size, as asked

    def check(self, entry: BundleEntry, key: str) -> None:
        if not entry.size:
            return
        size = self.sizes.get(entry.shard_id)
        if size is None:
            size = self.sizes[entry.shard_id] = self._size(entry.shard_id)
        if entry.offset + entry.size > size:
            path = self._path(entry.shard_id) if self._path else None
            where = f"data file {path!r}" if path else f"data shard {entry.shard_id}"
            raise DataLossError(
                f"entry for key {key!r} points past the end of {where} (offset {entry.offset} + size "
                f"{entry.size} > {size} bytes): the file is truncated or the index corrupt", path=path, key=key)


def _stored_blocks(index: BundleIndex, key: str, entry: BundleEntry,
                   prefix: str) -> list[tuple[tuple[int, ...], BundleEntry]]:
    """The stored blocks of a numeric tensor as (offsets, entry): itself, or its slices (docs/format.md §7.6),
    checked to tile the tensor exactly (every element once)."""
    if not entry.is_sliced:
        return [((0,) * len(entry.shape), entry)]
    index_path = prefix + ".index" if prefix else None
    blocks = []
    covered = 0
    seen: set[bytes] = set()
    for extents in entry.slices:
        if len(extents) != len(entry.shape):
            raise DataLossError(f"slice of {key!r} has rank {len(extents)}, tensor has {len(entry.shape)}",
                                path=index_path, key=key)
        offsets, lengths = [], []
        for ext, dim in zip(extents, entry.shape):
            length = dim - ext.start if ext.length is None else ext.length
            if ext.start < 0 or length < 0 or ext.start + length > dim:
                raise DataLossError(f"slice of {key!r} lies outside its shape {list(entry.shape)}",
                                    path=index_path, key=key)
            offsets.append(ext.start)
            lengths.append(length)
        piece_key = slice_key(key, extents)
        if piece_key in seen:
            raise DataLossError(f"slice {list(zip(offsets, lengths))} of {key!r} is listed twice",
                                path=index_path, key=key)
        seen.add(piece_key)
        piece = index.slice_entries.get(piece_key)
        if piece is None:
            raise NotFoundError(f"slice {list(zip(offsets, lengths))} of key {key!r} is missing from "
                                f"{index_path!r}", path=index_path, key=key)
        if piece.shape != tuple(lengths) or piece.dtype != entry.dtype or piece.is_sliced \
                or piece.size != math.prod(lengths) * entry.dtype.itemsize:
            raise DataLossError(f"slice entry {piece_key!r} of {key!r} is malformed", path=index_path, key=key)
        covered += math.prod(lengths)
        blocks.append((tuple(offsets), piece))
    if covered != entry.num_elements or _any_overlap(blocks):
        raise DataLossError(f"the slices of {key!r} do not cover its shape {list(entry.shape)} exactly once",
                            path=index_path, key=key)
    return blocks


def _any_overlap(blocks: Sequence[tuple[tuple[int, ...], BundleEntry]]) -> bool:
    """Whether two blocks share an element (sorted sweep along the first axis)."""
    if len(blocks) < 2 or not blocks[0][1].shape:
        return False
    ordered = sorted(blocks, key=lambda b: b[0][0])
    for i, (a_off, a) in enumerate(ordered):
        for b_off, b in ordered[i + 1:]:
            if b_off[0] >= a_off[0] + a.shape[0]:
                break
            if _intersect(a_off, a.shape, b_off, b.shape) is not None:
                return True
    return False


def _intersect(a_off: Sequence[int], a_len: Sequence[int], b_off: Sequence[int],
               b_len: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """The common block of two blocks as (offsets, lengths), or None when they do not meet."""
    offsets, lengths = [], []
    for ao, an, bo, bn in zip(a_off, a_len, b_off, b_len):
        lo, hi = max(ao, bo), min(ao + an, bo + bn)
        if hi <= lo:
            return None
        offsets.append(lo)
        lengths.append(hi - lo)
    return tuple(offsets), tuple(lengths)


def _read_for(i: int, r: Request, block_offsets: tuple[int, ...], piece: BundleEntry) -> ReadItem | None:
    """The read of one stored block for request ``i``: in place when the block is the destination,
    else a scratch read of which the overlap is copied; None when the block is not needed."""
    dest_offsets, dest_lengths = r.block if r.block is not None else ((0,) * len(r.shape), r.shape)
    common = _intersect(block_offsets, piece.shape, dest_offsets, dest_lengths) if r.shape else ((), ())
    if common is None:
        if math.prod(dest_lengths) == 0 and tuple(block_offsets) == tuple(dest_offsets) \
                and tuple(piece.shape) == tuple(dest_lengths):
            common = (tuple(dest_offsets), tuple(dest_lengths))  # an empty tensor: nothing to copy, CRC still checked
        else:
            return None
    if tuple(block_offsets) == tuple(dest_offsets) and tuple(piece.shape) == tuple(dest_lengths):
        return ReadItem(i, r.key, piece.shard_id, piece.offset, piece.size, piece.crc32c, piece.shape)
    offsets, lengths = common
    src = tuple(slice(o - b, o - b + n) for o, b, n in zip(offsets, block_offsets, lengths))
    dst = tuple(slice(o - d, o - d + n) for o, d, n in zip(offsets, dest_offsets, lengths))
    return ReadItem(i, r.key, piece.shard_id, piece.offset, piece.size, piece.crc32c, piece.shape, src, dst)
