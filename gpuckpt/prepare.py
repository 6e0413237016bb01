"""Before a restore reads values: let live objects see what the checkpoint holds for them.

An object bound by the restore's matching that defines ``_checkpoint_prepare(saved, where)`` is
given, for each of its saved attributes, the checkpoint's dtype and shape (``saved``) and its
printable path (``where``). The JAX adapter uses it to check abstract templates and casts and to
name the leaf and the side at fault; it may raise, and then nothing has been restored.
"""

from __future__ import annotations

from collections.abc import Sequence

from .restorer import RestoreSession, match
from .saveable import reachable
from .trackable.base import Trackable


def run(session: RestoreSession, root: Trackable, attached: Sequence[tuple[str, Trackable]] = ()) -> None:
    """Call ``_checkpoint_prepare`` on every bound object that has it (a no-op when none has)."""
    saved_graph = session.saved
    if saved_graph is None:
        return
    if not any(hasattr(obj, "_checkpoint_prepare") for obj in reachable(root, attached)[0]):
        return
    found = match(saved_graph, [(0, root)], {}, attached=attached, skip_slots=session.skip_slots)
    entries = session.entries
    for node_id, obj in found.bindings:
        hook = getattr(obj, "_checkpoint_prepare", None)
        if hook is None:
            continue
        saved = {}
        for attribute in saved_graph.nodes[node_id].attributes:
            entry = entries.get(attribute.checkpoint_key)
            if entry is not None:
                saved[attribute.name] = (entry.dtype, tuple(entry.shape))
        hook(saved, session.names[node_id])
