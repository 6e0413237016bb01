"""What a checkpoint exports: one item per stored tensor with its name and aliases, and its bytes
read in verified chunks (memory: one chunk, whatever the tensor's size)."""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from ..arrays import aligned_empty
from ..errors import DataLossError, DataLossReason
from ..format import crc
from ..format.bundle import BundleEntry, data_file_name
from ..format.objgraph import OBJECT_GRAPH_KEY, ObjectGraph, decode
from ..graph import object_path
from ..reader import CheckpointReader
from .names import key_to_name
from .paths import node_paths

CHUNK_BYTES = 16 << 20
FORMAT_TAG = "gpuckpt.convert/1"


@dataclass(frozen=True)
class Item:
    """A numeric tensor to export: the name it gets, its key, its entry, and the alias names of
    other object paths that reach the same variable (tied weights)."""

    name: str
    key: str
    entry: BundleEntry
    aliases: tuple[str, ...]

    @property
    def nbytes(self) -> int:
        return self.entry.num_elements * self.entry.dtype.itemsize


@dataclass(frozen=True)
class Exported:
    """A checkpoint seen as a flat list of named tensors, plus what a flat format must carry on the
    side: string tensors (the object graph among them) as base64 elements with their shapes."""

    items: tuple[Item, ...]
    strings: dict[str, dict]  # name -> {"shape": [...], "base64": [...]}
    order: tuple[str, ...]  # every name (tensors and strings) in the order of its bytes in the data files


def exported(reader: CheckpointReader, match: Callable[[str], bool]) -> Exported:
    entries = reader.index.entries
    graph = _graph(reader)
    aliases = _alias_names(graph) if graph is not None else {}
    items, strings = [], {}
    for key, entry in sorted(entries.items(), key=_file_order):
        if not match(key):
            continue
        if entry.dtype.is_string:
            value = reader.get_tensor(key)
            flat = [value] if isinstance(value, bytes) else list(value.reshape(-1))
            strings[key_to_name(key)] = {"shape": list(entry.shape),
                                         "base64": [base64.b64encode(v).decode("ascii") for v in flat]}
        else:
            names = tuple(a for a in aliases.get(key, ()) if match(a))
            items.append(Item(key_to_name(key), key, entry, tuple(key_to_name(a) for a in names)))
    order = tuple(key_to_name(k) for k, e in sorted(entries.items(), key=_file_order) if match(k))
    return Exported(tuple(items), strings, order)


def _file_order(item: tuple[str, BundleEntry]) -> tuple:
    """Where a tensor's bytes are (shard, offset); an empty tensor before the one starting where it
    points (it was placed first: the next one moved the end on); partitioned tensors last, by key.
    Exported in this order, and written back in it, a one-shard checkpoint comes back byte for byte."""
    key, entry = item
    return (1, 0, 0, 0, key) if entry.is_sliced else (0, entry.shard_id, entry.offset, entry.size > 0, key)


def _graph(reader: CheckpointReader) -> ObjectGraph | None:
    if not reader.has_tensor(OBJECT_GRAPH_KEY):
        return None
    return decode(reader.get_tensor(OBJECT_GRAPH_KEY), path=reader.index_path)


def _alias_names(graph: ObjectGraph) -> dict[str, list[str]]:
    """checkpoint key -> the keys its variable would have under each of its other object paths."""
    paths = node_paths(graph)
    out: dict[str, list[str]] = {}
    for node_id, node in enumerate(graph.nodes):
        for attr in node.attributes:
            for alias in paths.aliases[node_id]:
                out.setdefault(attr.checkpoint_key, []).append(
                    f"{object_path(alias)}/.ATTRIBUTES/{attr.name}")
    return out


def chunks(reader: CheckpointReader, item: Item) -> Iterator[memoryview]:
    """The tensor's bytes in order, ``CHUNK_BYTES`` at a time; DataLossError if the CRC fails.

    A partitioned tensor is assembled whole by the reader (its slices are verified one by one)."""
    entry = item.entry
    if entry.is_sliced:
        yield reader.get_tensor(item.key).reshape(-1).view(np.uint8).data
        return
    if not entry.size:
        return
    buf = aligned_empty((min(CHUNK_BYTES, entry.size),), np.dtype(np.uint8))
    value = 0
    for start in range(0, entry.size, CHUNK_BYTES):
        view = buf[: min(CHUNK_BYTES, entry.size - start)]
        reader.read_unverified(item.key, entry, start, view)
        value = crc.crc32c(view, value)
        if start + view.nbytes >= entry.size and crc.mask(value) != entry.crc32c:
            path = data_file_name(reader.prefix, entry.shard_id, reader.index.num_shards)
            raise DataLossError(f"checksum mismatch for key {item.key!r} in {path!r}: stored {entry.crc32c:#010x}",
                                path=path, key=item.key, reason=DataLossReason.CRC_MISMATCH)
        yield view.data
