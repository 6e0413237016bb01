"""The live listing asks only what can answer: no children of a class that keeps Trackable's
``_trackable_children`` (graph.is_leaf), no slots of one that keeps ``_slot_variables``
(graph.declares_slots), decided per object when it is listed. It numbers, names and refuses exactly
as asking every object did (the reference below)."""

from __future__ import annotations

import numpy as np
import pytest

import gpuckpt
from gpuckpt import graph
from gpuckpt.trackable import AutoTrackable
from gpuckpt.trackable.base import SlotVariable, Trackable

from .models import Adam


def reference(root: Trackable, attached=()) -> tuple[list[int], list[tuple[str, ...]], set[int]]:
    """Breadth-first from ``root`` asking every object for its children and its slots."""
    ids = {id(root): 0}
    objects, paths = [root], [()]
    for node_id, obj in enumerate(objects):
        for name, child in graph.named_children(obj, attached if node_id == 0 else (), paths[node_id]):
            if id(child) not in ids:
                ids[id(child)] = len(objects)
                objects.append(child)
                paths.append((*paths[node_id], name))
    slots = set()
    for opt_id in range(len(objects)):
        declared = list(objects[opt_id]._slot_variables())
        for slot_name in dict.fromkeys(ref.slot_name for ref in declared):
            found = sorted(((ids[id(ref.original)], ref.slot) for ref in declared
                            if ref.slot_name == slot_name and id(ref.original) in ids), key=lambda t: t[0])
            for var_id, slot in found:
                assert id(slot) not in ids
                ids[id(slot)] = len(objects)
                slots.add(len(objects))
                objects.append(slot)
                paths.append((*paths[var_id], slot_name))
    return [id(o) for o in objects], paths, slots


class LeafWithSlots(Trackable):
    """Declares slots without having children (no optimizer in this library looks like it)."""

    def __init__(self, of: gpuckpt.Variable) -> None:
        self.of, self.state = of, gpuckpt.Variable(0.5)

    def _slot_variables(self) -> list[SlotVariable]:
        return [SlotVariable("state", self.of, self.state)]


def mixed() -> AutoTrackable:
    root = AutoTrackable()
    root.model = gpuckpt.Module()
    root.model.w = gpuckpt.Variable([1.0, 2.0])
    root.model.layers = [gpuckpt.Variable(3.0), {"b": gpuckpt.Variable(4.0)}, (gpuckpt.Variable(5.0),)]
    root.model.alias = root.model.w
    root.model.back = root  # a cycle
    opt = Adam()
    opt.apply_gradients([(np.array([0.5, 0.5], np.float32), root.model.w)])
    root.optimizer = opt
    root.leafy = LeafWithSlots(root.model.layers[0])
    return root


def test_the_listing_and_the_walk_list_what_asking_every_object_lists() -> None:
    root = mixed()
    extra = gpuckpt.Variable(6.0)
    ids, paths, slots = reference(root, [("extra", extra)])
    listed, walked = graph.live_objects(root, [("extra", extra)]), graph.walk(root, [("extra", extra)])
    assert [id(o) for o in listed.objects] == [id(o) for o in walked.objects] == ids
    assert list(listed.paths) == list(walked.paths) == paths
    assert listed.slots == slots and len(slots) == 3  # Adam's m and v of w, and the leaf's own slot
    assert [len(n.children) for n in walked.graph.nodes[len(ids) - 3:]] == [0, 0, 0]


def test_a_class_given_children_later_is_asked_for_them() -> None:
    class Late(Trackable):
        pass

    root = AutoTrackable()
    root.late = Late()
    assert graph.is_leaf(root.late) and not graph.declares_slots(root.late)
    assert len(graph.live_objects(root).objects) == 2
    child = gpuckpt.Variable(1.0)
    Late._trackable_children = lambda self: [("child", child)]  # decided when listed, not once per class
    Late._slot_variables = lambda self: [SlotVariable("s", child, gpuckpt.Variable(2.0))]
    assert not graph.is_leaf(root.late) and graph.declares_slots(root.late)
    listed = graph.live_objects(root)
    assert list(listed.paths) == [(), ("late",), ("late", "child"), ("late", "child", "s")]
    assert listed.slots == {3}


def test_an_edit_behind_a_wrapper_is_still_refused_with_its_path() -> None:
    root = mixed()
    root.model.layers._self_storage.append(gpuckpt.Variable(7.0))
    with pytest.raises(gpuckpt.InvalidArgumentError, match=r"cannot checkpoint \(root\).model.layers: the wrapped "
                                                           r"list was modified outside the wrapper"):
        graph.live_objects(root)
