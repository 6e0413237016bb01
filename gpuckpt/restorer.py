"""The restore pipeline: match a saved object graph to live objects, then assign all or nothing.

``match`` is pure: it pairs saved nodes with live objects breadth-first by local name
(spec 10) and lists what must wait for objects that do not exist yet. ``RestoreSession``
then checks every matched value (dtype, shape), reads every tensor (CRC-verified), and only
then assigns; a failure anywhere leaves every variable as it was. Deferred values stay with
the session and are restored, by the same steps, when their object appears.
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


from .arrays import ValueSpec, aligned_empty, describe
from .engine.select import EngineCache, gpu_usable
from .errors import DataLossError, InvalidArgumentError
from .format.objgraph import OBJECT_GRAPH_KEY, ObjectGraph, SlotRef, decode
from .graph import children_of, pretty_names
from .reader import CheckpointReader
from .trackable import restore_order
from .trackable.base import Trackable


class UnrestoredValuesWarning(UserWarning):
    """A restore ended with checkpoint values that were never assigned to any object."""


@dataclass(frozen=True)
class Deferral:
    """Saved node ``node_id`` waits for ``parent`` to gain a dependency called ``local_name``."""

    parent: Trackable
    local_name: str
    node_id: int


@dataclass(frozen=True)
class SlotDeferral:
    """Saved slot node ``node_id`` waits for ``optimizer`` to create ``slot_name`` for ``original``."""

    optimizer: Trackable
    original: Trackable
    slot_name: str
    node_id: int


@dataclass(frozen=True)
class SlotWait:
    """A slot of optimizer node ``optimizer_node_id`` whose variable node is not bound yet."""

    optimizer_node_id: int
    ref: SlotRef


@dataclass(frozen=True)
class Match:
    """What one matching pass found: new bindings (BFS order) and what has to wait."""

    bindings: tuple[tuple[int, Trackable], ...]
    deferrals: tuple[Deferral, ...]
    slot_deferrals: tuple[SlotDeferral, ...]
    slot_waits: tuple[SlotWait, ...]


def match(saved: ObjectGraph, start: Iterable[tuple[int, Trackable]], bound: Mapping[int, Trackable], *,
          slot_waits: Mapping[int, Sequence[SlotWait]] | None = None, attached: Sequence[tuple[str, Trackable]] = (),
          skip_slots: bool = False) -> Match:
    """Bind saved nodes to live objects breadth-first from ``start`` (spec 10).

    ``bound`` holds earlier bindings; ``attached`` are extra edges of the root (node 0).
    """
    new: dict[int, Trackable] = {}
    deferrals: list[Deferral] = []
    queue = [(n, obj) for n, obj in start if n not in bound]
    new.update(queue)
    for node_id, obj in queue:
        live = dict(children_of(obj, attached if node_id == 0 else ()))
        for child in saved.nodes[node_id].children:
            if child.node_id in bound or child.node_id in new:
                continue
            found = live.get(child.local_name)
            if found is not None:
                new[child.node_id] = found
                queue.append((child.node_id, found))
            elif saved.nodes[child.node_id].holds_values:
                deferrals.append(Deferral(obj, child.local_name, child.node_id))
    slot_deferrals: list[SlotDeferral] = []
    waits: list[SlotWait] = []
    if not skip_slots:
        candidates = [SlotWait(n, ref) for n, _ in queue for ref in saved.nodes[n].slot_variables]
        candidates += [wait for n, _ in queue for wait in (slot_waits or {}).get(n, ())]
        slot_deferrals, waits = _match_slots(candidates, bound, new)
    return Match(tuple(new.items()), tuple(deferrals), tuple(slot_deferrals), tuple(waits))


def _match_slots(candidates: Sequence[SlotWait], bound: Mapping[int, Trackable],
                 new: dict[int, Trackable]) -> tuple[list[SlotDeferral], list[SlotWait]]:
    """Bind slots whose optimizer and variable are both bound (adding them to ``new``).

    Returns the slots the optimizer has not created yet, and those whose variable is unbound.
    """
    slot_deferrals: list[SlotDeferral] = []
    waits: list[SlotWait] = []
    for wait in candidates:
        ref = wait.ref
        if ref.slot_variable_node_id in bound or ref.slot_variable_node_id in new:
            continue
        original = new.get(ref.original_variable_node_id, bound.get(ref.original_variable_node_id))
        if original is None:
            waits.append(wait)
            continue
        optimizer = new.get(wait.optimizer_node_id, bound.get(wait.optimizer_node_id))
        slot = optimizer._lookup_slot(original, ref.slot_name)
        if slot is None:
            slot_deferrals.append(SlotDeferral(optimizer, original, ref.slot_name, ref.slot_variable_node_id))
        else:
            new[ref.slot_variable_node_id] = slot
    return slot_deferrals, waits


@dataclass(frozen=True)
class Assignment:
    """One value to restore: attribute ``name`` of ``obj`` (node ``node_id``) from ``key``."""

    node_id: int
    obj: Trackable
    name: str
    key: str
    current: ValueSpec


@dataclass
class RestoreState:
    """What a session has done so far, by node id; statuses and the unused-values warning read it.

    It holds no live objects, so the warning issued when the session is collected cannot
    keep the session (or the user's objects) alive.
    """

    bound: set[int] = field(default_factory=set)
    unused_attributes: dict[int, list[str]] = field(default_factory=dict)
    slot_waits: dict[int, list[SlotWait]] = field(default_factory=dict)
    expect_partial: bool = False


class RestoreSession:
    """One ``read()`` of one checkpoint into one object graph, deferred values included."""

    def __init__(self, prefix: str, *, skip_slots: bool = False, engines: EngineCache | None = None,
                 io_device: str | None = None, reader: CheckpointReader | None = None):
        self.engines = engines if io_device != "cpu" and gpu_usable() else None  # for device destinations
        self.reader = reader if reader is not None else CheckpointReader(prefix)
        self.prefix = self.reader.prefix
        self.saved = _read_graph(self.reader)
        self.names = pretty_names(self.saved)
        self.skip_slots = skip_slots
        self.state = RestoreState()
        self.bound: dict[int, Trackable] = {}
        self.uid = restore_order.next_restore_uid()  # a newer restore's values win over this one's

    def start(self, root: Trackable, attached: Sequence[tuple[str, Trackable]] = ()) -> None:
        """Match from the root and restore everything that already exists.

        Once that succeeded, the session warns when it is collected about values never used.
        """
        self._restore([(0, root)], attached)
        finalizer = weakref.finalize(self, _warn_unused, self.state, self.saved, self.names, self.prefix,
                                     self.skip_slots)
        finalizer.atexit = False

    def resume(self, node_id: int, obj: Trackable) -> None:
        """Restore a deferred node into ``obj``, which has just been attached."""
        self._restore([(node_id, obj)], ())

    def _restore(self, start: list[tuple[int, Trackable]], attached: Sequence[tuple[str, Trackable]]) -> None:
        found = match(self.saved, start, self.bound, slot_waits=self.state.slot_waits,
                      attached=attached, skip_slots=self.skip_slots)
        assignments, unused = self._plan(found.bindings)
        values = self._read_all(assignments)
        self._commit(found, assignments, values, unused)

    def _plan(self, bindings: Sequence[tuple[int, Trackable]]) -> tuple[list[Assignment], dict[int, list[str]]]:
        assignments, unused = [], {}
        for node_id, obj in bindings:
            attributes = self.saved.nodes[node_id].attributes
            current = obj._serialize_tensors() if attributes else {}
            for attr in attributes:
                if attr.name in current:
                    assignments.append(Assignment(node_id, obj, attr.name, attr.checkpoint_key,
                                                  describe(current[attr.name])))
                else:
                    unused.setdefault(node_id, []).append(attr.name)
        return assignments, unused

    def _read_all(self, assignments: Sequence[Assignment]) -> list[Any]:
        """Check every value against its destination, then read them all (CRC-verified)."""
        problems = [(a.key, p) for a in assignments if (p := self._mismatch(a))]
        if problems:
            raise InvalidArgumentError(
                f"cannot restore from checkpoint {self.prefix}: " + "; ".join(p for _, p in problems),
                path=self.prefix, key=problems[0][0])
        on_gpu = [a for a in assignments if self._gpu_readable(a)]
        gpu_keys = {a.key for a in on_gpu}
        numeric = [(a.key, aligned_empty(a.current.shape, a.current.dtype.numpy)) for a in assignments
                   if not a.current.dtype.is_string and a.key not in gpu_keys]
        self.reader.read_tensors(numeric)
        by_key = dict(numeric)
        if on_gpu:
            items = list({a.key: self.reader.entry(a.key) for a in on_gpu}.items())
            by_key.update(zip((k for k, _ in items), self.engines.gpu().read(self.reader, items)))
        return [by_key[a.key] if a.key in by_key else self.reader.get_tensor(a.key) for a in assignments]

    def _gpu_readable(self, a: Assignment) -> bool:
        """Device destinations go through the GPU engine (verified on the device) when there is one."""
        return (self.engines is not None and a.current.on_device and not a.current.dtype.is_string
                and not self.reader.entry(a.key).is_sliced)

    def _mismatch(self, a: Assignment) -> str | None:
        if not self.reader.has_tensor(a.key):
            raise DataLossError(f"checkpoint {self.prefix} lists key {a.key!r} in its object graph "
                                f"but has no such tensor", path=self.prefix, key=a.key)
        entry = self.reader.entry(a.key)
        wanted = a.current.dtype
        where = f"key {a.key!r} ({self.names[a.node_id]})"
        if entry.dtype != wanted:
            return f"{where}: expected dtype {wanted.name} does not equal original dtype {entry.dtype.name}"
        if tuple(entry.shape) != tuple(a.current.shape):
            return (f"{where}: received incompatible tensor with shape {tuple(entry.shape)} when attempting "
                    f"to restore variable with shape {tuple(a.current.shape)}")
        return None

    def _commit(self, found: Match, assignments: Sequence[Assignment], values: Sequence[Any],
                unused: Mapping[int, list[str]]) -> None:
        state = self.state
        self.bound.update(found.bindings)
        state.bound.update(node_id for node_id, _ in found.bindings)
        for node_id, _ in found.bindings:
            state.slot_waits.pop(node_id, None)
        for wait in found.slot_waits:
            state.slot_waits.setdefault(wait.ref.original_variable_node_id, []).append(wait)
        state.unused_attributes.update(unused)
        grouped: dict[int, tuple[Trackable, dict[str, Any]]] = {}
        for a, value in zip(assignments, values):
            grouped.setdefault(id(a.obj), (a.obj, {}))[1][a.name] = value
        for obj, named in grouped.values():
            if restore_order.claim(obj, self.uid):  # else a newer restore already assigned it (TF's rule)
                obj._restore_tensors(named)
        for d in found.deferrals:
            d.parent._defer_dependency(d.local_name, _Deferred(self, d.node_id))
        for d in found.slot_deferrals:
            d.optimizer._defer_slot(d.slot_name, d.original, _Deferred(self, d.node_id))

    # -- what statuses ask -------------------------------------------------------------

    def unresolved_nodes(self) -> list[int]:
        """Saved nodes with values that no live object received (slots ignored when skipped)."""
        return _unresolved(self.saved, self.state, self.skip_slots)


def open_session(prefix: str, *, skip_slots: bool = False, engines: EngineCache | None = None,
                 io_device: str | None = None) -> RestoreSession:
    """A restore session for the checkpoint at ``prefix``: object-based when it has an object
    graph, name-based (``gpuckpt.namebased``) when it was written by TF1's ``Saver``."""
    from .namebased import NameBasedRestoreSession, is_name_based

    reader = CheckpointReader(prefix)
    if is_name_based(reader):
        return NameBasedRestoreSession(reader, skip_slots=skip_slots,
                                       engines=engines if io_device != "cpu" and gpu_usable() else None)
    return RestoreSession(prefix, skip_slots=skip_slots, engines=engines, io_device=io_device, reader=reader)


@dataclass(frozen=True)
class _Deferred:
    """A deferred restoration kept on a live parent; ``apply`` restores into the new child."""

    session: RestoreSession
    node_id: int

    def apply(self, obj: Trackable) -> None:
        self.session.resume(self.node_id, obj)

    def saved_specs(self) -> dict[str, tuple[Any, tuple[int, ...]]]:
        """The saved dtype and shape of each of the node's attributes, from the checkpoint's index."""
        entries = {a.name: self.session.reader.entry(a.checkpoint_key)
                   for a in self.session.saved.nodes[self.node_id].attributes}
        return {name: (entry.dtype, tuple(entry.shape)) for name, entry in entries.items()}


def _read_graph(reader: CheckpointReader) -> ObjectGraph:
    if not reader.has_tensor(OBJECT_GRAPH_KEY):
        raise InvalidArgumentError(
            f"checkpoint {reader.prefix} has no {OBJECT_GRAPH_KEY} entry: it is a TF1 name-based "
            "checkpoint; open it with restorer.open_session, which matches it by name",
            path=reader.prefix, key=OBJECT_GRAPH_KEY)
    graph = decode(reader.get_tensor(OBJECT_GRAPH_KEY), path=reader.prefix)
    for node_id, node in enumerate(graph.nodes):
        if node.registered_saver is not None:
            raise InvalidArgumentError(
                f"checkpoint {reader.prefix}: node {node_id} uses the registered saver "
                f"{node.registered_saver!r}, whose data lives outside the bundle; gpuckpt cannot restore it",
                path=reader.prefix)
    return graph


def slot_node_ids(saved: ObjectGraph) -> set[int]:
    """Ids of the saved slot-variable nodes."""
    return {ref.slot_variable_node_id for node in saved.nodes for ref in node.slot_variables}


def _unresolved(saved: ObjectGraph, state: RestoreState, skip_slots: bool) -> list[int]:
    ignored = slot_node_ids(saved) if skip_slots else set()
    return [i for i, node in enumerate(saved.nodes)
            if node.attributes and i not in state.bound and i not in ignored]


def _warn_unused(state: RestoreState, saved: ObjectGraph, names: Sequence[str], prefix: str,
                 skip_slots: bool) -> None:
    """At the end of a session, name the values no object received (unless expect_partial)."""
    if state.expect_partial:
        return
    lines = [f"Value in checkpoint could not be found in the restored object: {names[i]}"
             for i in _unresolved(saved, state, skip_slots)]
    lines += [f"Unused attributes of {names[i]}: {attrs}" for i, attrs in state.unused_attributes.items()]
    if lines:
        warnings.warn(
            f"Checkpoint {prefix} was restored with values that were never used (call "
            "status.expect_partial() if this is intended):\n" + "\n".join(lines),
            UnrestoredValuesWarning, stacklevel=2)
