"""The object graph gpuckpt builds: TF's numbering, names, keys, slots and exact bytes."""

from __future__ import annotations

import numpy as np
import pytest

import gpuckpt
from gpuckpt.format import objgraph
from gpuckpt.graph import escape_local_name, live_objects, pretty_names, walk
from gpuckpt.session import slot_node_ids
from gpuckpt.trackable import AutoTrackable

from .models import Adam, Dense


@pytest.mark.parametrize(("name", "escaped"), [
    ("plain", "plain"), ("a/b.c", "a.Sb..c"), ("./", "...S"), (".S", "..S"), ("é x", "é x")])
def test_escape_local_name(name: str, escaped: str) -> None:
    assert escape_local_name(name) == escaped


def test_escaped_names_in_keys_but_not_in_local_names() -> None:
    root = AutoTrackable()
    setattr(root, "a/b.c", gpuckpt.Variable(1.0))
    live = walk(root)
    assert live.graph.nodes[0].children[0].local_name == "a/b.c"
    assert list(live.tensors_by_key()) == ["a.Sb..c/.ATTRIBUTES/VARIABLE_VALUE"]


def test_breadth_first_numbering_with_aliases_and_cycles() -> None:
    root = AutoTrackable()
    root.deep = AutoTrackable()
    root.deep.v = gpuckpt.Variable(1.0)
    root.shallow = root.deep.v  # reached at depth 1 after depth-1 'deep': node 2, keyed by BFS path
    root.deep.back = root  # a cycle
    live = walk(root)
    assert [(c.local_name, c.node_id) for c in live.graph.nodes[0].children] == [("deep", 1), ("shallow", 2)]
    assert [(c.local_name, c.node_id) for c in live.graph.nodes[1].children] == [("v", 2), ("back", 0)]
    assert live.graph.nodes[2].attributes[0].checkpoint_key == "shallow/.ATTRIBUTES/VARIABLE_VALUE"


def test_root_attributes_are_keyed_from_an_empty_path() -> None:
    live = walk(gpuckpt.Variable(1.0, name="w"))
    assert live.graph.nodes[0].attributes == (objgraph.AttributeRef(
        "VARIABLE_VALUE", "w", "/.ATTRIBUTES/VARIABLE_VALUE"),)


def test_has_checkpoint_values_marks_empty_subtrees_false() -> None:
    root = AutoTrackable()
    root.empty = []
    root.nested_empty = {"a": {}}
    root.holder = [{"v": gpuckpt.Variable(1.0)}]
    flags = [n.has_checkpoint_values for n in walk(root).graph.nodes]
    assert flags == [True, False, False, True, False, True, True]


def test_slot_nodes_follow_bfs_nodes_in_tf_order() -> None:
    """Spec 9.3; the same layout TF 2.21 wrote for a TF1 Adam over model.w and model.b."""
    model = gpuckpt.Module()
    model.w = gpuckpt.Variable([1.0, 2.0])
    model.b = gpuckpt.Variable(3.0)
    opt = Adam()
    opt.apply_gradients([(np.float32(1.0), model.b), (np.array([0.5, 0.5], np.float32), model.w)])
    root = AutoTrackable()
    root.model, root.optimizer = model, opt
    graph = walk(root).graph
    assert len(graph.nodes) == 11
    assert graph.nodes[2].slot_variables == (
        objgraph.SlotRef(3, "m", 7), objgraph.SlotRef(4, "m", 8),
        objgraph.SlotRef(3, "v", 9), objgraph.SlotRef(4, "v", 10))
    assert graph.nodes[7].attributes[0].checkpoint_key == \
        "model/w/.OPTIMIZER_SLOT/optimizer/m/.ATTRIBUTES/VARIABLE_VALUE"
    assert graph.nodes[10].attributes[0].full_name == "Variable/Adam_1"
    assert pretty_names(graph)[8] == "(root).optimizer's state 'm' for (root).model.b"


def test_live_objects_lists_what_walk_numbers_without_building_nodes() -> None:
    model = gpuckpt.Module()
    model.w = gpuckpt.Variable([1.0, 2.0])
    model.alias = model.w
    model.b = gpuckpt.Variable(3.0)
    opt = Adam()
    opt.apply_gradients([(np.float32(1.0), model.b), (np.array([0.5, 0.5], np.float32), model.w)])
    root = AutoTrackable()
    root.model, root.optimizer = model, opt
    walked, listed = walk(root), live_objects(root)
    assert [id(o) for o in listed.objects] == [id(o) for o in walked.objects]
    assert listed.paths == walked.paths and listed.slots == frozenset(slot_node_ids(walked.graph)) != frozenset()


def test_slots_of_variables_outside_the_graph_are_left_out() -> None:
    outside = gpuckpt.Variable(1.0)
    opt = Adam()
    opt.apply_gradients([(np.float32(1.0), outside)])
    root = AutoTrackable()
    root.optimizer = opt
    assert all(not n.slot_variables for n in walk(root).graph.nodes)


def test_slot_that_is_also_a_dependency_is_refused() -> None:
    root = AutoTrackable()
    root.w = gpuckpt.Variable(1.0)
    root.opt = Adam()
    root.opt.apply_gradients([(np.float32(1.0), root.w)])
    root.leak = root.opt.get_slot(root.w, "m")
    with pytest.raises(gpuckpt.InvalidArgumentError, match="slot variable 'm' of \\(root\\).w"):
        walk(root)


def test_graph_round_trips_through_bytes() -> None:
    root = AutoTrackable()
    root.layers = [Dense(2, 3), Dense(3, 1)]
    graph = walk(root).graph
    assert objgraph.decode(objgraph.encode(graph)) == graph


def test_decode_rejects_corrupt_graphs() -> None:
    with pytest.raises(gpuckpt.DataLossError, match="corrupt object graph"):
        objgraph.decode(b"\x0a\xff")
    dangling = objgraph.ObjectGraph((objgraph.GraphNode(children=(objgraph.ChildRef(5, "x"),)),))
    with pytest.raises(gpuckpt.DataLossError, match="refers to node 5"):
        objgraph.decode(objgraph.encode(dangling))


def test_missing_has_checkpoint_values_falls_back_to_content() -> None:
    assert objgraph.GraphNode(children=(objgraph.ChildRef(1, "x"),)).holds_values
    assert not objgraph.GraphNode().holds_values
    assert not objgraph.GraphNode(children=(objgraph.ChildRef(1, "x"),), has_checkpoint_values=False).holds_values
