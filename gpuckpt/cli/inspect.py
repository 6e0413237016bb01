"""``gpuckpt inspect``: every tensor of a checkpoint from its index alone, as a table, as JSON,
or as the object graph's tree. Only the index is read (and, for ``--graph``, the graph's one
string tensor); no tensor data is touched."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass

from ..format.bundle import BundleEntry
from ..format.objgraph import OBJECT_GRAPH_KEY, ObjectGraph, decode
from ..reader import CheckpointReader
from .common import Column, human, is_terminal, key_matcher, print_columns, resolve_prefix, stored_bytes

SCHEMA = "gpuckpt.inspect/1"
_MAX_INDENT = 32  # deeper levels are drawn at this indent with their depth written out


@dataclass(frozen=True)
class Row:
    """One tensor as listed: where its bytes are and how many."""

    key: str
    entry: BundleEntry
    nbytes: int

    def as_json(self) -> dict:
        e = self.entry
        return {
            "key": self.key, "dtype": e.dtype.name, "shape": list(e.shape), "bytes": self.nbytes,
            "shard": None if e.is_sliced else e.shard_id, "offset": None if e.is_sliced else e.offset,
            "crc32c": None if e.is_sliced else e.crc32c,
            "slices": [[[x.start, x.length] for x in extents] for extents in e.slices] if e.is_sliced else None,
        }


def rows_of(reader: CheckpointReader, pattern: str | None = None) -> list[Row]:
    """The tensors whose key matches ``pattern`` (see ``key_matcher``), in key order."""
    match = key_matcher(pattern)
    index = reader.index
    return [Row(k, e, stored_bytes(index, k, e)) for k, e in index.entries.items() if match(k)]


def run(path: str, *, pattern: str | None = None, as_json: bool = False, graph: bool = False) -> int:
    prefix = resolve_prefix(path)
    with CheckpointReader(prefix) as reader:
        rows = rows_of(reader, pattern)
        tree = _graph(reader) if graph else None
        if as_json:
            _print_json(reader, rows, tree)
        elif tree is not None:
            _print_tree(reader, tree, key_matcher(pattern))
        else:
            _print_table(reader, rows)
    return 0


def _graph(reader: CheckpointReader) -> ObjectGraph | None:
    if not reader.has_tensor(OBJECT_GRAPH_KEY):
        return None
    return decode(reader.get_tensor(OBJECT_GRAPH_KEY), path=reader.index_path)


def _title(reader: CheckpointReader, rows: list[Row]) -> str:
    total = len(reader.index.entries)
    count = f"{len(rows)} tensors" if len(rows) == total else f"{len(rows)} of {total} tensors"
    return (f"{reader.prefix}: {count}, {human(sum(r.nbytes for r in rows))} "
            f"in {reader.index.num_shards} shard(s)")


def _print_table(reader: CheckpointReader, rows: list[Row]) -> None:
    title = _title(reader, rows)
    table = [(r.entry.dtype.name, str(list(r.entry.shape)), human(r.nbytes),
              f"{len(r.entry.slices)} slices" if r.entry.is_sliced else str(r.entry.shard_id), r.key) for r in rows]
    out = sys.stdout
    out.write(("\033[1m" + title + "\033[0m" if is_terminal(out) else title) + "\n")
    columns = (Column("dtype"), Column("shape"), Column("bytes", right=True), Column("shard"), Column("key"))
    print_columns(columns, table, out)


def _print_json(reader: CheckpointReader, rows: list[Row], tree: ObjectGraph | None) -> None:
    doc: dict = {
        "schema": SCHEMA, "prefix": reader.prefix, "num_shards": reader.index.num_shards,
        "tensors": [r.as_json() for r in rows],
        "totals": {"tensors": len(rows), "bytes": sum(r.nbytes for r in rows),
                   "all_tensors": len(reader.index.entries)},
    }
    if tree is not None:
        doc["graph"] = graph_json(tree)
    json.dump(doc, sys.stdout, indent=1)
    sys.stdout.write("\n")


def graph_json(graph: ObjectGraph) -> list[dict]:
    """The object graph as plain JSON: one object per node, with its paths, keys and slots."""
    from ..convert.paths import node_paths

    paths = node_paths(graph)
    return [{
        "id": i, "path": _listed(paths.first[i]),
        "aliases": [list(a) for a in paths.aliases[i]],
        "children": [{"name": c.local_name, "node": c.node_id} for c in node.children],
        "attributes": [{"name": a.name, "key": a.checkpoint_key} for a in node.attributes],
        "slots": [{"name": s.slot_name, "variable_node": s.original_variable_node_id,
                   "slot_node": s.slot_variable_node_id}
                  for s in node.slot_variables],
    } for i, node in enumerate(graph.nodes)]


def _listed(path: tuple[str, ...] | None) -> list[str] | None:
    return None if path is None else list(path)


def _print_tree(reader: CheckpointReader, graph: ObjectGraph | None, match) -> None:
    """One line per edge of the graph, depth first; an object reached a second time is written as
    an alias of its first path; a node's saved values and an optimizer's slots are listed under it."""
    from ..convert.paths import dotted, node_paths

    out = sys.stdout
    if graph is None:
        out.write(f"{reader.prefix}: no object graph (a name-based checkpoint); its keys:\n")
        for key in reader.index.entries:
            if match(key):
                out.write(f"  {key}\n")
        return
    paths = node_paths(graph)
    entries = reader.index.entries
    lines = [f"{reader.prefix}: object graph of {len(graph.nodes)} nodes", "(root)"]

    def values(node_id: int, indent: str) -> None:
        for attr in graph.nodes[node_id].attributes:
            if match(attr.checkpoint_key):
                e = entries.get(attr.checkpoint_key)
                what = f"{e.dtype.name} {list(e.shape)}" if e is not None else "MISSING from the index"
                lines.append(f"{indent}= {attr.checkpoint_key}  {what}")

    stack: list[tuple[int, int, str]] = [(0, 0, "")]  # (node, depth, line to write first)
    drawn = {0}
    while stack:
        node_id, depth, line = stack.pop()
        if line:
            lines.append(line)
        if node_id < 0:
            continue  # an alias: its line is all
        indent = _indent(depth + 1)
        values(node_id, indent)
        for slot in graph.nodes[node_id].slot_variables:
            lines.append(f"{indent}slot {slot.slot_name!r} of {dotted(paths.first[slot.original_variable_node_id])}")
            values(slot.slot_variable_node_id, indent + "  ")
        own = paths.first[node_id] or ()
        for child in reversed(graph.nodes[node_id].children):
            if child.node_id not in drawn and paths.first[child.node_id] == (*own, child.local_name):
                drawn.add(child.node_id)
                stack.append((child.node_id, depth + 1, f"{indent}{child.local_name}"))
            else:
                target = dotted(paths.first[child.node_id])
                stack.append((-1, depth + 1, f"{indent}{child.local_name} -> alias of {target}"))
    out.write("\n".join(lines) + "\n")


def _indent(depth: int) -> str:
    if depth <= _MAX_INDENT:
        return "  " * depth
    return "  " * _MAX_INDENT + f"[depth {depth}] "
