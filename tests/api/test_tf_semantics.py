"""Smaller points where gpuckpt behaves as tf.train.Checkpoint (checkpoint_test.py's cases).

Deep copies of a Checkpoint, a root held by weak reference, the newest of overlapping
restores winning, the eager no-op status methods, CheckpointManager's last_checkpoint_step
and TF's wording for slot variables in messages.
"""

from __future__ import annotations

import copy
import gc
import weakref
from pathlib import Path

import numpy as np
import pytest

import gpuckpt
from gpuckpt.saver import write_tensors

from .models import Adam, Dense


def values(path: str) -> dict[str, float]:
    """The checkpoint's scalar values, by key."""
    reader = gpuckpt.load_checkpoint(path)
    return {name: float(reader.get_tensor(name)) for name, shape in gpuckpt.list_variables(path)
            if tuple(shape) == () and name != "_CHECKPOINTABLE_OBJECT_GRAPH"}


class TestDeepCopy:
    def test_deepcopy_copies_the_variables_and_saves_on_its_own(self, tmp_path: Path) -> None:
        original = gpuckpt.Checkpoint(v=gpuckpt.Variable(1.0))
        copied = copy.deepcopy(original)
        assert isinstance(copied, gpuckpt.Checkpoint) and copied.v is not original.v
        copied.v.assign(3.0)
        assert float(original.v.numpy()) == 1.0
        assert copied.save(tmp_path / "copy") == str(tmp_path / "copy-1")
        assert int(original.save_counter.numpy()) == 0
        assert values(str(tmp_path / "copy-1"))["v/.ATTRIBUTES/VARIABLE_VALUE"] == 3.0
        original.save(tmp_path / "original")
        again = copy.deepcopy(original)
        assert int(again.save_counter.numpy()) == 1 and again.save_counter is not original.save_counter

    def test_copy_with_a_root_keeps_the_graph_layout(self, tmp_path: Path) -> None:
        dense = Dense(2, 2)
        copied = copy.deepcopy(gpuckpt.Checkpoint(dense, extra=gpuckpt.Variable(2.0)))
        path = copied.write(tmp_path / "c")
        assert sorted(values(path)) == ["extra/.ATTRIBUTES/VARIABLE_VALUE"]
        assert copied.root is not dense and copied.root.kernel is not dense.kernel

    def test_pending_restorations_stay_with_the_original(self, tmp_path: Path) -> None:
        path = gpuckpt.Checkpoint(a=gpuckpt.Variable(1.0), b=gpuckpt.Variable(2.0)).write(tmp_path / "src")
        original = gpuckpt.Checkpoint(a=gpuckpt.Variable(0.0))
        status = original.read(path)
        copied = copy.deepcopy(original)
        assert float(copied.a.numpy()) == 1.0
        copied.b = gpuckpt.Variable(0.0)
        original.b = gpuckpt.Variable(0.0)
        assert float(copied.b.numpy()) == 0.0 and float(original.b.numpy()) == 2.0
        status.assert_consumed()


class TestWeakRoot:
    def test_saves_and_restores_through_a_weak_root(self, tmp_path: Path) -> None:
        model = gpuckpt.Module()
        model.v = gpuckpt.Variable(2.0)
        checkpoint = gpuckpt.Checkpoint(root=weakref.ref(model))
        assert isinstance(checkpoint.root, weakref.ref)
        path = checkpoint.write(tmp_path / "weak")
        assert values(path) == {"v/.ATTRIBUTES/VARIABLE_VALUE": 2.0}
        loaded = gpuckpt.Module()
        loaded.v = gpuckpt.Variable(0.0)
        gpuckpt.Checkpoint(root=weakref.ref(loaded)).read(path).assert_consumed()
        assert float(loaded.v.numpy()) == 2.0

    def test_the_checkpoint_does_not_keep_the_root_alive(self, tmp_path: Path) -> None:
        model = gpuckpt.Module()
        model.v = gpuckpt.Variable(2.0)
        checkpoint = gpuckpt.Checkpoint(root=weakref.ref(model), step=gpuckpt.Variable(1))
        checkpoint.save(tmp_path / "alive")
        ref = weakref.ref(model)
        del model
        gc.collect()
        assert ref() is None
        with pytest.raises(gpuckpt.InvalidArgumentError, match="passed by weak reference and no longer exists"):
            checkpoint.save(tmp_path / "dead")

    def test_weak_reference_without_a_root_is_refused(self) -> None:
        model = gpuckpt.Module()
        with pytest.raises(gpuckpt.InvalidArgumentError, match="model by weak reference without a root"):
            gpuckpt.Checkpoint(model=weakref.ref(model))


class TestOverlappingRestores:
    """TF's testOverlappingRestores: whichever restore() was called last decides the value."""

    @pytest.fixture()
    def paths(self, tmp_path: Path) -> tuple[str, str]:
        root = gpuckpt.Checkpoint()
        root.dep = gpuckpt.Module()
        root.dep.var = gpuckpt.Variable(12.0)
        first = root.save(tmp_path / "first")
        root.dep.var.assign(13.0)
        return first, root.save(tmp_path / "second")

    @staticmethod
    def load_dep() -> gpuckpt.Module:
        dep = gpuckpt.Module()
        dep.var = gpuckpt.Variable(0.0)
        return dep

    def test_later_restore_applied_later(self, paths: tuple[str, str]) -> None:
        first_root, second_root = gpuckpt.Checkpoint(), gpuckpt.Checkpoint()
        first_status = first_root.restore(paths[0])
        second_status = second_root.restore(paths[1])
        dep = self.load_dep()
        first_root.dep = dep
        first_status.assert_consumed()
        assert float(dep.var.numpy()) == 12.0
        second_root.dep = dep
        second_status.assert_consumed()
        assert float(dep.var.numpy()) == 13.0

    def test_older_restore_applied_later_does_not_overwrite(self, paths: tuple[str, str]) -> None:
        first_root, second_root = gpuckpt.Checkpoint(), gpuckpt.Checkpoint()
        second_status = second_root.restore(paths[1])
        first_status = first_root.restore(paths[0])
        dep = self.load_dep()
        first_root.dep = dep
        first_status.assert_consumed()
        assert float(dep.var.numpy()) == 12.0
        second_root.dep = dep
        second_status.assert_consumed()
        assert float(dep.var.numpy()) == 12.0

    def test_immediate_newer_restore_wins_over_older_deferred_one(self, paths: tuple[str, str]) -> None:
        dep = self.load_dep()
        older = gpuckpt.Checkpoint()
        older.restore(paths[1])
        gpuckpt.Checkpoint(dep=dep).restore(paths[0])
        older.dep = dep
        assert float(dep.var.numpy()) == 12.0

    def test_a_newer_restore_that_failed_its_checks_claims_nothing(self, tmp_path: Path,
                                                                   paths: tuple[str, str]) -> None:
        dep = self.load_dep()
        older = gpuckpt.Checkpoint()
        older.restore(paths[1])
        mismatched = gpuckpt.Checkpoint(dep=dep, extra=gpuckpt.Variable(np.zeros(3, np.float32)))
        with pytest.raises(gpuckpt.InvalidArgumentError, match="incompatible tensor with shape"):
            mismatched.restore(gpuckpt.Checkpoint(extra=gpuckpt.Variable(np.zeros(2, np.float32)),
                                                  dep=self.load_dep()).write(tmp_path / "other"))
        assert float(dep.var.numpy()) == 0.0  # nothing assigned, so nothing claimed:
        older.dep = dep
        assert float(dep.var.numpy()) == 13.0  # the older restore's deferred value still lands

    def test_name_based_restore_counts_as_newest(self, tmp_path: Path, paths: tuple[str, str]) -> None:
        tf1 = write_tensors(tmp_path / "tf1", {"w": np.float32(7.0)})
        dep = gpuckpt.Module()
        dep.var = gpuckpt.Variable(0.0, name="w")
        older = gpuckpt.Checkpoint()
        older.restore(paths[1])
        gpuckpt.Checkpoint(dep=dep).restore(tf1).assert_consumed()
        older.dep = dep
        assert float(dep.var.numpy()) == 7.0


class TestEagerStatusMethods:
    def test_checkpoint_load_status(self, tmp_path: Path) -> None:
        path = gpuckpt.Checkpoint(v=gpuckpt.Variable(3.0)).write(tmp_path / "c")
        checkpoint = gpuckpt.Checkpoint(v=gpuckpt.Variable(0.0))
        status = checkpoint.read(path)
        assert status.run_restore_ops() is None and status.initialize_or_restore() is None
        assert status.run_restore_ops(session=None) is None
        assert float(checkpoint.v.numpy()) == 3.0

    def test_name_based_status(self, tmp_path: Path) -> None:
        path = write_tensors(tmp_path / "tf1", {"w": np.float32(1.0)})
        checkpoint = gpuckpt.Checkpoint(v=gpuckpt.Variable(0.0, name="w"))
        status = checkpoint.restore(path)
        assert isinstance(status, gpuckpt.NameBasedSaverStatus)
        assert status.run_restore_ops() is None and status.initialize_or_restore() is None
        assert float(checkpoint.v.numpy()) == 1.0

    def test_restore_none(self) -> None:
        checkpoint = gpuckpt.Checkpoint(v=gpuckpt.Variable(5.0))
        status = checkpoint.restore(None)
        assert status.initialize_or_restore() is None
        assert float(checkpoint.v.numpy()) == 5.0
        with pytest.raises(AssertionError, match="No checkpoint specified, so no restore ops are available"):
            status.run_restore_ops()
        with pytest.raises(AssertionError, match=r"No checkpoint specified \(save_path=None\)"):
            status.assert_consumed()


def test_manager_counts_the_interval_from_last_checkpoint_step(tmp_path: Path) -> None:
    step = gpuckpt.Variable(np.int64(0))
    manager = gpuckpt.CheckpointManager(gpuckpt.Checkpoint(step=step), tmp_path, max_to_keep=None,
                                        step_counter=step, checkpoint_interval=10, last_checkpoint_step=5)
    saved = {}
    for value in (5, 10, 14, 15, 20, 26):
        step.assign(np.int64(value))
        saved[value] = manager.save()
    assert saved == {5: None, 10: None, 14: None, 15: str(tmp_path / "ckpt-1"), 20: None, 26: str(tmp_path / "ckpt-2")}


def test_slot_variables_are_named_as_tf_names_them(tmp_path: Path) -> None:
    v1 = gpuckpt.Variable(np.array([1.0, 2.0], np.float32))
    optimizer = Adam()
    optimizer.apply_gradients([(np.ones(2, np.float32), v1)])
    path = gpuckpt.Checkpoint(v1=v1, optimizer=optimizer).write(tmp_path / "slots")
    status = gpuckpt.Checkpoint(optimizer=Adam()).read(path)
    with pytest.raises(AssertionError, match=r"\(root\)\.optimizer's state 'm' for \(root\)\.v1"):
        status.assert_consumed()
    status.expect_partial()
