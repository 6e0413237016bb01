"""Object-graph matching: the restore strategy for checkpoints with an object graph.

``match`` is pure: it pairs saved nodes with live objects breadth-first by local name and
lists what must wait for objects that do not exist yet. :class:`ObjectGraphMatching` turns the
pairs into targets that ``session.RestoreSession`` plans, reads and assigns; the values of saved
nodes no live object took yet are read in the same pass and kept in memory (bounded by what is
pending), so no file stays open. They are assigned, after the same dtype and shape checks, when
their object appears (deferred restoration).

A checkpoint's object graph is decoded once per distinct graph: :data:`graphs` keeps the last
few, by their exact bytes, with what restores derive from a graph alone (:class:`GraphFacts`).

References: a live parent holds its deferred restorations, which hold this strategy, which
refers to bound objects only weakly (as TensorFlow's restore coordinator does), so no cycle
keeps a restored model alive: the unused-values warning fires when the last reference to the
restore (its status and any object still waiting) goes.
"""

from __future__ import annotations

import threading
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from operator import is_, itemgetter
from typing import Any

from . import prepare
from .errors import DataLossError, InvalidArgumentError
from .format.bundle import BundleEntry
from .format.objgraph import OBJECT_GRAPH_KEY, ObjectGraph, SlotRef, decode
from .graph import BASE_CHILDREN, BASE_SLOTS, NodeLabel, NodeNames, children_of, pretty_names
from .restore_plan import Request, check_requests
from .session import RestoreSession, Target, read_stored_string, target
from .storage.reader import FileSystemReader
from .trackable import restore_order
from .trackable.base import Trackable
from .trackable.containers import untracked_edit

_MISSING = object()
_second = itemgetter(1)


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
    """What one matching pass found: new bindings (BFS order) and what has to wait; the first
    ``by_dependency`` bindings were made by dependency (the rest are slots)."""

    bindings: tuple[tuple[int, Trackable], ...]
    deferrals: tuple[Deferral, ...]
    slot_deferrals: tuple[SlotDeferral, ...]
    slot_waits: tuple[SlotWait, ...]
    by_dependency: int = 0


def match(saved: ObjectGraph, start: Iterable[tuple[int, Trackable]], bound: Mapping[int, Trackable], *,
          slot_waits: Mapping[int, Sequence[SlotWait]] | None = None, attached: Sequence[tuple[str, Trackable]] = (),
          skip_slots: bool = False, listed: list[tuple[Trackable, list[tuple[str, Trackable]] | None]] | None = None
          ) -> Match:
    """Bind saved nodes to live objects breadth-first from ``start``.

    ``bound`` holds earlier bindings; ``attached`` are extra edges of the root (node 0). Into ``listed``, if
    given, go the objects bound by dependency that may have children or slot variables (all but those whose
    class keeps ``Trackable``'s ``_trackable_children`` and ``_slot_variables``), each with the children it
    listed of it that may be unbound (an empty list where it bound every one itself; None where it listed
    none: a saved leaf), for ``strict.check``.
    """
    new: dict[int, Trackable] = {}
    deferrals: list[Deferral] = []
    optimizers: list[int] = []  # matched nodes that list slot variables, in matching order
    queue = [(n, obj) for n, obj in start if n not in bound]
    new.update(queue)
    nodes = saved.nodes
    earlier = bound if len(bound) else None  # most matches start with nothing bound: no lookup per child
    for node_id, obj in queue:
        node = nodes[node_id]
        if node.slot_variables:
            optimizers.append(node_id)
        saved_children = node.children
        kind = type(obj)
        if not saved_children and (node_id != 0 or not attached) and (
                kind._trackable_children is BASE_CHILDREN or untracked_edit(obj) is None):
            if listed is not None and (kind._trackable_children is not BASE_CHILDREN  # not graph.is_leaf
                                       or kind._slot_variables is not BASE_SLOTS):  # or graph.declares_slots
                listed.append((obj, None))
            continue  # a leaf (every variable; graph.is_leaf needs no untracked_edit): children_of would only list
        children = children_of(obj, attached if node_id == 0 else ())
        live = dict(children)
        paired = []  # the live children bound here, in saved order
        for child_id, local_name in saved_children:
            if child_id in new or (earlier is not None and child_id in earlier):
                continue
            found = live.get(local_name)
            if found is not None:
                new[child_id] = found
                queue.append((child_id, found))
                paired.append(found)
            elif nodes[child_id].holds_values:
                deferrals.append(Deferral(obj, local_name, child_id))
        if listed is not None:  # [] where every live child was bound here (in the same order: the usual case)
            every = len(paired) == len(children) and all(map(is_, paired, map(_second, children)))
            listed.append((obj, [] if every else children))
    by_dependency = len(new)
    slot_deferrals: list[SlotDeferral] = []
    waits: list[SlotWait] = []
    if not skip_slots:
        candidates = [(n, ref) for n in optimizers for ref in nodes[n].slot_variables]
        if slot_waits:
            candidates += [(wait.optimizer_node_id, wait.ref) for n, _ in queue for wait in slot_waits.get(n, ())]
        slot_deferrals, waits = _match_slots(candidates, bound, new)
    return Match(tuple(new.items()), tuple(deferrals), tuple(slot_deferrals), tuple(waits), by_dependency)


def _match_slots(candidates: Sequence[tuple[int, SlotRef]], bound: Mapping[int, Trackable],
                 new: dict[int, Trackable]) -> tuple[list[SlotDeferral], list[SlotWait]]:
    """Bind slots (optimizer node, reference) whose optimizer and variable are both bound (adding them to ``new``).

    Returns the slots the optimizer has not created yet, and those whose variable is unbound. A
    :class:`SlotWait` is made only for those (a frozen dataclass costs more than the rest per slot).
    """
    slot_deferrals: list[SlotDeferral] = []
    waits: list[SlotWait] = []
    earlier = bound if len(bound) else None  # nothing bound before: no lookup in it per slot
    for optimizer_node_id, ref in candidates:
        slot_id, original_id = ref.slot_variable_node_id, ref.original_variable_node_id
        if slot_id in new or (earlier is not None and slot_id in earlier):
            continue
        original = new.get(original_id)
        if original is None and earlier is not None:
            original = earlier.get(original_id)
        if original is None:
            waits.append(SlotWait(optimizer_node_id, ref))
            continue
        optimizer = new.get(optimizer_node_id)
        if optimizer is None and earlier is not None:
            optimizer = earlier.get(optimizer_node_id)
        assert optimizer is not None  # waits are made for, and kept under, optimizers already bound
        slot = optimizer._lookup_slot(original, ref.slot_name)
        if slot is None:
            slot_deferrals.append(SlotDeferral(optimizer, original, ref.slot_name, slot_id))
        else:
            new[slot_id] = slot
    return slot_deferrals, waits


@dataclass(frozen=True)
class GraphFacts:
    """What restores derive from a saved object graph alone, computed once per graph: immutable, so
    the restores of one graph share it (:class:`GraphCache`)."""

    names: NodeNames
    labels: tuple[NodeLabel | None, ...]  # per node: the label of its requests (None: a node without values)
    valued: frozenset[int]  # nodes with attributes
    slot_nodes: frozenset[int]  # slot-variable nodes
    registered_saver: tuple[int, str] | None  # the first node whose values a registered saver keeps


def graph_facts(graph: ObjectGraph) -> GraphFacts:
    """The :class:`GraphFacts` of ``graph``, in one pass over its nodes."""
    names = pretty_names(graph)
    labels: list[NodeLabel | None] = [None] * len(graph.nodes)
    valued: list[int] = []
    slot_nodes: set[int] = set()
    registered: tuple[int, str] | None = None
    for node_id, node in enumerate(graph.nodes):
        if node.attributes:
            labels[node_id] = NodeLabel(names, node_id)
            valued.append(node_id)
        if node.slot_variables:
            slot_nodes.update(ref.slot_variable_node_id for ref in node.slot_variables)
        if node.registered_saver is not None and registered is None:
            registered = (node_id, node.registered_saver)
    return GraphFacts(names, tuple(labels), frozenset(valued), frozenset(slot_nodes), registered)


class GraphCache:
    """The last few object graphs decoded, by their exact bytes, with their :class:`GraphFacts` (LRU, thread-safe).

    While a structure is unchanged its graph's bytes are identical from save to save (the save side
    caches them, ``save_cache``), so repeated restores of it (an evaluation loop, a benchmark) decode
    it once. Entries are looked up by the bytes themselves (a dict compares equal keys byte for byte;
    a hash alone decides nothing); only graphs that decoded and validated are kept, so a corrupt graph
    raises on every restore. Memory is bounded: at most ``capacity`` entries of together at most
    ``max_bytes`` of graph bytes (a decoded graph takes about ten times its bytes; 5,000 variables
    make about 0.5 MB), least recently used first out; a larger graph is decoded and not kept.
    """

    def __init__(self, capacity: int = 4, max_bytes: int = 8 << 20):
        self.capacity = capacity
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._entries: OrderedDict[bytes, tuple[ObjectGraph, GraphFacts]] = OrderedDict()
        self._bytes = 0  # of the keys kept

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def decode(self, data: object, *, path: str | None = None) -> tuple[ObjectGraph, GraphFacts]:
        """``objgraph.decode(data)`` and its facts, reused when ``data`` equals bytes decoded before."""
        key = data if type(data) is bytes and len(data) <= self.max_bytes else None  # plain bytes: compared by value
        if key is not None:
            with self._lock:
                entry = self._entries.get(key)
                if entry is not None:
                    self._entries.move_to_end(key)
                    return entry
        graph = decode(data, path=path)
        entry = (graph, graph_facts(graph))
        if key is not None:
            with self._lock:
                if key not in self._entries:
                    self._entries[key] = entry
                    self._bytes += len(key)
                while len(self._entries) > self.capacity or self._bytes > self.max_bytes:
                    self._bytes -= len(self._entries.popitem(last=False)[0])
        return entry


graphs = GraphCache()  # the process's cache of decoded object graphs (``Checkpoint.read``/``restore``)


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


class _Bindings(Mapping):
    """Saved node id → live object, held weakly where the object allows it (tuples do not).

    A node whose object has gone stays counted as bound; ``get`` then returns None.
    """

    def __init__(self) -> None:
        self._refs: dict[int, Any] = {}

    def __getitem__(self, node_id: int) -> Trackable:
        ref = self._refs[node_id]
        obj = ref() if isinstance(ref, weakref.ref) else ref
        if obj is None:
            raise KeyError(node_id)
        return obj

    def get(self, node_id: int, default: Any = None) -> Any:
        try:
            return self[node_id]
        except KeyError:
            return default

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._refs

    def __iter__(self) -> Iterator[int]:
        return iter(self._refs)

    def __len__(self) -> int:
        return len(self._refs)

    def values(self):  # live objects only
        return [obj for obj in (self.get(n) for n in self._refs) if obj is not None]

    def live_ids(self) -> set[int]:
        """``id()`` of every bound object still alive (what a status compares live objects with)."""
        out = set()
        for ref in self._refs.values():
            obj = ref() if type(ref) is weakref.ref else ref
            if obj is not None:
                out.add(id(obj))
        return out

    def update(self, pairs: Iterable[tuple[int, Trackable]]) -> None:
        for node_id, obj in pairs:
            try:
                self._refs[node_id] = weakref.ref(obj)
            except TypeError:
                self._refs[node_id] = obj


class ObjectGraphMatching:
    """One restore of an object-graph checkpoint into one object graph, deferred values included."""

    def __init__(self, saved: ObjectGraph, entries: Mapping[str, BundleEntry], prefix: str, *,
                 skip_slots: bool = False, facts: GraphFacts | None = None):
        self.saved = saved
        self.facts = facts if facts is not None else graph_facts(saved)
        self.names = self.facts.names
        self.entries = entries
        self.prefix = prefix
        self.skip_slots = skip_slots
        self.state = RestoreState()
        self.bound = _Bindings()
        self.pending: dict[str, Any] = {}  # verified values of saved nodes not bound yet, by key
        self.uid = 0  # the session's restore number (trackable.restore_order), set by start
        self._matched: tuple[Match, Trackable, tuple[tuple[str, Trackable], ...]] | None = None  # see reuse_match

    @classmethod
    def from_storage(cls, storage: FileSystemReader, *, skip_slots: bool = False) -> ObjectGraphMatching:
        saved, facts = _read_graph(storage)
        return cls(saved, storage.index.entries, storage.prefix, skip_slots=skip_slots, facts=facts)

    def start(self, session: RestoreSession, root: Trackable, attached: Sequence[tuple[str, Trackable]]) -> None:
        """Match from the root, restore everything that exists, and read what waits into memory.

        Once that succeeded, a warning about values never used is issued when this goes away.
        """
        self.uid = session.uid
        found = self._take_match(root, attached)
        if found is None:
            found = match(self.saved, [(0, root)], self.bound, slot_waits=self.state.slot_waits, attached=attached,
                          skip_slots=self.skip_slots)
        prepare.run(self.saved, self.entries, self.names, found.bindings)  # e.g. JAX templates: casts, abstract leaves
        targets, unused = self._targets(found.bindings)
        pending = self._pending_requests(found)
        values = session.restore_targets(targets, pending)
        self.pending = {r.key: v for r, v in zip(pending, values)}
        self._record_match(found, unused)
        finalizer = weakref.finalize(self, _warn_unused, self.state, self.facts, self.prefix, self.skip_slots)
        finalizer.atexit = False

    def reuse_match(self, found: Match, root: Trackable, attached: Sequence[tuple[str, Trackable]]) -> None:
        """Let the next :meth:`start` from ``root`` use ``found``, a match of this graph from ``root`` with no
        earlier bindings just made (``strict.check``'s, right before the restore), instead of matching again."""
        self._matched = (found, root, tuple(attached))

    def _take_match(self, root: Trackable, attached: Sequence[tuple[str, Trackable]]) -> Match | None:
        """The match handed over by :meth:`reuse_match` if it was made from these objects, and this is the
        first start (nothing bound, no slot waiting); it is used once."""
        handed, self._matched = self._matched, None
        if handed is None or self.bound or self.state.slot_waits:
            return None
        found, matched_root, matched_attached = handed
        same = matched_root is root and len(matched_attached) == len(attached) and all(
            name == other_name and obj is other for (name, obj), (other_name, other) in zip(matched_attached, attached))
        return found if same else None

    def resume(self, node_id: int, obj: Trackable) -> None:
        """Restore a deferred node into ``obj``, which has just been attached, from the values in memory."""
        found = match(self.saved, [(node_id, obj)], self.bound, slot_waits=self.state.slot_waits,
                      skip_slots=self.skip_slots)
        targets, unused = self._targets(found.bindings)
        for t in targets:
            if t.request.key not in self.entries:
                raise DataLossError(f"checkpoint {self.prefix} lists key {t.request.key!r} for {t.request.label} "
                                    "but has no such tensor", path=self.prefix, key=t.request.key)
        check_requests(self.entries, [t.request for t in targets], prefix=self.prefix)
        grouped: dict[int, tuple[Trackable, dict[str, Any]]] = {}
        for t in targets:
            if not restore_order.claim(t.obj, self.uid):
                continue  # a newer restore already set this object (TF's rule: the newest restore wins)
            grouped.setdefault(id(t.obj), (t.obj, {}))[1][t.name] = self.pending[t.request.key]
        for owner, named in grouped.values():
            owner._restore_tensors(named)
        for t in targets:
            self.pending.pop(t.request.key, None)
        self._record_match(found, unused)

    def _targets(self, bindings: Sequence[tuple[int, Trackable]]) -> tuple[list[Target], dict[int, list[str]]]:
        out: list[Target] = []
        unused: dict[int, list[str]] = {}
        nodes, labels = self.saved.nodes, self.facts.labels
        append = out.append
        for node_id, obj in bindings:
            attributes = nodes[node_id].attributes
            if not attributes:
                continue
            current = obj._serialize_tensors()
            for name, _, key in attributes:
                value = current.get(name, _MISSING)
                if value is not _MISSING:
                    append(target(node_id, obj, name, key, labels[node_id], value))
                else:
                    unused.setdefault(node_id, []).append(name)
        return out, unused

    def _pending_requests(self, found: Match) -> list[Request]:
        """What saved nodes that stay unbound hold: read now, assigned when their object appears."""
        facts = self.facts
        unbound = facts.valued.difference([n for n, _ in found.bindings], self.bound,
                                          facts.slot_nodes if self.skip_slots else ())
        out = []
        for node_id in sorted(unbound):
            for attr in self.saved.nodes[node_id].attributes:
                entry = self.entries.get(attr.checkpoint_key)
                if entry is not None:
                    out.append(Request(attr.checkpoint_key, facts.labels[node_id], entry.dtype, entry.shape))
        return out

    def _record_match(self, found: Match, unused: Mapping[int, list[str]]) -> None:
        """Remember what ``found`` bound, the slots and children that wait, and the attributes left unused."""
        state = self.state
        self.bound.update(found.bindings)
        state.bound.update([node_id for node_id, _ in found.bindings])
        if state.slot_waits:
            for node_id, _ in found.bindings:
                state.slot_waits.pop(node_id, None)
        for wait in found.slot_waits:
            state.slot_waits.setdefault(wait.ref.original_variable_node_id, []).append(wait)
        state.unused_attributes.update(unused)
        for d in found.deferrals:
            d.parent._defer_dependency(d.local_name, _Deferred(self, d.node_id))
        for sd in found.slot_deferrals:
            sd.optimizer._defer_slot(sd.slot_name, sd.original, _Deferred(self, sd.node_id))

    # -- what statuses ask -------------------------------------------------------------

    def unresolved_nodes(self) -> list[int]:
        """Saved nodes with values that no live object received (slots ignored when skipped)."""
        return _unresolved(self.facts, self.state, self.skip_slots)


@dataclass(frozen=True)
class _Deferred:
    """A deferred restoration kept on a live parent; ``apply`` restores into the new child."""

    matching: ObjectGraphMatching
    node_id: int

    def apply(self, obj: Trackable) -> None:
        self.matching.resume(self.node_id, obj)

    def superseded(self) -> None:
        """A newer restore replaced this one on its parent: its unused values are not warned about."""
        self.matching.state.expect_partial = True

    def saved_specs(self) -> dict[str, tuple[Any, tuple[int, ...]]]:
        """The saved dtype and shape of each of the node's attributes, from the checkpoint's index."""
        entries = self.matching.entries
        return {a.name: (entries[a.checkpoint_key].dtype, tuple(entries[a.checkpoint_key].shape))
                for a in self.matching.saved.nodes[self.node_id].attributes if a.checkpoint_key in entries}


def _read_graph(storage: FileSystemReader) -> tuple[ObjectGraph, GraphFacts]:
    graph, facts = graphs.decode(read_stored_string(storage, OBJECT_GRAPH_KEY), path=storage.prefix)
    if facts.registered_saver is not None:
        node_id, saver = facts.registered_saver
        raise InvalidArgumentError(
            f"checkpoint {storage.prefix}: node {node_id} uses the registered saver "
            f"{saver!r}, whose data lives outside the bundle; gpuckpt cannot restore it",
            path=storage.prefix)
    return graph, facts


def _unresolved(facts: GraphFacts, state: RestoreState, skip_slots: bool) -> list[int]:
    """Saved nodes with values that no live object received, in node order."""
    return sorted(facts.valued.difference(state.bound, facts.slot_nodes if skip_slots else ()))


def _warn_unused(state: RestoreState, facts: GraphFacts, prefix: str, skip_slots: bool) -> None:
    """At the end of a restore, name the values no object received (unless expect_partial)."""
    if state.expect_partial:
        return
    names = facts.names
    lines = [f"Value in checkpoint could not be found in the restored object: {names[i]}"
             for i in _unresolved(facts, state, skip_slots)]
    lines += [f"Unused attributes of {names[i]}: {attrs}" for i, attrs in state.unused_attributes.items()]
    if lines:
        warnings.warn(
            f"Checkpoint {prefix} was restored with values that were never used (call "
            "status.expect_partial() if this is intended):\n" + "\n".join(lines),
            UnrestoredValuesWarning, stacklevel=2)
