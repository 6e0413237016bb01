"""Name-based restore: TensorFlow 1 checkpoints, which have no object graph, matched by variable name.

A checkpoint written by TF1's ``tf.compat.v1.train.Saver`` keys each tensor by the
variable's graph name (``dense/kernel``, ``dense/kernel/Adam``, ``global_step``) and has no
``_CHECKPOINTABLE_OBJECT_GRAPH`` entry (docs/format.md §9.1). TensorFlow restores such a checkpoint into
objects by name: every live object reachable from the root, slot
variables included, is looked up under its ``full_name`` (a Variable's ``name``), and the
values found are assigned. gpuckpt does the same, as a strategy of the one restore pipeline
(``gpuckpt.session``): dtypes and shapes must match exactly (a mismatch changes nothing), and
values are read through the same plan and engines as object-graph restores.

Differences from TensorFlow: only the objects that exist when ``restore()`` runs are
restored (TF also restores variables created later through Keras' ``add_weight``), and only
``VARIABLE_VALUE`` attributes are matched, since other attributes have no TF1 name.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .format.objgraph import OBJECT_GRAPH_KEY
from .graph import LiveGraph, pretty_path, walk
from .session import RestoreSession, Target, slot_node_ids, target
from .trackable.base import Trackable
from .trackable.variable import VARIABLE_VALUE


def is_name_based(reader) -> bool:
    """True for a checkpoint without an object graph (TF1 ``Saver``): it can only be matched by name."""
    return not reader.has_tensor(OBJECT_GRAPH_KEY)


@dataclass(frozen=True)
class NameBasedResult:
    """What a name-based restore did, by live object path (``(root).a.b``) and checkpoint key.

    ``restored``: (path, key) pairs assigned. ``missing``: (path, key) pairs of live values
    whose name is not in the checkpoint. ``unused_keys``: checkpoint keys no live object named.
    """

    restored: tuple[tuple[str, str], ...]
    missing: tuple[tuple[str, str], ...]
    unused_keys: tuple[str, ...]


class NameBasedMatching:
    """Matches every live ``VARIABLE_VALUE`` by its ``full_name`` to a checkpoint key; defers nothing."""

    def __init__(self, *, skip_slots: bool = False):
        self.skip_slots = skip_slots
        self.names: list[str] = []  # live paths, by node id of the live graph (used in messages)
        self.result = NameBasedResult((), (), ())

    def start(self, session: RestoreSession, root: Trackable, attached: Sequence[tuple[str, Trackable]]) -> None:
        """Match every existing object by name, then restore them through the session."""
        live = walk(root, attached)
        self.names = [pretty_path(path) for path in live.paths]
        keys = session.entries
        targets, missing = self._targets(live, keys)
        session.restore_targets(targets)
        used = {t.request.key for t in targets}
        self.result = NameBasedResult(
            restored=tuple((self.names[t.node_id], t.request.key) for t in targets),
            missing=tuple(missing),
            unused_keys=tuple(k for k in keys if k not in used))

    def _targets(self, live: LiveGraph, keys) -> tuple[list[Target], list[tuple[str, str]]]:
        """One target per live ``VARIABLE_VALUE`` whose full name is a checkpoint key."""
        skipped = slot_node_ids(live.graph) if self.skip_slots else set()
        targets: list[Target] = []
        missing: list[tuple[str, str]] = []
        for node_id, (obj, values) in enumerate(zip(live.objects, live.tensors)):
            if VARIABLE_VALUE not in values or node_id in skipped:
                continue
            key = obj._checkpoint_full_name()
            if key and key in keys:
                targets.append(target(node_id, obj, VARIABLE_VALUE, key, self.names[node_id], values[VARIABLE_VALUE]))
            else:
                missing.append((self.names[node_id], key))
        return targets, missing
