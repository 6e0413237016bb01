"""The ``_CHECKPOINTABLE_OBJECT_GRAPH`` value: TrackableObjectGraph bytes ↔ plain dataclasses.

Bytes in, bytes out: encoding through the protobuf classes of ``proto`` gives TensorFlow's
exact bytes (spec 9.2), provided ``has_checkpoint_values`` is set on every node as TF does.
"""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf.message import DecodeError

from ..errors import DataLossError
from . import proto

OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"


@dataclass(frozen=True)
class ChildRef:
    """An edge: the child node ``node_id`` is called ``local_name`` by its parent."""

    node_id: int
    local_name: str


@dataclass(frozen=True)
class AttributeRef:
    """A saved tensor of a node: attribute ``name``, stored under ``checkpoint_key``."""

    name: str
    full_name: str
    checkpoint_key: str


@dataclass(frozen=True)
class SlotRef:
    """Optimizer state: node ``slot_variable_node_id`` holds ``slot_name`` of another node."""

    original_variable_node_id: int
    slot_name: str
    slot_variable_node_id: int


@dataclass(frozen=True)
class GraphNode:
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
    graph = ObjectGraph(tuple(_node(n) for n in message.nodes))
    _check_ids(graph, path)
    return graph


def _node(node) -> GraphNode:
    return GraphNode(
        children=tuple(ChildRef(c.node_id, c.local_name) for c in node.children),
        attributes=tuple(AttributeRef(a.name, a.full_name, a.checkpoint_key) for a in node.attributes),
        slot_variables=tuple(SlotRef(s.original_variable_node_id, s.slot_name, s.slot_variable_node_id)
                             for s in node.slot_variables),
        has_checkpoint_values=node.has_checkpoint_values.value if node.HasField("has_checkpoint_values") else None,
        registered_saver=node.registered_saver.name if node.HasField("registered_saver") else None,
    )


def _check_ids(graph: ObjectGraph, path: str | None) -> None:
    count = len(graph.nodes)
    if count == 0:
        raise DataLossError(f"the object graph of checkpoint {path!r} has no nodes", path=path, key=OBJECT_GRAPH_KEY)
    for index, node in enumerate(graph.nodes):
        ids = [c.node_id for c in node.children]
        ids += [i for s in node.slot_variables for i in (s.original_variable_node_id, s.slot_variable_node_id)]
        bad = [i for i in ids if not 0 <= i < count]
        if bad:
            raise DataLossError(
                f"node {index} of the object graph of checkpoint {path!r} refers to node {bad[0]}, "
                f"but the graph has {count} nodes", path=path, key=OBJECT_GRAPH_KEY)
