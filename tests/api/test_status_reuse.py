"""Status assertions reuse what the restore computed: bound objects are not asked for their values again,
yet objects created after the restore, and objects that have gone, count as they are now (TF's semantics)."""

from __future__ import annotations

import gc
from pathlib import Path

import numpy as np
import pytest

import gpuckpt
from gpuckpt.graph import live_objects, walk

from .models import Adam, Model


class CountingVariable(gpuckpt.Variable):
    """A variable that counts how often its values are asked for."""

    calls = 0

    def _serialize_tensors(self):
        CountingVariable.calls += 1
        return super()._serialize_tensors()


@pytest.fixture
def path(tmp_path: Path) -> str:
    model = gpuckpt.Module()
    model.a, model.b = gpuckpt.Variable([1.0, 2.0]), gpuckpt.Variable(3.0)
    return gpuckpt.Checkpoint(model=model).write(tmp_path / "ck")


def test_assertions_ask_no_bound_object_for_its_values(path: str) -> None:
    model = gpuckpt.Module()
    model.a, model.b = CountingVariable([0.0, 0.0]), CountingVariable(0.0)
    status = gpuckpt.Checkpoint(model=model).read(path)
    CountingVariable.calls = 0
    status.assert_consumed().assert_existing_objects_matched().assert_nontrivial_match()
    assert CountingVariable.calls == 0
    model.c = CountingVariable(5.0)  # created after the restore: unmatched, and asked once per assertion
    with pytest.raises(AssertionError, match=r"Found 1 Python objects.*\(root\).model.c"):
        status.assert_existing_objects_matched()
    assert CountingVariable.calls == 1


def test_objects_created_after_the_restore_count_when_they_take_a_deferred_value(path: str) -> None:
    ckpt = gpuckpt.Checkpoint(model=gpuckpt.Module())
    status = ckpt.read(path)
    with pytest.raises(AssertionError, match=r"Unresolved object in checkpoint \(root\).model.a"):
        status.assert_consumed()
    ckpt.model.a = gpuckpt.Variable([0.0, 0.0])
    ckpt.model.b = gpuckpt.Variable(0.0)
    np.testing.assert_array_equal(ckpt.model.a.numpy(), [1.0, 2.0])
    status.assert_consumed()
    ckpt.model.extra = gpuckpt.Variable(0.0)
    with pytest.raises(AssertionError, match=r"\(root\).model.extra"):
        status.assert_consumed()


def test_a_bound_object_that_has_gone_is_no_longer_counted_as_live(path: str) -> None:
    model = gpuckpt.Module()
    model.a, model.b = gpuckpt.Variable([0.0, 0.0]), gpuckpt.Variable(0.0)
    status = gpuckpt.Checkpoint(model=model).read(path)
    session = status._session
    before = session.bound.live_ids()
    assert id(model.b) in before and len(before) == len(session.bound.values()) == 4  # root, model, a, b
    del model.b
    gc.collect()
    after = session.bound.live_ids()
    assert len(after) == 3 and after < before
    model.b = gpuckpt.Variable(7.0)  # a new object in the same place, not bound by that restore
    with pytest.raises(AssertionError, match=r"Found 1 Python objects.*\(root\).model.b"):
        status.assert_existing_objects_matched()


def test_live_objects_lists_what_walk_numbers_with_optimizer_slots() -> None:
    model, optimizer = Model(), Adam()
    model.train_step(optimizer)
    ckpt = gpuckpt.Checkpoint(model=model, optimizer=optimizer)
    listed, walked = live_objects(ckpt), walk(ckpt)
    assert listed.objects == walked.objects and listed.paths == walked.paths
    slot_nodes = {ref.slot_variable_node_id for node in walked.graph.nodes for ref in node.slot_variables}
    assert listed.slots == slot_nodes and slot_nodes
