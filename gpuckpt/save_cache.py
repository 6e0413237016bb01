"""The structure of the last save, reused while it holds: graph walk, keys and object-graph bytes.

A save walks the live objects into TF's object graph, computes every checkpoint key and encodes
the graph; with thousands of variables that costs more than writing their bytes. Like PyTorch
DCP's cached plans, :class:`SaveCache` keeps what the last save computed, and each save checks,
object by object, that it still describes the objects: the same children (identity and name, in
order), the same declared slots, the same attribute names and full names, and values of the same
dtype and shape. Any difference (an added, removed or replaced object, a reshaped or recast
value, an edited tracked container) means a full walk, which becomes the new cache. The checks
that refuse unsaved state (``saveable``) run on every save. Objects are held weakly: the cache
never keeps a replaced variable alive (a graph whose objects take no weak reference is not cached).
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import saveable
from .arrays import ValueSpec, value_spec
from .format import objgraph
from .graph import LiveGraph, named_children, walk
from .trackable.base import Trackable


@dataclass(frozen=True)
class Structure:
    """What one save found: node ``i`` is ``refs[i]()`` at ``paths[i]``; nodes before ``walked`` were
    reached through dependencies (the rest are slot variables)."""

    refs: tuple[weakref.ref, ...]
    paths: tuple[tuple[str, ...], ...]
    walked: int
    edges: tuple[tuple[tuple[str, int], ...], ...]  # per walked node: (local name, child node)
    slots: tuple[tuple[tuple[str, weakref.ref, weakref.ref], ...], ...]  # per walked node, as declared
    attributes: tuple[tuple[str, ...], ...]  # per node: the names its values are saved under
    full_names: tuple[str | None, ...]  # per node with values
    keys: tuple[str, ...]  # every value's checkpoint key, in payload order, the object graph's last
    specs: tuple[np.dtype | ValueSpec, ...]  # per value: a host array's dtype (shape in ``shapes``), else its spec
    shapes: tuple[tuple[int, ...], ...]
    graph: bytes  # the encoded object graph


class SaveCache:
    """The last save's :class:`Structure`; :meth:`tensors` gives the values to save, by key."""

    def __init__(self) -> None:
        self.structure: Structure | None = None

    def clear(self) -> None:
        self.structure = None

    def tensors(self, root: Trackable, attached: Sequence[tuple[str, Trackable]]) -> dict[str, Any]:
        """Every value to save under its key, in payload order, the object graph last."""
        structure = self.structure
        if structure is not None:
            found = _values_if_unchanged(structure, root, attached)
            if found is not None:
                return found
        saveable.check(root, attached)  # what the walk would drop is an error naming its path
        live = walk(root, attached)
        tensors = live.tensors_by_key()
        graph = objgraph.encode(live.graph)
        tensors[objgraph.OBJECT_GRAPH_KEY] = graph
        self.structure = _structure(live, tensors, graph)
        return tensors


def _spec(value: Any) -> tuple[np.dtype | ValueSpec, tuple[int, ...]] | None:
    """What the cache compares of a value: a NumPy array's dtype and shape, else its ``value_spec``
    (None for a value it cannot describe: the full path then decides, and reports, what to do)."""
    if type(value) is np.ndarray:
        return value.dtype, value.shape
    try:
        spec = value_spec(value)
    except Exception:
        return None
    return spec, spec.shape


def _values_if_unchanged(s: Structure, root: Trackable, attached: Sequence[tuple[str, Trackable]]
                         ) -> dict[str, Any] | None:
    """The values by key if every object still matches ``s``, else None; saveable's checks raise."""
    objects = [ref() for ref in s.refs]
    if objects[0] is not root:
        return None
    out: dict[str, Any] = {}
    keys, specs, shapes = s.keys, s.specs, s.shapes
    k = 0
    for i, obj in enumerate(objects):
        if obj is None:
            return None
        if i < s.walked and not _same_edges(s, i, obj, objects, attached if i == 0 else ()):
            return None
        values = obj._serialize_tensors()
        names = s.attributes[i]
        if tuple(values) != names:
            return None
        if not names:
            continue
        if obj._checkpoint_full_name() != s.full_names[i]:
            return None
        for name in names:
            value = values[name]
            spec = specs[k]
            if type(value) is np.ndarray:
                if value.dtype != spec or value.shape != shapes[k]:
                    return None
            elif _spec(value) != (spec, shapes[k]):
                return None
            out[keys[k]] = value
            k += 1
    saveable.check_objects(objects[: s.walked], s.paths[: s.walked])  # type: ignore[arg-type]  # none is None
    out[keys[k]] = s.graph
    return out


def _same_edges(s: Structure, i: int, obj: Trackable, objects: list, attached: Sequence[tuple[str, Trackable]]
                ) -> bool:
    """Whether a walked object still has the cached children and declared slots."""
    if not attached and saveable.is_plain_leaf(obj):
        return not s.edges[i] and not s.slots[i]  # it has none, and nothing to validate
    path = s.paths[i]
    saveable.validate_before_children(obj, path)
    children = named_children(obj, attached, path)
    cached = s.edges[i]
    if len(children) != len(cached):
        return False
    for (name, child), (cached_name, node) in zip(children, cached):
        if child is not objects[node] or name != cached_name:
            return False
    declared = obj._slot_variables()
    slots = s.slots[i]
    if len(declared) != len(slots):
        return False
    return all(ref.slot_name == name and ref.original is original() and ref.slot is slot()
               for ref, (name, original, slot) in zip(declared, slots))


def _structure(live: LiveGraph, tensors: Mapping[str, Any], graph: bytes) -> Structure | None:
    """The cache of a full walk, or None when an object takes no weak reference."""
    nodes = live.graph.nodes
    slot_nodes = [ref.slot_variable_node_id for node in nodes for ref in node.slot_variables]
    walked = min(slot_nodes) if slot_nodes else len(nodes)
    try:
        refs = tuple(weakref.ref(obj) for obj in live.objects)
        slots = tuple(tuple((ref.slot_name, weakref.ref(ref.original), weakref.ref(ref.slot))
                            for ref in obj._slot_variables()) for obj in live.objects[:walked])
    except TypeError:
        return None
    keys = tuple(tensors)
    described = [_spec(tensors[key]) for key in keys[:-1]]
    if any(d is None for d in described):
        return None
    specs, shapes = zip(*described) if described else ((), ())  # type: ignore[misc]  # none is None
    return Structure(
        refs=refs, paths=live.paths, walked=walked,
        edges=tuple(tuple((c.local_name, c.node_id) for c in node.children) for node in nodes[:walked]),
        slots=slots,
        attributes=tuple(tuple(a.name for a in node.attributes) for node in nodes),
        full_names=tuple(node.attributes[0].full_name if node.attributes else None for node in nodes),
        keys=keys, specs=tuple(specs), shapes=tuple(shapes), graph=graph)
