"""Before a restore reads values: let live objects see what the checkpoint holds for them.

An object bound by the restore's matching that defines ``_checkpoint_prepare(saved, where)`` is
given, for each of its saved attributes, the checkpoint's dtype and shape (``saved``) and its
printable path (``where``). The JAX adapter uses it to check abstract templates and casts and to
name the leaf and the side at fault; it may raise, and then nothing has been restored.

The object-graph restore (``restorer.ObjectGraphMatching.start``) calls :func:`run` with the
bindings it has just matched, so no second walk of the live objects or second match is made.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .format.bundle import BundleEntry
from .format.objgraph import ObjectGraph
from .trackable.base import Trackable


def run(saved_graph: ObjectGraph, entries: Mapping[str, BundleEntry], names: Sequence[str],
        bindings: Sequence[tuple[int, Trackable]]) -> None:
    """Call ``_checkpoint_prepare`` on every bound object that has it (a no-op when none has)."""
    for node_id, obj in bindings:
        hook: Any = getattr(obj, "_checkpoint_prepare", None)
        if hook is None:
            continue
        saved = {}
        for attribute in saved_graph.nodes[node_id].attributes:
            entry = entries.get(attribute.checkpoint_key)
            if entry is not None:
                saved[attribute.name] = (entry.dtype, tuple(entry.shape))
        hook(saved, names[node_id])
