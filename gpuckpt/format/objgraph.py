"""The ``_CHECKPOINTABLE_OBJECT_GRAPH`` value: TrackableObjectGraph bytes ↔ plain dataclasses.

Bytes in, bytes out: encoding through the protobuf classes of ``proto`` gives TensorFlow's
exact bytes (docs/format.md §9.2), provided ``has_checkpoint_values`` is set on every node as TF does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from google.protobuf.message import DecodeError

from ..errors import DataLossError
from . import proto

OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"


class ChildRef(NamedTuple):
    """An edge: the child node ``node_id`` is called ``local_name`` by its parent.

    This and the three records below are NamedTuples, not frozen dataclasses: a graph has a node, an
    edge and an attribute per variable, and a tuple costs a fraction of a dataclass to build."""

    node_id: int
    local_name: str


class AttributeRef(NamedTuple):
    """A saved tensor of a node: attribute ``name``, stored under ``checkpoint_key``."""

    name: str
    full_name: str
    checkpoint_key: str


class SlotRef(NamedTuple):
    """Optimizer state: node ``slot_variable_node_id`` holds ``slot_name`` of another node."""

    original_variable_node_id: int
    slot_name: str
    slot_variable_node_id: int


class GraphNode(NamedTuple):
    """One object. ``has_checkpoint_values`` is None when a (pre-2.x) writer left it out."""

    children: tuple[ChildRef, ...] = ()
    attributes: tuple[AttributeRef, ...] = ()
    slot_variables: tuple[SlotRef, ...] = ()
    has_checkpoint_values: bool | None = None
    registered_saver: str | None = None

    @property
    def holds_values(self) -> bool:
        """TF's reading of ``has_checkpoint_values``, with its fallback when the field is absent."""
        if self.has_checkpoint_values is not None:
            return self.has_checkpoint_values
        return bool(self.children or self.attributes or self.slot_variables)


@dataclass(frozen=True)
class ObjectGraph:
    """All nodes, numbered by position; node 0 is the root."""

    nodes: tuple[GraphNode, ...]


def encode(graph: ObjectGraph) -> bytes:
    """Serialize as TensorFlow does (field order, wrapper set on every node)."""
    message = proto.TrackableObjectGraph()
    for node in graph.nodes:
        out = message.nodes.add()
        for child in node.children:
            out.children.add(node_id=child.node_id, local_name=child.local_name)
        for attr in node.attributes:
            out.attributes.add(name=attr.name, full_name=attr.full_name, checkpoint_key=attr.checkpoint_key)
        for slot in node.slot_variables:
            out.slot_variables.add(original_variable_node_id=slot.original_variable_node_id,
                                   slot_name=slot.slot_name, slot_variable_node_id=slot.slot_variable_node_id)
        if node.registered_saver is not None:
            out.registered_saver.name = node.registered_saver
        if node.has_checkpoint_values:
            out.has_checkpoint_values.value = True
        else:
            out.has_checkpoint_values.SetInParent()
    return message.SerializeToString()


def decode(data: object, *, path: str | None = None) -> ObjectGraph:
    """Parse and check the graph: DataLossError if it is not one string, is malformed or refers to missing nodes.

    ``data`` is what the checkpoint stores under ``OBJECT_GRAPH_KEY``; a damaged file may store
    anything there (a float tensor, several strings), which is refused by type before parsing.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        shape = getattr(data, "shape", None)
        dtype = getattr(data, "dtype", type(data).__name__)
        raise DataLossError(f"the object graph of checkpoint {path!r} is stored as {dtype} of shape "
                            f"{list(shape) if shape is not None else '?'}, not as one string",
                            path=path, key=OBJECT_GRAPH_KEY)
    message = proto.TrackableObjectGraph()
    try:
        message.ParseFromString(bytes(data))
    except (DecodeError, RecursionError) as exc:
        raise DataLossError(f"corrupt object graph in checkpoint {path!r}: {exc}",
                            path=path, key=OBJECT_GRAPH_KEY) from exc
    nodes = message.nodes
    count = len(nodes)
    if count == 0:
        raise DataLossError(f"the object graph of checkpoint {path!r} has no nodes", path=path, key=OBJECT_GRAPH_KEY)
    graph = ObjectGraph(tuple([_node(n, index, count, path) for index, n in enumerate(nodes)]))
    _check_unique_keys(graph, path)
    return graph


def _check_unique_keys(graph: ObjectGraph, path: str | None) -> None:
    """DataLossError if two attributes name the same checkpoint key: each saved value belongs to one object."""
    keys = [a.checkpoint_key for node in graph.nodes for a in node.attributes]
    if len(set(keys)) == len(keys):
        return
    seen: set[str] = set()
    duplicate = next(k for k in keys if k in seen or seen.add(k))  # type: ignore[func-returns-value]
    raise DataLossError(f"the object graph of checkpoint {path!r} lists key {duplicate!r} for two attributes",
                        path=path, key=duplicate)


_new = tuple.__new__


def _node(node, index: int, count: int, path: str | None) -> GraphNode:
    """One node, its references checked against the node count (records built by ``tuple.__new__``,
    without the keyword handling of their constructors: one node and one attribute per variable).

    Each repeated field is looked up once: every access to a field of a parsed message builds a
    new wrapper, the larger part of the cost of a graph of thousands of leaves."""
    children = node.children
    if children:
        children = tuple([_new(ChildRef, (c.node_id, c.local_name)) for c in children])
        ids = [c[0] for c in children]
        if min(ids) < 0 or max(ids) >= count:
            _bad_reference(index, ids, count, path)
    else:
        children = ()
    attributes = node.attributes
    attributes = tuple([_new(AttributeRef, (a.name, a.full_name, a.checkpoint_key)) for a in attributes]) \
        if attributes else ()
    slots = node.slot_variables
    if slots:
        slots = tuple([_new(SlotRef, (s.original_variable_node_id, s.slot_name, s.slot_variable_node_id))
                       for s in slots])
        ids = [i for s in slots for i in (s[0], s[2])]
        if min(ids) < 0 or max(ids) >= count:
            _bad_reference(index, ids, count, path)
    else:
        slots = ()
    return _new(GraphNode, (children, attributes, slots,
                            node.has_checkpoint_values.value if node.HasField("has_checkpoint_values") else None,
                            node.registered_saver.name if node.HasField("registered_saver") else None))


def _bad_reference(index: int, ids: list[int], count: int, path: str | None) -> None:
    bad = next(i for i in ids if not 0 <= i < count)
    raise DataLossError(
        f"node {index} of the object graph of checkpoint {path!r} refers to node {bad}, "
        f"but the graph has {count} nodes", path=path, key=OBJECT_GRAPH_KEY)
