"""Walk live trackables into TF's object graph: BFS numbering, key escaping, slot variables.

Pure: ``walk`` reads the objects' dependencies and values and returns plain data; nothing
is written or copied. The numbering rules are docs/format.md §9.3 and the keys §9.4.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import InvalidArgumentError
from .format.objgraph import AttributeRef, ChildRef, GraphNode, ObjectGraph, SlotRef
from .trackable.base import Trackable
from .trackable.containers import untracked_edit


def escape_local_name(name: str) -> str:
    """Escape a local name for use in a key: ``.`` → ``..``, then ``/`` → ``.S``."""
    return name.replace(".", "..").replace("/", ".S")


def object_path(local_names: Sequence[str]) -> str:
    """The escaped ``/``-joined path of an object (empty for the root)."""
    return "/".join(escape_local_name(n) for n in local_names)


def attribute_key(path: str, attribute: str) -> str:
    """Checkpoint key of an object's attribute, e.g. ``model/w/.ATTRIBUTES/VARIABLE_VALUE``."""
    return f"{path}/.ATTRIBUTES/{escape_local_name(attribute)}"


def slot_path(variable_path: str, optimizer_path: str, slot_name: str) -> str:
    """Key prefix of a slot: its keys read ``w/.OPTIMIZER_SLOT/opt/m/.ATTRIBUTES/VARIABLE_VALUE``."""
    return f"{variable_path}/.OPTIMIZER_SLOT/{optimizer_path}/{escape_local_name(slot_name)}"


def pretty_path(local_names: Sequence[str]) -> str:
    """Human path for messages: ``(root).model.dense.kernel``."""
    return ".".join(("(root)", *local_names))


class NodeNames(Sequence[str]):
    r"""Human names of a saved graph's nodes, built on demand from parent links.

    Building every full name up front costs time and memory quadratic in the graph's depth (a
    12,000-deep chain is 1.6 GB); here each node keeps only its parent and local name, and a name
    is rendered when asked for, with at most ``MAX_NAME_PARTS`` parts (the middle elided). The
    parent links themselves are found on the first name asked for: a restore that succeeds
    renders none (its requests carry :meth:`label`\ s, rendered only in messages).
    """

    MAX_NAME_PARTS = 64

    def __init__(self, graph: ObjectGraph):
        self._graph = graph
        self._links: tuple[list[tuple[int, str] | None], dict[int, tuple[int, str, int]]] | None = None

    def label(self, node_id: int) -> NodeLabel:
        """What names node ``node_id`` in a message, rendered only if one is written."""
        return NodeLabel(self, node_id)

    def __len__(self) -> int:
        return len(self._graph.nodes)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        _, slots = self._parents_and_slots()
        if index in slots:
            variable, slot_name, optimizer = slots[index]
            return f"{self._plain(optimizer)}'s state '{slot_name}' for {self._plain(variable)}"  # TF's wording
        return self._path(index)

    def _parents_and_slots(self) -> tuple[list[tuple[int, str] | None], dict[int, tuple[int, str, int]]]:
        if self._links is None:
            self._links = _links(self._graph)
        return self._links

    def _plain(self, node_id: int) -> str:
        """A slot's variable or optimizer: its path, or a placeholder for what has none."""
        if not 0 <= node_id < len(self) or node_id in self._parents_and_slots()[1]:
            return "?"
        return self._path(node_id)

    def _path(self, node_id: int) -> str:
        parents, slots = self._parents_and_slots()
        if node_id == 0:
            return "(root)"
        if node_id not in slots and parents[node_id] is None:
            return f"(unreachable node {node_id})"
        parts: list[str] = []
        while node_id != 0 and parents[node_id] is not None:
            node_id, name = parents[node_id]  # type: ignore[misc]
            parts.append(name)
        parts.append("(root)")
        parts.reverse()
        keep = self.MAX_NAME_PARTS // 2
        if len(parts) > self.MAX_NAME_PARTS:
            parts = [*parts[:keep], f"...({len(parts) - 2 * keep} more)...", *parts[-keep:]]
        return ".".join(parts)


class NodeLabel:
    """A node's human name in a message (``str()`` renders it): the label of a restore request."""

    __slots__ = ("_names", "_node_id")

    def __init__(self, names: NodeNames, node_id: int):
        self._names, self._node_id = names, node_id

    def __str__(self) -> str:
        return self._names[self._node_id]

    def __repr__(self) -> str:
        return repr(str(self))

    def __eq__(self, other: object) -> bool:
        return str(self) == str(other) if isinstance(other, NodeLabel | str) else NotImplemented

    def __hash__(self) -> int:
        return hash(str(self))


def _links(graph: ObjectGraph) -> tuple[list[tuple[int, str] | None], dict[int, tuple[int, str, int]]]:
    """Each node's (parent, local name) on its first breadth-first path, and each slot node's
    (variable, slot name, optimizer) when it has no path of its own."""
    count = len(graph.nodes)
    parents: list[tuple[int, str] | None] = [None] * count
    seen = bytearray(count)
    seen[0] = 1
    queue = [0]
    for node_id in queue:
        for child in graph.nodes[node_id].children:
            if 0 <= child.node_id < count and not seen[child.node_id]:
                seen[child.node_id] = 1
                parents[child.node_id] = (node_id, child.local_name)
                queue.append(child.node_id)
    slots: dict[int, tuple[int, str, int]] = {}
    for node_id, node in enumerate(graph.nodes):
        for slot in node.slot_variables:
            target = slot.slot_variable_node_id
            if 0 <= target < count and not seen[target] and target not in slots:
                slots[target] = (slot.original_variable_node_id, slot.slot_name, node_id)
    return parents, slots


def pretty_names(graph: ObjectGraph) -> NodeNames:
    """A human name for every node of a (saved) graph, as TF prints them in assertions.

    Linear in the graph's size, and nothing is computed before a name is asked for (:class:`NodeNames`).
    """
    return NodeNames(graph)


@dataclass(frozen=True)
class LiveGraph:
    """The object graph of live objects: ``graph.nodes[i]`` describes ``objects[i]``.

    ``paths[i]`` are the local names from the root (a slot's is its variable's path plus
    the slot name, for messages only) and ``tensors[i]`` the values it saves, by attribute.
    """

    graph: ObjectGraph
    objects: tuple[Trackable, ...]
    paths: tuple[tuple[str, ...], ...]
    tensors: tuple[Mapping[str, Any], ...]

    def tensors_by_key(self) -> dict[str, Any]:
        """Every value under its checkpoint key, in node order (TF's payload order)."""
        out: dict[str, Any] = {}
        for node, values in zip(self.graph.nodes, self.tensors):
            for attr in node.attributes:
                out[attr.checkpoint_key] = values[attr.name]
        return out


def children_of(obj: Trackable, attached: Sequence[tuple[str, Trackable]] = ()) -> list[tuple[str, Trackable]]:
    """An object's dependencies, plus edges ``attached`` to it from outside (Checkpoint(root, ...)).

    A tracked container edited behind its wrapper has dependencies nobody can match on
    restore-on-create; saving or restoring it raises, as in TF (``InvalidArgumentError``).
    """
    problem = untracked_edit(obj)
    if problem is not None:
        raise InvalidArgumentError(f"cannot checkpoint a {type(obj).__name__}: {problem}")
    return [*obj._trackable_children(), *attached]


def walk(root: Trackable, attached: Sequence[tuple[str, Trackable]] = ()) -> LiveGraph:
    """Number every object reachable from ``root`` as TF does, and describe each node.

    ``attached`` are extra named edges from the root (TF's ``attached_dependencies``).
    """
    objects, paths, edges, ids = _bfs(root, attached)
    slot_parents = _number_slots(objects, paths, ids)
    tensors = [dict(obj._serialize_tensors()) for obj in objects]
    nodes = []
    for node_id, obj in enumerate(objects):
        key_of = _key_function(node_id, paths, slot_parents)
        attrs = tuple(AttributeRef(name, obj._checkpoint_full_name(), key_of(name)) for name in tensors[node_id])
        nodes.append(GraphNode(children=tuple(edges[node_id]) if node_id < len(edges) else (),
                               attributes=attrs,
                               slot_variables=tuple(slot_parents.refs.get(node_id, ()))))
    marked = _mark_values(nodes)
    return LiveGraph(ObjectGraph(tuple(marked)), tuple(objects), tuple(paths), tuple(tensors))


@dataclass(frozen=True)
class LiveObjects:
    """The objects ``walk`` numbers, in its order, without their nodes and keys: ``paths[i]`` of
    ``objects[i]``; ``slots`` the ids of slot variables (the nodes after the dependencies)."""

    objects: tuple[Trackable, ...]
    paths: tuple[tuple[str, ...], ...]
    slots: frozenset[int]


def live_objects(root: Trackable, attached: Sequence[tuple[str, Trackable]] = ()) -> LiveObjects:
    """Every object reachable from ``root``, as ``walk`` finds them (the same errors), for checks that ask only
    which objects exist (the restore statuses): no attribute, key, edge or node is built."""
    objects, paths, _, ids = _bfs(root, attached, edges=False)
    slots = _number_slots(objects, paths, ids)
    return LiveObjects(tuple(objects), tuple(paths), frozenset(slots.keys))


_new = tuple.__new__  # ChildRef built without its generated ``__new__`` (one per edge)
BASE_CHILDREN = Trackable._trackable_children  # a class that keeps these has no children (is_leaf) ...
BASE_SLOTS = Trackable._slot_variables  # ... and no slots (declares_slots): hot loops compare with them inline


def _bfs(root: Trackable, attached: Sequence[tuple[str, Trackable]], *, edges: bool = True):
    """Objects in breadth-first order from ``root`` with their paths, (``edges``) each one's children, and
    the node id of each object by ``id()``."""
    ids = {id(root): 0}
    objects: list[Trackable] = [root]
    paths: list[tuple[str, ...]] = [()]
    refs_by_node: list[Sequence[ChildRef]] = []
    add_object, add_path = objects.append, paths.append
    for node_id, obj in enumerate(objects):
        if node_id and type(obj)._trackable_children is BASE_CHILDREN:
            if edges:
                refs_by_node.append(())
            continue  # a leaf (is_leaf): named_children would list nothing, and could raise nothing
        path = paths[node_id]
        children = named_children(obj, attached if node_id == 0 else (), path)
        if not edges:
            for name, child in children:
                if id(child) not in ids:
                    ids[id(child)] = len(objects)
                    add_object(child)
                    add_path((*path, name))
            continue
        refs: list[ChildRef] = []
        for name, child in children:
            child_id = ids.get(id(child))
            if child_id is None:
                child_id = ids[id(child)] = len(objects)
                add_object(child)
                add_path((*path, name))
            refs.append(_new(ChildRef, (child_id, name)))
        refs_by_node.append(refs)
    return objects, paths, refs_by_node, ids


def is_leaf(obj: Trackable) -> bool:
    """Whether ``obj`` has no dependencies by its class: it keeps ``Trackable``'s ``_trackable_children``
    (no tracked container does), so ``named_children`` of it is empty and cannot raise (every variable)."""
    return type(obj)._trackable_children is BASE_CHILDREN


def declares_slots(obj: Trackable) -> bool:
    """Whether ``obj``'s class may have slot variables (it overrides ``_slot_variables``: the optimizers)."""
    return type(obj)._slot_variables is not BASE_SLOTS


def named_children(obj: Trackable, attached: Sequence[tuple[str, Trackable]],
                    path: tuple[str, ...]) -> list[tuple[str, Trackable]]:
    """``children_of``, with the object's path (the attribute that holds it) in any error."""
    problem = untracked_edit(obj)
    if problem is not None:
        raise InvalidArgumentError(f"cannot checkpoint {pretty_path(path)}: {problem}")
    try:
        return [*obj._trackable_children(), *attached]  # children_of, its untracked_edit check just made
    except InvalidArgumentError as exc:
        raise InvalidArgumentError(f"{pretty_path(path)}: {exc}", path=exc.path, key=exc.key) from exc


@dataclass
class _Slots:
    refs: dict[int, list[SlotRef]]  # optimizer node id -> its slot references
    keys: dict[int, tuple[int, int, str]]  # slot node id -> (variable id, optimizer id, slot name)


def _number_slots(objects: list[Trackable], paths: list[tuple[str, ...]], ids: dict[int, int]) -> _Slots:
    """Append slot variable nodes after the BFS nodes, in TF's order (docs/format.md §9.3); ``ids`` (the
    node id of each object by ``id()``) gains them too."""
    slots = _Slots(refs={}, keys={})
    optimizers = [i for i, obj in enumerate(objects) if type(obj)._slot_variables is not BASE_SLOTS]  # declares_slots
    for opt_id in optimizers:
        declared = list(objects[opt_id]._slot_variables())
        if not declared:
            continue  # not an optimizer (every variable)
        for slot_name in dict.fromkeys(ref.slot_name for ref in declared):
            found = sorted(((ids[id(ref.original)], ref.slot) for ref in declared
                            if ref.slot_name == slot_name and id(ref.original) in ids), key=lambda t: t[0])
            for var_id, slot in found:
                if id(slot) in ids:
                    raise InvalidArgumentError(
                        f"slot variable {slot_name!r} of {pretty_path(paths[var_id])} is also a dependency "
                        f"({pretty_path(paths[ids[id(slot)]])}); TensorFlow cannot checkpoint that either")
                slot_id = ids[id(slot)] = len(objects)
                objects.append(slot)
                paths.append((*paths[var_id], slot_name))
                slots.refs.setdefault(opt_id, []).append(SlotRef(var_id, slot_name, slot_id))
                slots.keys[slot_id] = (var_id, opt_id, slot_name)
    return slots


def _key_function(node_id: int, paths: list[tuple[str, ...]], slots: _Slots):
    if node_id in slots.keys:
        var_id, opt_id, slot_name = slots.keys[node_id]
        path = slot_path(object_path(paths[var_id]), object_path(paths[opt_id]), slot_name)
    else:
        path = object_path(paths[node_id])
    return lambda name: attribute_key(path, name)


def _mark_values(nodes: list[GraphNode]) -> list[GraphNode]:
    """Set ``has_checkpoint_values``: own values, or values reachable through children."""
    has = [bool(n.attributes or n.slot_variables or n.registered_saver) for n in nodes]
    changed = True
    while changed:  # a fixpoint, because aliases and cycles can point anywhere
        changed = False
        for node_id in reversed(range(len(nodes))):
            if not has[node_id] and any(has[c.node_id] for c in nodes[node_id].children):
                has[node_id] = changed = True
    return [GraphNode(n.children, n.attributes, n.slot_variables, has[i], n.registered_saver)
            for i, n in enumerate(nodes)]
