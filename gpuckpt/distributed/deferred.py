"""Values of objects created after a distributed restore: read and verified with it, assigned when they appear.

A single-process restore keeps the values of saved objects that have no live counterpart yet
and hands them over when the object is attached (deferred restoration,
``restorer.ObjectGraphMatching``): an optimizer created after ``restore`` and attached to the
checkpoint (``ckpt.optimizer = opt``) gets its slots, a sub-module its weights. A distributed
restore does the same, on every rank, reusing that matching; the values are read during the
collective restore (so a bad CRC fails every rank, and attaching an object later needs no
collective), each rank reading what it will need:

* an optimizer slot of a live parameter (the state of an optimizer created later): this rank's
  block of the parameter, the block the slot will hold, since the torch adapter creates such
  state sharded like its parameter (``TorchOptimizer._new_state``);
* anything else: the whole stored tensor, cut down to the rank's part of the object when it
  appears (its DTensor placement or declared layout). Those whole tensors stay in host memory
  on every rank until their objects appear (``RestoreResult.deferred_keys`` lists what is kept).

Objects that never announce new dependencies (torch modules, whose attributes gpuckpt cannot
watch) keep nothing, as in a single process; their values are dropped with the restore.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import DataLossError, InvalidArgumentError
from ..format import objgraph
from ..format.bundle import BundleEntry
from ..reader import CheckpointReader
from ..restore_plan import Request, check_requests
from ..restorer import Match, ObjectGraphMatching, match
from ..session import read_stored_string, slot_node_ids
from ..trackable import restore_order
from ..trackable.base import Trackable
from .layout import Box, Sharded, layout_of
from .torch_dtensor import local_shards


@dataclass(frozen=True)
class Held:
    """A stored value read for a saved object not created yet: ``box`` is the block read (None: whole)."""

    key: str
    request: Request
    box: Box | None


@dataclass(frozen=True)
class HeldPlan:
    """What a distributed restore reads for objects not created yet, and where they will attach."""

    saved: objgraph.ObjectGraph
    found: Match  # the saved graph matched against the live one at the restore
    held: tuple[Held, ...]


def plan_held(reader: CheckpointReader, checkpoint: Any, live_keys: set[str], skip_slots: bool) -> HeldPlan | None:
    """The values of saved objects with no live counterpart (None when every stored value has a live one)."""
    entries = reader.index.entries
    if objgraph.OBJECT_GRAPH_KEY not in entries or set(entries) - live_keys <= {objgraph.OBJECT_GRAPH_KEY}:
        return None  # the common case, decided without decoding the object graph
    saved = objgraph.decode(read_stored_string(reader.storage, objgraph.OBJECT_GRAPH_KEY), path=reader.prefix)
    found = match(saved, [(0, checkpoint._root())], {}, attached=checkpoint._attached(), skip_slots=skip_slots)
    bound = dict(found.bindings)
    originals = {ref.slot_variable_node_id: ref.original_variable_node_id
                 for node in saved.nodes for ref in node.slot_variables}
    ignored = slot_node_ids(saved) if skip_slots else set()
    held = []
    for node_id, node in enumerate(saved.nodes):
        if node_id in bound or node_id in ignored:
            continue
        original = bound.get(originals[node_id]) if node_id in originals else None
        for attr in node.attributes:
            entry = entries.get(attr.checkpoint_key)
            if entry is None or attr.checkpoint_key in live_keys:
                continue  # a missing value is reported when its object appears, as in a single process
            box = _slot_block(original, entry)
            block = None if box is None else (box.offsets, box.lengths)
            held.append(Held(attr.checkpoint_key, Request(attr.checkpoint_key, attr.checkpoint_key, entry.dtype,
                                                          tuple(entry.shape), block), box))
    return HeldPlan(saved, found, tuple(held)) if held else None


def _slot_block(original: Trackable | None, entry: BundleEntry) -> Box | None:
    """This rank's block of a slot of ``original`` shaped like it (the slot will be sharded alike), else None."""
    if original is None or entry.dtype.is_string:
        return None
    layout = layout_of(original)
    if isinstance(layout, Sharded) and tuple(entry.shape) == tuple(layout.global_shape):
        return layout.box
    return None


def keep(plan: HeldPlan, entries: Mapping[str, BundleEntry], prefix: str, values: dict[str, Any], *, uid: int,
         skip_slots: bool) -> None:
    """Register the deferred restorations of ``plan`` on the live objects, holding ``values`` (by key)."""
    held = {h.key: (h.box, values[h.key]) for h in plan.held}
    matching = DistributedDeferral(plan.saved, entries, prefix, held, uid=uid, skip_slots=skip_slots)
    with local_shards():
        matching._record_match(plan.found, {})


class DistributedDeferral(ObjectGraphMatching):
    """The deferred part of one distributed restore on this rank: values of saved objects created later.

    Matching, bookkeeping and the registration on live parents are the single-process ones; only
    the values differ: each was read as this rank's block or whole, and is cut to the part the new
    object holds (its layout) when it appears.
    """

    def __init__(self, saved: objgraph.ObjectGraph, entries: Mapping[str, BundleEntry], prefix: str,
                 held: dict[str, tuple[Box | None, Any]], *, uid: int, skip_slots: bool):
        super().__init__(saved, entries, prefix, skip_slots=skip_slots)
        self.held = held
        self.uid = uid

    def resume(self, node_id: int, obj: Trackable) -> None:
        """Restore a deferred node into ``obj``, just attached, from the values this rank read."""
        with local_shards():
            found = match(self.saved, [(node_id, obj)], self.bound, slot_waits=self.state.slot_waits,
                          skip_slots=self.skip_slots)
            targets, unused = self._targets(found.bindings)
            grouped: dict[int, tuple[Trackable, dict[str, Any]]] = {}
            for t in targets:
                key = t.request.key
                if key not in self.entries:
                    raise DataLossError(f"checkpoint {self.prefix} lists key {key!r} for {t.request.label} but has "
                                        "no such tensor", path=self.prefix, key=key)
                if key not in self.held:
                    continue  # restored with the live objects already (an alias of one)
                value = self._part(t.obj, t.request, *self.held[key])
                if restore_order.claim(t.obj, self.uid):  # else a newer restore set it (the newest wins)
                    grouped.setdefault(id(t.obj), (t.obj, {}))[1][t.name] = value
            for owner, named in grouped.values():
                owner._restore_tensors(named)
            for t in targets:
                self.held.pop(t.request.key, None)
            self._record_match(found, unused)

    def _part(self, obj: Trackable, live: Request, box: Box | None, value: Any) -> Any:
        """The part of a held value that ``obj`` holds on this rank, checked against the checkpoint's entry."""
        key = live.key
        layout = layout_of(obj)
        if isinstance(layout, Sharded):
            want, shape = layout.box, tuple(layout.global_shape)
        else:
            want, shape = Box((0,) * len(live.shape), tuple(live.shape)), tuple(live.shape)
        whole = want.lengths == shape
        check_requests(self.entries, [Request(key, live.label, live.dtype, shape,
                                              None if whole else (want.offsets, want.lengths))], prefix=self.prefix)
        if tuple(live.shape) != want.lengths:
            raise InvalidArgumentError(f"{live.label} ({key!r}) holds {list(live.shape)} on this rank, but its layout "
                                       f"says {want}", key=key)
        if box is None:
            return value if whole or live.dtype.is_string else np.ascontiguousarray(value[want.region()])
        if box != want:
            raise InvalidArgumentError(
                f"{live.label} ({key!r}) holds block {want} of {list(shape)} on this rank, but the restore read block "
                f"{box} for it (the block of its parameter); restore again now that it exists", key=key)
        return value
