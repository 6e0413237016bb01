"""Where each object of a saved object graph sits: its first path from the root, and the other
paths that reach it (aliases, e.g. tied weights). Linear in the graph's size."""

from __future__ import annotations

from dataclasses import dataclass

from ..format.objgraph import ObjectGraph

Path = tuple[str, ...]


@dataclass(frozen=True)
class NodePaths:
    """``first[i]``: node i's breadth-first path of local names (None if unreachable);
    ``aliases[i]``: every other path, one per further edge into it from a reachable parent."""

    first: tuple[Path | None, ...]
    aliases: tuple[tuple[Path, ...], ...]


def node_paths(graph: ObjectGraph) -> NodePaths:
    """Breadth-first paths in TF's numbering order; each edge yields one path, so the work is
    linear in nodes + edges even for deep chains or heavy sharing."""
    count = len(graph.nodes)
    first: list[Path | None] = [None] * count
    aliases: list[list[Path]] = [[] for _ in range(count)]
    first[0] = ()
    queue = [0]
    for node_id in queue:
        parent = first[node_id]
        assert parent is not None
        for child in graph.nodes[node_id].children:
            path = (*parent, child.local_name)
            if first[child.node_id] is None:
                first[child.node_id] = path
                queue.append(child.node_id)
            else:
                aliases[child.node_id].append(path)
    return NodePaths(tuple(first), tuple(tuple(a) for a in aliases))


def dotted(path: Path | None) -> str:
    """``(root).model.dense`` for messages and listings."""
    return "(unreachable)" if path is None else ".".join(("(root)", *path))
