"""Strict restores for PyTorch modules and optimizers, as ``load_state_dict(strict=True)`` is.

Before a restore assigns anything, the saved object graph is matched against the live objects
(the same matching the restore does). Where that match reaches a PyTorch module or optimizer,
every difference is collected:

* missing: a live parameter, buffer, optimizer state tensor or param group with no value in the
  checkpoint (named by the checkpoint key it would have and its ``state_dict`` path);
* unexpected: a checkpointed value below a torch module or optimizer that no live object takes
  (a layer the live model lacks, optimizer state of a parameter the optimizer does not update).

Any difference raises :class:`UnmatchedStateError`, listing them all, and nothing is restored.
``read(path, strict=False)`` / ``restore(path, strict=False)`` restores what matches instead
(``status.expect_partial()`` then silences the warning about the values left unused). gpuckpt's
own objects keep TensorFlow's semantics (values of objects not created yet wait for them).

The live objects are listed (``graph.live_objects``) only where the match leaves one of them unbound: a
restore that matches exactly, the usual case, costs the match alone, and the listing (with its errors, which
name the object's path) runs as before wherever something may be missing.

A weight tie that the live model lost (``to_empty()`` after building on the meta device makes
new parameters) is restored as it was saved: where the checkpoint holds one tensor under two
paths and the live model two tensors of that dtype and shape, the second path is pointed at
the first tensor again, before anything is restored.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from operator import itemgetter

from .errors import InvalidArgumentError
from .format.objgraph import ObjectGraph
from .graph import LiveObjects, declares_slots, is_leaf, live_objects, named_children, walk
from .restorer import Match, ObjectGraphMatching, RestoreSession, match
from .trackable.base import Trackable

_SHOWN = 20
_second = itemgetter(1)


@dataclass(frozen=True)
class Difference:
    """One key on one side only: the checkpoint key and the object path (``state_dict`` name when known)."""

    key: str
    path: str


class UnmatchedStateError(InvalidArgumentError):
    """A strict restore found values on one side only; nothing was restored."""

    def __init__(self, message: str, *, path: str, missing: Sequence[Difference], unexpected: Sequence[Difference]):
        super().__init__(message, path=path, key=(missing or unexpected)[0].key)
        self.missing = tuple(missing)
        self.unexpected = tuple(unexpected)


def check(session: RestoreSession, root: Trackable, attached: Sequence[tuple[str, Trackable]] = ()) -> None:
    """Raise :class:`UnmatchedStateError` if the torch objects reached by this restore do not match exactly."""
    torch_adapter = sys.modules.get("gpuckpt.torch")
    saved = session.saved
    if saved is None:
        return  # a name-based (TF1) restore has no object graph to compare; its status reports what is missing
    if torch_adapter is None or not _has_torch(root, attached, torch_adapter):
        return
    listed: list[tuple[Trackable, list[tuple[str, Trackable]] | None]] = []
    try:
        found: Match | None = match(saved, [(0, root)], {}, attached=attached, skip_slots=session.skip_slots,
                                    listed=listed)
    except Exception:
        found = None  # the listing below raises it again, naming the object's path (or this match does)
    live: LiveObjects | None = None  # not listed where every live object is bound: nothing missing, no tie lost
    if found is None or not _every_live_object_bound(found, listed):
        live = live_objects(root, attached)  # which objects exist (errors name their path); keys only if missing
        if found is None:
            found = match(saved, [(0, root)], {}, attached=attached, skip_slots=session.skip_slots)
        if _retie(session, live, found, torch_adapter):
            found = match(saved, [(0, root)], {}, attached=attached, skip_slots=session.skip_slots)
            live = live_objects(root, attached)
    bound = dict(found.bindings)
    missing = _missing(session, live, bound, torch_adapter, root, attached) if live is not None else []
    unexpected = _unexpected(session, found, bound, torch_adapter)
    if missing or unexpected:
        unmatched_top = [c.local_name for c in saved.nodes[0].children
                         if c.node_id not in bound and saved.nodes[c.node_id].holds_values]
        message = _message(session.prefix, missing, unexpected)
        if unmatched_top:
            message += (f"\nThe checkpoint's top-level objects {unmatched_top} match no live object (saved under "
                        "another name?).")
        raise UnmatchedStateError(message, path=session.prefix, missing=missing, unexpected=unexpected)
    strategy = session.strategy
    if isinstance(strategy, ObjectGraphMatching):
        strategy.reuse_match(found, root, attached)  # the restore that follows binds what this matched


def _is_torch(obj: object, adapter) -> bool:
    return isinstance(obj, (adapter.TorchModule, adapter.TorchOptimizer, adapter.TorchTensor,
                            adapter._ParamGroups, adapter._ParamGroup))


def _has_torch(root: Trackable, attached: Sequence[tuple[str, Trackable]], adapter) -> bool:
    """Whether any torch object is reachable: a walk over dependencies that stops at the first one (no
    values are looked at); where there is none it is ``saveable.reachable``, with the same errors."""
    seen = {id(root)}
    objects: list[Trackable] = [root]
    paths: list[tuple[str, ...]] = [()]
    for index, obj in enumerate(objects):
        if _is_torch(obj, adapter):
            return True
        if index and is_leaf(obj):
            continue  # named_children would list nothing, and could raise nothing (every variable)
        for name, child in named_children(obj, attached if index == 0 else (), paths[index]):
            if id(child) not in seen:
                seen.add(id(child))
                objects.append(child)
                paths.append((*paths[index], name))
    return False


def _every_live_object_bound(found: Match, listed: Sequence[tuple[Trackable, list[tuple[str, Trackable]] | None]]
                             ) -> bool:
    """Whether ``graph.live_objects`` would list only objects ``found`` binds, and raise nothing: then no live
    value is missing and no tie was lost, and the listing is not needed (a restore that matches exactly).

    ``listed`` is what the match listed (``match(listed=...)``): the objects bound by dependency that may have
    children or slots, with their children. Every live object is bound if the children of each are: those
    ``match`` did not list (a saved leaf whose live object has dependencies) are asked for here, as the listing
    asks. Slot variables (``graph._number_slots``) must all be bound too, and be what the listing accepts:
    anything else (a slot that is also a dependency, or a slot of a slot, which the listing orders by number)
    gets False, and so does any error, so that the listing runs and raises it (naming the path) as before.
    """
    deps: set[int] | None = None  # the objects reachable (if this returns True), made when first needed
    optimizers: dict[int, Trackable] = {}
    try:
        for obj, children in listed:
            if declares_slots(obj):
                optimizers[id(obj)] = obj
            if children is None:
                if is_leaf(obj):
                    continue
                children = list(obj._trackable_children())  # named_children, whose untracked_edit match ran
            if children:
                deps = deps if deps is not None else _dependency_ids(found)
                if not deps.issuperset(map(id, map(_second, children))):
                    return False
        declared = [ref for obj in optimizers.values() for ref in obj._slot_variables()]
    except Exception:
        return False
    if not declared:
        return True
    deps = deps if deps is not None else _dependency_ids(found)
    slots = [ref.slot for ref in declared if id(ref.original) in deps]  # what the listing numbers
    slot_ids = {id(slot) for slot in slots}
    if len(slot_ids) < len(slots) or not deps.isdisjoint(slot_ids):
        return False  # a slot listed twice or also a dependency: the listing raises
    if any(id(ref.original) not in deps and id(ref.original) in slot_ids for ref in declared):
        return False  # a slot of a slot
    return slot_ids <= set(map(id, map(_second, found.bindings[found.by_dependency:])))  # bound as slots


def _dependency_ids(found: Match) -> set[int]:
    return set(map(id, map(_second, found.bindings[:found.by_dependency])))


def _missing(session: RestoreSession, live: LiveObjects, bound: dict, adapter, root: Trackable,
             attached: Sequence[tuple[str, Trackable]]) -> list[Difference]:
    """Live torch values that no saved value is bound to.

    The live listing has no keys; only when some value is missing is the graph walked (as a save
    walks it) for the keys that name them."""
    skipped = live.slots if session.skip_slots else frozenset()
    bound_ids = {id(obj) for obj in bound.values()}
    unbound = [i for i, obj in enumerate(live.objects) if _is_torch(obj, adapter) and id(obj) not in bound_ids
               and i not in skipped and obj._serialize_tensors()]
    if not unbound:
        return []
    walked = walk(root, attached)  # numbered as live_objects numbers: node i is live.objects[i]
    out = []
    for i in unbound:
        name = walked.objects[i]._checkpoint_full_name() or ".".join(walked.paths[i])
        for attribute in walked.graph.nodes[i].attributes:
            out.append(Difference(attribute.checkpoint_key, name))
    return out


def _unexpected(session: RestoreSession, found, bound: dict, adapter) -> list[Difference]:
    """Saved values below bound torch objects that nothing live takes."""
    saved = _saved_graph(session)
    out: list[Difference] = []
    seen: set[int] = set()
    nodes = saved.nodes  # a node without saved children adds nothing below: not asked for its type
    queue = [n for n, obj in bound.items() if nodes[n].children and isinstance(
        obj, (adapter.TorchModule, adapter.TorchOptimizer, adapter._ParamGroups))]
    for node_id in queue:
        for child in saved.nodes[node_id].children:
            if child.node_id in bound or child.node_id in seen:
                continue
            seen.add(child.node_id)
            queue.append(child.node_id)
            out += _node_keys(session, child.node_id)
    if session.skip_slots:
        return out
    optimizers = {n for n, obj in bound.items() if isinstance(obj, adapter.TorchOptimizer)}
    params: dict[int, set[int]] = {}  # optimizer adapter -> ids of the parameters it updates
    creatable = set()
    for d in found.slot_deferrals:
        if isinstance(d.optimizer, adapter.TorchOptimizer) and isinstance(d.original, adapter.TorchTensor):
            ids = params.get(id(d.optimizer))
            if ids is None:
                ids = params[id(d.optimizer)] = {id(p) for p in d.optimizer._params()}
            if id(d.original.tensor) in ids:
                creatable.add(d.node_id)
    for node_id in optimizers:
        for ref in saved.nodes[node_id].slot_variables:
            if ref.slot_variable_node_id not in bound and ref.slot_variable_node_id not in creatable:
                out += _node_keys(session, ref.slot_variable_node_id)
    return out


def _node_keys(session: RestoreSession, node_id: int) -> list[Difference]:
    return [Difference(a.checkpoint_key, a.full_name or session.names[node_id])
            for a in _saved_graph(session).nodes[node_id].attributes]


def _retie(session: RestoreSession, live: LiveObjects, found, adapter) -> bool:
    """Point live tensors back at the tensor they shared in the checkpoint; True if any was re-tied."""
    bound = dict(found.bindings)
    bound_ids = {id(obj) for obj in bound.values()}
    unbound = [(obj, path) for obj, path in zip(live.objects, live.paths)
               if isinstance(obj, adapter.TorchTensor) and id(obj) not in bound_ids and path]
    if not unbound:
        return False  # every live tensor is bound: no tie was lost
    by_path = {path: obj for obj, path in zip(live.objects, live.paths)}
    changed = False
    for obj, path in unbound:
        node_id = _saved_node(_saved_graph(session), path)
        other = bound.get(node_id) if node_id is not None else None
        parent = by_path.get(path[:-1])
        if not isinstance(other, adapter.TorchTensor) or not isinstance(parent, adapter.TorchModule):
            continue
        mine, theirs = obj.tensor, other.tensor
        if mine.shape != theirs.shape or mine.dtype != theirs.dtype:
            continue
        registry = parent.module._parameters if path[-1] in parent.module._parameters else parent.module._buffers
        if path[-1] in registry and isinstance(theirs, type(registry[path[-1]])):
            registry[path[-1]] = theirs
            changed = True
    return changed


def _saved_node(saved: ObjectGraph, path: tuple[str, ...]) -> int | None:
    node_id = 0
    for name in path:
        child = next((c.node_id for c in saved.nodes[node_id].children if c.local_name == name), None)
        if child is None:
            return None
        node_id = child
    return node_id


def _saved_graph(session: RestoreSession) -> ObjectGraph:
    """The checkpoint's object graph; :func:`check` compares only restores that have one."""
    saved = session.saved
    assert saved is not None, "check() returns early for restores without an object graph"
    return saved


def _message(prefix: str, missing: Sequence[Difference], unexpected: Sequence[Difference]) -> str:
    parts = [f"Error(s) in restoring PyTorch state from checkpoint {prefix} (strict):"]
    for title, items in (("Missing key(s)", missing), ("Unexpected key(s)", unexpected)):
        if items:
            shown = ", ".join(f"{d.key} ({d.path})" for d in items[:_SHOWN])
            more = f", ... ({len(items) - _SHOWN} more)" if len(items) > _SHOWN else ""
            where = "live objects with no value in the checkpoint" if items is missing else \
                "checkpointed values no live object takes"
            parts.append(f"{title} ({len(items)}, {where}): {shown}{more}.")
    parts.append("Nothing was restored. Pass strict=False to read()/restore() to restore only the values that "
                 "match (then status.expect_partial() silences the warning about the rest).")
    return "\n".join(parts)
