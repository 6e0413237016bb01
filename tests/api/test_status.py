"""Restore statuses fail exactly where TF 2.21's do (spec 11.2), and deferred restores count once done."""

from __future__ import annotations

import gc
from pathlib import Path

import numpy as np
import pytest

import gpuckpt
from gpuckpt.restorer import UnrestoredValuesWarning

from .models import Adam, Dense, Model


@pytest.fixture
def saved(tmp_path: Path) -> str:
    """``Checkpoint(v=[1, 2]).save()``: holds v and save_counter."""
    return gpuckpt.Checkpoint(v=gpuckpt.Variable([1.0, 2.0])).save(tmp_path / "ckpt")


@pytest.fixture
def written(tmp_path: Path) -> str:
    """``Checkpoint(v=[1, 2]).write()``: holds v only."""
    return gpuckpt.Checkpoint(v=gpuckpt.Variable([1.0, 2.0])).write(tmp_path / "w")


@pytest.mark.filterwarnings("ignore::gpuckpt.restorer.UnrestoredValuesWarning")  # values left unused on purpose
def test_read_of_a_save_leaves_save_counter_unresolved(saved: str) -> None:
    status = gpuckpt.Checkpoint(v=gpuckpt.Variable([0.0, 0.0])).read(saved)
    status.assert_existing_objects_matched().assert_nontrivial_match()
    with pytest.raises(AssertionError, match=r"^Unresolved object in checkpoint \(root\).save_counter: .*"
                                             r"'save_counter/.ATTRIBUTES/VARIABLE_VALUE'"):
        status.assert_consumed()


def test_restore_of_a_write_leaves_save_counter_unmatched(written: str) -> None:
    status = gpuckpt.Checkpoint(v=gpuckpt.Variable([0.0, 0.0])).restore(written)
    with pytest.raises(AssertionError, match=r"^Found 1 Python objects that were not bound to checkpointed "
                                             r"values.*Showing 1 of 1 unmatched objects: \[\(root\).save_counter"):
        status.assert_consumed()


def test_extra_live_variable_fails_existing_objects_matched(written: str) -> None:
    status = gpuckpt.Checkpoint(v=gpuckpt.Variable([0.0, 0.0]), w=gpuckpt.Variable(3.0)).read(written)
    with pytest.raises(AssertionError, match=r"Found 1 Python objects.*\(root\).w \(<gpuckpt.Variable"):
        status.assert_existing_objects_matched()
    status.assert_nontrivial_match()


@pytest.mark.filterwarnings("ignore::gpuckpt.restorer.UnrestoredValuesWarning")  # values left unused on purpose
def test_empty_checkpoint_object_has_nothing_to_load(written: str) -> None:
    status = gpuckpt.Checkpoint().read(written)
    with pytest.raises(AssertionError, match=r"^Unresolved object in checkpoint \(root\).v"):
        status.assert_consumed()
    with pytest.raises(AssertionError, match="^Nothing to load. No dependencies have been added to"):
        status.assert_nontrivial_match()
    status.assert_existing_objects_matched()


@pytest.mark.filterwarnings("ignore::gpuckpt.restorer.UnrestoredValuesWarning")  # values left unused on purpose
def test_nothing_but_the_root_matched(written: str) -> None:
    status = gpuckpt.Checkpoint(other=gpuckpt.Variable(1.0)).read(written)
    with pytest.raises(AssertionError, match=r"^Nothing except the root object matched.*\(root\).other"):
        status.assert_nontrivial_match()


def test_module_bound_to_a_variable_node_reports_unused_attributes(written: str) -> None:
    module = gpuckpt.Module()
    status = gpuckpt.Checkpoint(v=module).read(written)
    status.assert_existing_objects_matched()
    with pytest.raises(AssertionError, match=r"^Unused attributes in these objects \(the attributes exist in the "
                                             r"checkpoint but were not restored\):\n\(root\).v .*\['VARIABLE_VALUE'\]"):
        status.assert_consumed()
    status.expect_partial()


def test_slots_without_their_variables_are_unresolved_objects(tmp_path: Path) -> None:
    model, opt = Model(), Adam()
    model.train_step(opt)
    path = gpuckpt.Checkpoint(model=model, optimizer=opt).write(tmp_path / "c")
    status = gpuckpt.Checkpoint(optimizer=Adam()).read(path)  # the variables the slots belong to are missing
    with pytest.raises(AssertionError, match=r"^Unresolved object in checkpoint \(root\).model.step(.|\n)*"
                                             r"\(root\).optimizer's state 'm' for \(root\).model.layers.0.kernel"):
        status.assert_consumed()
    status.expect_partial()


def test_pending_slot_restoration_is_named(tmp_path: Path) -> None:
    model, opt = Model(), Adam()
    model.train_step(opt)
    path = gpuckpt.Checkpoint(model=model, optimizer=opt).write(tmp_path / "c")
    fresh = gpuckpt.Checkpoint(model=Model(), optimizer=Adam())
    fresh.model.layers = []  # the variables exist later than the optimizer
    status = fresh.read(path)
    with pytest.raises(AssertionError, match=r"Unresolved object in checkpoint \(root\).model.layers.0"):
        status.assert_consumed()
    assert status._session.state.slot_waits  # slots wait for their variables
    fresh.model.layers.extend([Dense(3, 4), Dense(4, 2)])
    fresh.model.train_step(fresh.optimizer)
    status.assert_consumed()


def test_deferred_restore_three_levels_deep(tmp_path: Path) -> None:
    root = gpuckpt.Module()
    root.a = gpuckpt.Module()
    root.a.b = [gpuckpt.Module()]
    root.a.b[0].c = {"leaf": gpuckpt.Variable(np.arange(4, dtype=np.int64))}
    path = gpuckpt.Checkpoint(root=root).write(tmp_path / "deep")

    fresh = gpuckpt.Module()
    status = gpuckpt.Checkpoint(root=fresh).read(path)
    fresh.a = gpuckpt.Module()
    fresh.a.b = []
    level3 = gpuckpt.Module()
    fresh.a.b.append(level3)
    with pytest.raises(AssertionError, match=r"\(root\).root.a.b.0.c.leaf|\(root\).a.b.0.c.leaf"):
        status.assert_consumed()
    leaf = gpuckpt.Variable(np.zeros(4, np.int64))
    level3.c = {"leaf": leaf}
    np.testing.assert_array_equal(leaf.numpy(), [0, 1, 2, 3])
    status.assert_consumed()


def test_deferred_values_wait_for_the_matching_name_only(tmp_path: Path) -> None:
    path = gpuckpt.Checkpoint(v=gpuckpt.Variable(5.0)).write(tmp_path / "c")
    ckpt = gpuckpt.Checkpoint()
    ckpt.read(path)
    ckpt.other = gpuckpt.Variable(0.0)
    ckpt.v = gpuckpt.Variable(0.0)
    assert float(ckpt.other.numpy()) == 0.0 and float(ckpt.v.numpy()) == 5.0


def test_the_newest_restore_wins_for_a_deferred_object(tmp_path: Path) -> None:
    first = gpuckpt.Checkpoint(v=gpuckpt.Variable(1.0)).write(tmp_path / "a")
    second = gpuckpt.Checkpoint(v=gpuckpt.Variable(2.0)).write(tmp_path / "b")
    ckpt = gpuckpt.Checkpoint()
    ckpt.read(first)
    ckpt.read(second)
    ckpt.v = gpuckpt.Variable(0.0)
    assert float(ckpt.v.numpy()) == 2.0


def test_warning_names_unused_values_when_the_session_ends(saved: str) -> None:
    with pytest.warns(UnrestoredValuesWarning, match=r"could not be found in the restored object: "
                                                     r"\(root\).save_counter"):
        gpuckpt.Checkpoint(v=gpuckpt.Variable([0.0, 0.0])).read(saved)
        gc.collect()


def test_no_warning_after_expect_partial_or_full_match(saved: str, recwarn) -> None:
    gpuckpt.Checkpoint(v=gpuckpt.Variable([0.0, 0.0])).read(saved).expect_partial()
    gpuckpt.Checkpoint(v=gpuckpt.Variable([0.0, 0.0])).restore(saved)
    gc.collect()
    assert not [w for w in recwarn if w.category is UnrestoredValuesWarning]


def test_no_warning_while_deferred_values_may_still_be_used(saved: str, recwarn) -> None:
    ckpt = gpuckpt.Checkpoint()
    ckpt.read(saved)  # the status is dropped at once; the deferred values keep the session alive
    gc.collect()
    assert not [w for w in recwarn if w.category is UnrestoredValuesWarning]
    ckpt.v = gpuckpt.Variable([0.0, 0.0])
    np.testing.assert_array_equal(ckpt.v.numpy(), [1.0, 2.0])
