"""Fuzzing the restore path: a checkpoint whose object graph is mutated gives only gpuckpt's errors.

The ``_CHECKPOINTABLE_OBJECT_GRAPH`` value of a real checkpoint (a model with layers in a
list, an optimizer with slots, a dict and a string) is mutated, as raw bytes and as a decoded
graph (edges pointing anywhere, cycles, renamed children, swapped keys, slot references to
any node, nodes added or dropped), and restored into fresh objects, deferred slots included.
Anything but a ``CheckpointError`` (or a status's ``AssertionError``) is a bug: IndexError,
KeyError, RecursionError, a hang (hypothesis deadline) or a value of the wrong shape.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gpuckpt
from gpuckpt.format import objgraph, proto
from gpuckpt.restorer import UnrestoredValuesWarning
from gpuckpt.saver import write_tensors
from tests.api.models import Adam, Model


def fresh() -> tuple[gpuckpt.Checkpoint, Model, Adam]:
    model, optimizer = Model(), Adam()
    extra = {"names": [gpuckpt.Variable(b"alpha"), gpuckpt.Variable(np.arange(4, dtype=np.int64))]}
    return gpuckpt.Checkpoint(model=model, optimizer=optimizer, extra=extra), model, optimizer


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict:
    checkpoint, model, optimizer = fresh()
    model.train_step(optimizer)
    prefix = checkpoint.write(tmp_path_factory.mktemp("graph") / "ck")
    with gpuckpt.load_checkpoint(prefix) as reader:
        return {key: reader.get_tensor(key) for key in reader.keys()}


def restore_with_graph(directory, tensors: dict, graph: bytes) -> None:
    """Write the tensors with ``graph`` as the object graph, restore into fresh objects, use them."""
    prefix = write_tensors(directory / "ck", {**tensors, objgraph.OBJECT_GRAPH_KEY: graph})
    checkpoint, model, optimizer = fresh()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnrestoredValuesWarning)
        try:
            status = checkpoint.read(prefix).expect_partial()
            model.train_step(optimizer)  # creates the slots: deferred slot values are applied now
            model.late = gpuckpt.Variable(np.zeros(3, np.float32))
            status.assert_existing_objects_matched()
        except (gpuckpt.CheckpointError, AssertionError):
            pass
    for variable in [*model.trainable_variables, optimizer.beta1_power]:
        assert variable.numpy().shape == tuple(variable.shape)


edits = st.lists(st.tuples(st.sampled_from(["set", "insert", "delete"]), st.integers(0, 4096), st.integers(0, 255)),
                 min_size=1, max_size=8)


@settings(max_examples=150, deadline=10_000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=edits, cut=st.none() | st.integers(0, 4096))
def test_mutated_graph_bytes(tmp_path_factory, saved, edits, cut) -> None:
    raw = bytearray(saved[objgraph.OBJECT_GRAPH_KEY])
    for kind, pos, value in edits:
        pos %= len(raw) + 1
        if kind == "set" and pos < len(raw):
            raw[pos] = value
        elif kind == "insert":
            raw.insert(pos, value)
        elif kind == "delete" and pos < len(raw):
            del raw[pos]
    if cut is not None:
        raw = raw[:cut]
    restore_with_graph(tmp_path_factory.mktemp("bytes"), saved, bytes(raw))


node_ids = st.integers(-3, 40)
names = st.sampled_from(["model", "optimizer", "extra", "layers", "0", "1", "kernel", "bias", "step", "names",
                         "beta1_power", "save_counter", "m", "v", "root", "", "late"])
mutations = st.one_of(
    st.tuples(st.just("child_id"), st.integers(0, 60), node_ids),
    st.tuples(st.just("child_name"), st.integers(0, 60), names),
    st.tuples(st.just("add_child"), st.integers(0, 60), st.tuples(node_ids, names)),
    st.tuples(st.just("attribute_key"), st.integers(0, 60), st.integers(0, 60)),
    st.tuples(st.just("attribute_name"), st.integers(0, 60), names),
    st.tuples(st.just("slot"), st.integers(0, 60), st.tuples(node_ids, names, node_ids)),
    st.tuples(st.just("flag"), st.integers(0, 60), st.booleans()),
    st.tuples(st.just("add_node"), st.integers(0, 60), st.none()),
    st.tuples(st.just("drop_node"), st.integers(0, 60), st.none()),
)


def mutate(message, kind: str, where: int, arg) -> None:
    """Apply one structural mutation to a decoded TrackableObjectGraph."""
    nodes = message.nodes
    if kind == "add_node":
        nodes.add().children.add(node_id=where % (len(nodes) + 1), local_name="loop")
        return
    if not len(nodes):
        return
    node = nodes[where % len(nodes)]
    attributes = [a for n in nodes for a in n.attributes]
    if kind == "drop_node":
        del nodes[where % len(nodes)]
    elif kind in ("child_id", "child_name") and node.children:
        child = node.children[where % len(node.children)]
        if kind == "child_id":
            child.node_id = arg
        else:
            child.local_name = arg
    elif kind == "add_child":
        node.children.add(node_id=arg[0], local_name=arg[1])
    elif kind == "attribute_key" and node.attributes and attributes:
        node.attributes[where % len(node.attributes)].checkpoint_key = attributes[arg % len(attributes)].checkpoint_key
    elif kind == "attribute_name" and node.attributes:
        node.attributes[where % len(node.attributes)].name = arg
    elif kind == "slot":
        node.slot_variables.add(original_variable_node_id=arg[0], slot_name=arg[1], slot_variable_node_id=arg[2])
    elif kind == "flag":
        node.has_checkpoint_values.value = arg


@settings(max_examples=200, deadline=10_000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(mutations, min_size=1, max_size=6))
def test_mutated_graph_structure(tmp_path_factory, saved, steps) -> None:
    message = proto.TrackableObjectGraph()
    message.ParseFromString(saved[objgraph.OBJECT_GRAPH_KEY])
    for kind, where, arg in steps:
        mutate(message, kind, where, arg)
    restore_with_graph(tmp_path_factory.mktemp("graph"), saved, message.SerializeToString())


def test_unmutated_graph_restores_everything(tmp_path, saved) -> None:
    """The harness itself: with the graph as saved, everything is restored and consumed."""
    prefix = write_tensors(tmp_path / "ck", saved)
    checkpoint, model, optimizer = fresh()
    status = checkpoint.read(prefix)
    model.train_step(optimizer)
    status.assert_consumed()
    assert int(model.step.numpy()) == 2


def test_two_attributes_naming_one_key_are_refused_before_any_read(tmp_path, saved) -> None:
    """Found by the fuzzer under load: an attribute given another's checkpoint key made a deferred
    restore look the value up twice (a KeyError escaped). The graph is refused at open instead."""
    message = proto.TrackableObjectGraph()
    message.ParseFromString(saved[objgraph.OBJECT_GRAPH_KEY])
    mutate(message, "attribute_key", 17, 13)
    raw = message.SerializeToString()
    with pytest.raises(gpuckpt.DataLossError, match="for two attributes") as caught:
        objgraph.decode(raw, path="ck")
    assert caught.value.key is not None and caught.value.key in saved
    restore_with_graph(tmp_path, saved, raw)
