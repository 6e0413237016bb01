"""A parsed index reused for the next index file of the same structure (restore's twin of ``save_cache``).

Saves of unchanged objects write index files that differ only in checksums: each entry's masked
CRC32C (the last field of its ``BundleEntryProto``) and each data block's trailer CRC. A
:class:`Template` keeps a parsed, validated index with the file's bytes, those checksum bytes
zeroed. An index file of the same length whose bytes equal the template's everywhere else is the
same table with other CRCs, so :func:`reuse` rebuilds its entries from the template with the CRCs
read from the file, after verifying every block's trailer checksum, without decoding an entry.
An evaluation loop restoring each new checkpoint, or a job resuming twice, then parses an index of
thousands of tensors in about a millisecond.

Why this is exact: a value's CRC bytes are taken as replaceable only when the value ends with the
CRC field (tag ``0x35`` and four bytes) and the bytes before it parse on their own as a complete
entry, so those bytes end at a field boundary and the last four are that field's payload in every
file sharing them. The check runs once per template, on its first reuse; a template failing it
is dropped. Only indexes up to ``MAX_BYTES`` are kept, ``SLOTS`` of them (the most recently used),
so the memory held stays bounded. Indexes of different structures can have the same length (two
models whose keys differ only in letters: ``model/...`` and ``state/...``), so each file is compared
with every template of its length, newest first: two such checkpoints restored in turn each keep
their own template instead of replacing each other's.
"""

from __future__ import annotations

import itertools
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from google.protobuf.message import DecodeError

from . import proto, sstable

if TYPE_CHECKING:
    from .bundle import BundleEntry, BundleIndex

MAX_BYTES = 8 << 20  # indexes larger than this (about 100,000 tensors) are parsed afresh each time
SLOTS = 4
_CRC_TAG = 0x35  # field 6 (crc32c), wire type 5 (fixed32)


@dataclass
class Template:
    """One parsed index and where its checksums lie (see the module docstring)."""

    masked: np.ndarray  # the file's bytes, the bytes at ``zeroed`` set to 0
    zeroed: np.ndarray  # positions of every replaceable CRC byte (4 per entry, in ``crc_of`` order), then trailers'
    blocks: tuple[tuple[int, int], ...]  # data blocks: offset and size (the trailer follows)
    crc_of: np.ndarray  # per entry, in table order: its rank among the replaceable CRCs, or -1 (bytes never differ)
    index: BundleIndex
    value_spans: tuple[tuple[int, int], ...]  # (start, end) of each value with a replaceable CRC: checked once
    checked: bool = False


_lock = threading.Lock()
_templates: OrderedDict[int, Template] = OrderedDict()  # by serial number, least recently used first
_serials = itertools.count()


def whole_file(data) -> bytes | None:
    """The index's bytes when it is small enough to keep a template of, else None (it is then read
    block by block, as before). ``data`` is bytes or an ``sstable`` source."""
    if isinstance(data, bytes | bytearray | memoryview):
        return bytes(data) if len(data) <= MAX_BYTES else None
    if data.size > MAX_BYTES:
        return None
    return bytes(data.read(0, data.size))


def reuse(raw: bytes, path: str | None) -> BundleIndex | None:
    """The index ``raw`` parses to, built from a template of the same structure, or None if none fits."""
    with _lock:
        candidates = [(serial, t) for serial, t in reversed(_templates.items()) if t.masked.size == len(raw)]
    buf = np.frombuffer(raw, np.uint8)
    for serial, template in candidates:
        masked = buf.copy()
        masked[template.zeroed] = 0
        if np.array_equal(masked, template.masked):
            break
    else:
        return None
    with _lock:
        if serial in _templates:
            _templates.move_to_end(serial)  # the least recently used is dropped first
    if not template.checked and not _check_spans(serial, template, raw):
        return None
    source = sstable.BytesSource(raw)
    for offset, size in template.blocks:  # raises, as a full parse would, on a damaged block
        sstable.read_block(source, offset, size, path)
    crcs = buf[template.zeroed[: 4 * len(template.value_spans)]].view("<u4").tolist()
    return _rebuild(template, crcs)


def remember(raw: bytes, layout: sstable.TableLayout, table: Sequence[tuple[bytes, bytes]], index: BundleIndex) -> None:
    """Keep a template of ``index``, just parsed from ``raw`` (``layout`` and ``table`` from ``sstable.read_table``)."""
    buf = np.frombuffer(raw, np.uint8)
    starts = np.array(layout.values[1:], np.int64)
    ends = starts + np.array([len(value) for _, value in table[1:]], np.int64)
    stored = np.array([entry.crc32c for entry in _in_table_order(index)], np.int64)
    # a value ends with the CRC field (its tag, then the entry's CRC, little-endian), checked for every entry at once
    fits = ends - starts >= 5
    tail = np.where(fits, ends, 5)[:, None] + np.arange(-5, 0)
    fields = buf[tail]
    fits &= (fields[:, 0] == _CRC_TAG) & (np.ascontiguousarray(fields[:, 1:]).view("<u4")[:, 0] == stored)
    replaceable = np.flatnonzero(fits)
    crc_of = np.full(len(starts), -1, np.int64)
    crc_of[replaceable] = np.arange(len(replaceable))
    spans = tuple(zip(starts[replaceable].tolist(), ends[replaceable].tolist()))
    trailer_bytes = [offset + length for offset, length in layout.data_blocks]  # after the body and type byte
    firsts = np.concatenate([ends[replaceable] - 4, np.array(trailer_bytes, np.int64)])
    zeroed = (firsts[:, None] + np.arange(4)).ravel()
    masked = buf.copy()
    masked[zeroed] = 0
    blocks = tuple((offset, length - 1) for offset, length in layout.data_blocks)
    template = Template(masked, zeroed, blocks, crc_of, index, spans)
    with _lock:
        for serial, old in list(_templates.items()):  # one per structure (two threads may parse a new one at once)
            if old.masked.size == masked.size and np.array_equal(old.zeroed, zeroed) \
                    and np.array_equal(old.masked, masked):
                del _templates[serial]
        _templates[next(_serials)] = template
        while len(_templates) > SLOTS:
            _templates.popitem(last=False)


def clear() -> None:
    """Forget every template (tests; a process that wants the memory back)."""
    with _lock:
        _templates.clear()


def _check_spans(serial: int, template: Template, raw: bytes) -> bool:
    """Whether each replaceable value's bytes before its CRC field parse as a complete entry (once per
    template, kept as ``serial``; dropped when they do not)."""
    parse = proto.BundleEntryProto.FromString
    try:
        for start, end in template.value_spans:
            parse(raw[start : end - 5])
    except DecodeError:
        with _lock:
            if _templates.get(serial) is template:
                del _templates[serial]
        return False
    template.checked = True
    return True


def _in_table_order(index: BundleIndex) -> list[BundleEntry]:
    """Every entry but the header's, in the table's key order: slice entries first (their keys start
    with a zero byte, below every tensor key's first byte), then tensors, as ``parse_index`` met them."""
    return [*index.slice_entries.values(), *index.entries.values()]


def _rebuild(template: Template, crcs: list[int]) -> BundleIndex:
    """The template's index with each replaceable CRC taken from ``crcs``."""
    from .bundle import BundleIndex, with_crc

    old = template.index
    ranks = template.crc_of.tolist()
    cut = len(old.slice_entries)

    def renewed(items, ranks: list[int]) -> dict:
        return {key: entry if rank < 0 else with_crc(entry, crcs[rank]) for (key, entry), rank in zip(items, ranks)}

    index = BundleIndex(old.num_shards, renewed(old.entries.items(), ranks[cut:]),
                        renewed(old.slice_entries.items(), ranks[:cut]))
    for derived in ("extents", "used_shards"):  # cached properties that do not depend on CRCs
        if derived in old.__dict__:
            index.__dict__[derived] = old.__dict__[derived]
    return index
