"""Name-based restore: TensorFlow 1 checkpoints, which have no object graph, matched by variable name.

A checkpoint written by TF1's ``tf.compat.v1.train.Saver`` keys each tensor by the
variable's graph name (``dense/kernel``, ``dense/kernel/Adam``, ``global_step``) and has no
``_CHECKPOINTABLE_OBJECT_GRAPH`` entry (spec 9.1). TensorFlow restores such a checkpoint into
objects by name (spec 10, step 1): every live object reachable from the root, slot
variables included, is looked up under its ``full_name`` (a Variable's ``name``), and the
values found are assigned. gpuckpt does the same, with its usual rules: dtypes and shapes
must match exactly, every value is checked and read (CRC-verified) before any is
assigned, and a failure leaves every object unchanged.

Differences from TensorFlow: only the objects that exist when ``restore()`` runs are
restored (TF also restores variables created later through Keras' ``add_weight``), and only
``VARIABLE_VALUE`` attributes are matched, since other attributes have no TF1 name.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .arrays import describe
from .engine.select import EngineCache
from .format.objgraph import OBJECT_GRAPH_KEY
from .graph import LiveGraph, pretty_path, walk
from .reader import CheckpointReader
from .restorer import Assignment, RestoreSession, slot_node_ids
from .trackable import restore_order
from .trackable.base import Trackable
from .trackable.variable import VARIABLE_VALUE


def is_name_based(reader: CheckpointReader) -> bool:
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


class NameBasedRestoreSession(RestoreSession):
    """A restore of a TF1 checkpoint into live objects, matching ``full_name`` to checkpoint key.

    It reuses :class:`RestoreSession`'s checks and reads (all or nothing, GPU destinations
    through the GPU engine) but has no saved object graph and no deferred values.
    """

    def __init__(self, reader: CheckpointReader, *, skip_slots: bool = False, engines: EngineCache | None = None):
        # RestoreSession.__init__ would decode the object graph, which this checkpoint lacks; these
        # are the attributes its _read_all/_mismatch use
        self.engines = engines
        self.reader = reader
        self.prefix = reader.prefix
        self.skip_slots = skip_slots
        self.names: list[str] = []  # live paths, by node id of the live graph (used in messages)
        self.result = NameBasedResult((), (), ())

    def start(self, root: Trackable, attached: Sequence[tuple[str, Trackable]] = ()) -> None:
        """Match every existing object by name, then check, read and assign all values, or none."""
        live = walk(root, attached)
        self.names = [pretty_path(path) for path in live.paths]
        assignments, missing = self._plan_by_name(live)
        values = self._read_all(assignments)
        grouped: dict[int, tuple[Trackable, dict]] = {}
        for a, value in zip(assignments, values):
            grouped.setdefault(id(a.obj), (a.obj, {}))[1][a.name] = value
        uid = restore_order.next_restore_uid()
        for obj, named in grouped.values():
            restore_order.claim(obj, uid)  # the newest restore: older deferred values no longer overwrite these
            obj._restore_tensors(named)
        used = {a.key for a in assignments}
        self.result = NameBasedResult(
            restored=tuple((self.names[a.node_id], a.key) for a in assignments),
            missing=tuple(missing),
            unused_keys=tuple(k for k in self.reader.keys() if k not in used))

    def _plan_by_name(self, live: LiveGraph) -> tuple[list[Assignment], list[tuple[str, str]]]:
        """One assignment per live ``VARIABLE_VALUE`` whose full name is a checkpoint key."""
        skipped = slot_node_ids(live.graph) if self.skip_slots else set()
        assignments: list[Assignment] = []
        missing: list[tuple[str, str]] = []
        for node_id, (obj, values) in enumerate(zip(live.objects, live.tensors)):
            if VARIABLE_VALUE not in values or node_id in skipped:
                continue
            key = obj._checkpoint_full_name()
            if key and self.reader.has_tensor(key):
                assignments.append(Assignment(node_id, obj, VARIABLE_VALUE, key, describe(values[VARIABLE_VALUE])))
            else:
                missing.append((self.names[node_id], key))
        return assignments, missing

    def resume(self, node_id: int, obj: Trackable) -> None:
        """Never called: a name-based restore defers nothing (there are no saved nodes to wait for)."""
        raise NotImplementedError("name-based restores defer nothing")

    def unresolved_nodes(self) -> list[int]:
        """No saved nodes, so none unresolved; ``result.missing`` has what did not match."""
        return []
