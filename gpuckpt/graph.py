"""Walk live trackables into TF's object graph: BFS numbering, key escaping, slot variables.

Pure: ``walk`` reads the objects' dependencies and values and returns plain data; nothing
is written or copied. The numbering rules are spec section 9.3 and the keys 9.4.
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


def pretty_names(graph: ObjectGraph) -> tuple[str, ...]:
    """A human name for every node of a (saved) graph, as TF prints them in assertions."""
    names: dict[int, str] = {0: "(root)"}
    queue = [0]
    for node_id in queue:
        for child in graph.nodes[node_id].children:
            if child.node_id not in names:
                names[child.node_id] = f"{names[node_id]}.{child.local_name}"
                queue.append(child.node_id)
    for node_id, node in enumerate(graph.nodes):
        for slot in node.slot_variables:
            if slot.slot_variable_node_id not in names:
                names[slot.slot_variable_node_id] = (  # TF's wording: the optimizer's state for the variable
                    f"{names.get(node_id, '?')}'s state '{slot.slot_name}' "
                    f"for {names.get(slot.original_variable_node_id, '?')}")
    return tuple(names.get(i, f"(unreachable node {i})") for i in range(len(graph.nodes)))


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
    objects, paths, edges = _bfs(root, attached)
    slot_parents = _number_slots(objects, paths)
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


def _bfs(root: Trackable, attached: Sequence[tuple[str, Trackable]]):
    ids = {id(root): 0}
    objects: list[Trackable] = [root]
    paths: list[tuple[str, ...]] = [()]
    edges: list[list[ChildRef]] = []
    for node_id, obj in enumerate(objects):
        refs = []
        for name, child in _named_children(obj, attached if node_id == 0 else (), paths[node_id]):
            child_id = ids.get(id(child))
            if child_id is None:
                child_id = ids[id(child)] = len(objects)
                objects.append(child)
                paths.append((*paths[node_id], name))
            refs.append(ChildRef(child_id, name))
        edges.append(refs)
    return objects, paths, edges


def _named_children(obj: Trackable, attached: Sequence[tuple[str, Trackable]],
                    path: tuple[str, ...]) -> list[tuple[str, Trackable]]:
    """``children_of``, with the object's path (the attribute that holds it) in any error."""
    problem = untracked_edit(obj)
    if problem is not None:
        raise InvalidArgumentError(f"cannot checkpoint {pretty_path(path)}: {problem}")
    try:
        return children_of(obj, attached)
    except InvalidArgumentError as exc:
        raise InvalidArgumentError(f"{pretty_path(path)}: {exc}", path=exc.path, key=exc.key) from exc


@dataclass
class _Slots:
    refs: dict[int, list[SlotRef]]  # optimizer node id -> its slot references
    keys: dict[int, tuple[int, int, str]]  # slot node id -> (variable id, optimizer id, slot name)


def _number_slots(objects: list[Trackable], paths: list[tuple[str, ...]]) -> _Slots:
    """Append slot variable nodes after the BFS nodes, in TF's order (spec 9.3)."""
    ids = {id(obj): i for i, obj in enumerate(objects)}
    slots = _Slots(refs={}, keys={})
    for opt_id in range(len(objects)):
        declared = list(objects[opt_id]._slot_variables())
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
