"""The examples of TF's tf.train.Checkpoint documentation and guide, written with gpuckpt objects."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

import gpuckpt
from gpuckpt.format import statefile

from .models import Adam, Dense, LazyDense, Model

X = np.ones((2, 3), np.float32)


def trained(steps: int) -> tuple[Model, Adam]:
    model, opt = Model(), Adam()
    for _ in range(steps):
        model.train_step(opt)
    return model, opt


def assert_same_variables(a: gpuckpt.Module, b: gpuckpt.Module) -> None:
    assert len(a.variables) == len(b.variables)
    for x, y in zip(a.variables, b.variables):
        np.testing.assert_array_equal(x.numpy(), y.numpy())


class TestDocumentationExamples:
    def test_checkpoint_of_a_model_as_root(self, tmp_path: Path) -> None:
        """``checkpoint = tf.train.Checkpoint(model); save_path = checkpoint.save(...); restore(save_path)``."""
        model, _ = trained(1)
        checkpoint = gpuckpt.Checkpoint(model)
        save_path = checkpoint.save(tmp_path / "training_checkpoints")
        assert save_path == str(tmp_path / "training_checkpoints-1")
        expected = model(X)
        model.layers[0].kernel.assign(np.zeros((3, 4), np.float32))
        checkpoint.restore(save_path).assert_consumed()
        np.testing.assert_array_equal(model(X), expected)

    def test_training_loop_with_optimizer_model_and_step(self, tmp_path: Path) -> None:
        """The loop of the class docstring: restore the latest, train, assert_consumed, save."""
        checkpoint_directory = tmp_path / "training_checkpoints"
        checkpoint_prefix = os.path.join(checkpoint_directory, "ckpt")
        originals = []
        for run in range(2):
            model, optimizer = Model(), Adam()
            checkpoint = gpuckpt.Checkpoint(optimizer=optimizer, model=model)
            status = checkpoint.restore(gpuckpt.latest_checkpoint(checkpoint_directory))
            if run == 1:
                assert_same_variables(model, originals[0])  # restored before training
            for _ in range(3):
                model.train_step(optimizer)  # slots created here take their saved values first
            if run == 1:
                status.assert_consumed()
            path = checkpoint.save(file_prefix=checkpoint_prefix)
            originals.append(model)
        assert path.endswith("ckpt-2")
        assert int(model.step.numpy()) == 6
        continued, opt = trained(6)
        assert_same_variables(model, continued)
        np.testing.assert_allclose(optimizer.beta1_power.numpy(), opt.beta1_power.numpy())

    def test_write_and_read(self, tmp_path: Path) -> None:
        """``step = tf.Variable(1); checkpoint.write(...); step.assign(2); checkpoint.read(...)``."""
        step = gpuckpt.Variable(1, name="step")
        checkpoint = gpuckpt.Checkpoint(step=step)
        path = checkpoint.write(tmp_path / "ckpt")
        assert path == str(tmp_path / "ckpt")
        step.assign(2)
        checkpoint.read(path).assert_consumed()
        assert int(step.numpy()) == 1
        assert not (tmp_path / "checkpoint").exists()

    def test_restore_on_create(self, tmp_path: Path) -> None:
        """Variables a layer creates on its first call take the checkpointed values at once."""
        layer = LazyDense(2)
        layer(X)
        layer.kernel.assign(np.full((3, 2), 7.0, np.float32))
        path = gpuckpt.Checkpoint(model=layer).save(tmp_path / "ckpt")

        fresh = LazyDense(2)
        status = gpuckpt.Checkpoint(model=fresh).restore(path)
        with pytest.raises(AssertionError, match=r"Unresolved object in checkpoint \(root\).model.kernel"):
            status.assert_consumed()
        fresh(X)
        np.testing.assert_array_equal(fresh.kernel.numpy(), np.full((3, 2), 7.0, np.float32))
        status.assert_consumed()

    def test_delayed_restoration_of_the_guide(self, tmp_path: Path) -> None:
        """Checkpoints nested in checkpoints; a variable attached later is restored when attached."""
        net = gpuckpt.Checkpoint(l1=gpuckpt.Checkpoint(bias=gpuckpt.Variable(np.arange(5, dtype=np.float32)),
                                                       kernel=gpuckpt.Variable(np.ones((1, 5), np.float32))))
        path = gpuckpt.Checkpoint(net=net).save(tmp_path / "ckpt")

        to_restore = gpuckpt.Variable(np.zeros(5, np.float32))
        fake_layer = gpuckpt.Checkpoint(bias=to_restore)
        new_root = gpuckpt.Checkpoint(net=gpuckpt.Checkpoint(l1=fake_layer))
        status = new_root.restore(path)
        np.testing.assert_array_equal(to_restore.numpy(), np.arange(5))
        delayed_restore = gpuckpt.Variable(np.zeros((1, 5), np.float32))
        fake_layer.kernel = delayed_restore
        np.testing.assert_array_equal(delayed_restore.numpy(), np.ones((1, 5)))
        status.assert_consumed()

    def test_expect_partial_restores_only_the_model(self, tmp_path: Path, recwarn) -> None:
        model, optimizer = trained(2)
        path = gpuckpt.Checkpoint(model=model, optimizer=optimizer).save(tmp_path / "ckpt")
        fresh = Model()
        status = gpuckpt.Checkpoint(model=fresh).restore(path).expect_partial()
        status.assert_existing_objects_matched()
        with pytest.raises(AssertionError, match=r"Unresolved object in checkpoint \(root\).optimizer"):
            status.assert_consumed()
        assert_same_variables(fresh, model)
        del status
        import gc
        gc.collect()
        assert not [w for w in recwarn if w.category is gpuckpt.restorer.UnrestoredValuesWarning]


class TestSaveAndWrite:
    def test_save_numbers_from_the_counter_and_writes_the_state_file(self, tmp_path: Path) -> None:
        ckpt = gpuckpt.Checkpoint(v=gpuckpt.Variable(1.0))
        assert [ckpt.save(tmp_path / "ckpt") for _ in range(2)][-1] == str(tmp_path / "ckpt-2")
        assert int(ckpt.save_counter.numpy()) == 2
        state = statefile.parse((tmp_path / "checkpoint").read_text())
        assert state == statefile.CheckpointState("ckpt-2", ("ckpt-2",))
        assert gpuckpt.latest_checkpoint(tmp_path) == str(tmp_path / "ckpt-2")

    def test_save_counter_is_last_child_and_created_lazily(self, tmp_path: Path) -> None:
        ckpt = gpuckpt.Checkpoint(z=gpuckpt.Variable(1.0), a=gpuckpt.Variable(2.0))
        ckpt.write(tmp_path / "w")
        assert [k for k, _ in gpuckpt.list_variables(tmp_path / "w")] == [
            "_CHECKPOINTABLE_OBJECT_GRAPH", "a/.ATTRIBUTES/VARIABLE_VALUE", "z/.ATTRIBUTES/VARIABLE_VALUE"]
        ckpt.save(tmp_path / "s")
        ckpt.later = gpuckpt.Variable(3.0)
        assert [n for n, _ in ckpt._trackable_children()] == ["a", "z", "save_counter", "later"]

    def test_numbering_continues_after_restore(self, tmp_path: Path) -> None:
        first = gpuckpt.Checkpoint(v=gpuckpt.Variable(1.0))
        first.save(tmp_path / "ck")
        path = first.save(tmp_path / "ck")
        second = gpuckpt.Checkpoint(v=gpuckpt.Variable(0.0))
        second.restore(path)
        assert second.save(tmp_path / "ck") == str(tmp_path / "ck-3")

    def test_save_in_another_directory_uses_a_relative_path(self, tmp_path: Path) -> None:
        ckpt = gpuckpt.Checkpoint(v=gpuckpt.Variable(1.0))
        ckpt.save(tmp_path / "sub" / "deeper" / "model")
        assert (tmp_path / "sub" / "deeper" / "checkpoint").read_text().startswith('model_checkpoint_path: "model-1"')

    def test_write_callbacks_run_in_order_with_the_path(self, tmp_path: Path) -> None:
        calls = []
        options = gpuckpt.CheckpointOptions(experimental_write_callbacks=[
            lambda: calls.append("no-arg"), lambda path: calls.append(path)])
        ckpt = gpuckpt.Checkpoint(v=gpuckpt.Variable(1.0))
        ckpt.write(tmp_path / "w", options=options)
        saved = ckpt.save(tmp_path / "s", options=options)
        assert calls == ["no-arg", str(tmp_path / "w"), "no-arg", saved]

    def test_sharding_policy_splits_data_files(self, tmp_path: Path) -> None:
        ckpt = gpuckpt.Checkpoint(a=gpuckpt.Variable(np.zeros(100, np.float32)),
                                  b=gpuckpt.Variable(np.ones(100, np.float32)))
        options = gpuckpt.CheckpointOptions(experimental_sharding_callback=gpuckpt.MaxShardSizePolicy(500))
        path = ckpt.write(tmp_path / "sharded", options=options)
        assert len(list(tmp_path.glob("sharded.data-*-of-*"))) > 1
        fresh = gpuckpt.Checkpoint(a=gpuckpt.Variable(np.zeros(100, np.float32)),
                                   b=gpuckpt.Variable(np.zeros(100, np.float32)))
        fresh.read(path).assert_consumed()
        np.testing.assert_array_equal(fresh.b.numpy(), np.ones(100))

    def test_path_like_prefixes_return_str(self, tmp_path: Path) -> None:
        assert isinstance(gpuckpt.Checkpoint(v=gpuckpt.Variable(1.0)).write(tmp_path / "p"), str)


class TestConstruction:
    def test_non_trackable_keyword_is_a_value_error(self) -> None:
        with pytest.raises(ValueError, match="`Checkpoint` was expecting v to be a trackable object"):
            gpuckpt.Checkpoint(v=5)

    def test_conflicting_root_attribute(self) -> None:
        root = gpuckpt.Module()
        root.child = gpuckpt.Variable(1.0)
        with pytest.raises(ValueError, match="Cannot create a Checkpoint with keyword argument child if "
                                             "root.child already exists."):
            gpuckpt.Checkpoint(root, child=gpuckpt.Variable(2.0))
        gpuckpt.Checkpoint(root, child=root.child)  # the same object is fine

    def test_save_counter_keyword_is_refused(self) -> None:
        with pytest.raises(AttributeError):
            gpuckpt.Checkpoint(save_counter=gpuckpt.Variable(1))

    def test_root_children_then_sorted_kwargs_with_root_edge_then_save_counter(self, tmp_path: Path) -> None:
        root = gpuckpt.Module()
        root.b, root.a = gpuckpt.Variable(1.0), gpuckpt.Variable(2.0)
        ckpt = gpuckpt.Checkpoint(root, zed=gpuckpt.Variable(3.0), alpha=gpuckpt.Variable(4.0))
        ckpt.save(tmp_path / "ck")
        with gpuckpt.load_checkpoint(tmp_path / "ck-1") as reader:
            graph = gpuckpt.format.objgraph.decode(reader.get_tensor("_CHECKPOINTABLE_OBJECT_GRAPH"))
        assert [(c.local_name, c.node_id) for c in graph.nodes[0].children] == [
            ("b", 1), ("a", 2), ("alpha", 3), ("root", 0), ("zed", 4), ("save_counter", 5)]

    def test_lists_and_dicts_as_keywords(self, tmp_path: Path) -> None:
        ckpt = gpuckpt.Checkpoint(layers=[Dense(1, 2)], table={"w": gpuckpt.Variable(1.0)})
        path = ckpt.write(tmp_path / "c")
        assert "layers/0/kernel/.ATTRIBUTES/VARIABLE_VALUE" in gpuckpt.load_checkpoint(path).keys()
        fresh = gpuckpt.Checkpoint(layers=[], table={})
        status = fresh.read(path)
        fresh.layers.append(Dense(1, 2))
        fresh.table["w"] = gpuckpt.Variable(0.0)
        status.assert_consumed()
        assert float(fresh.table["w"].numpy()) == 1.0


class TestRestorePaths:
    def test_restore_none_is_initialization_only(self) -> None:
        status = gpuckpt.Checkpoint(v=gpuckpt.Variable(1.0)).restore(None)
        for check in (status.assert_consumed, status.assert_existing_objects_matched,
                      status.assert_nontrivial_match):
            with pytest.raises(AssertionError, match=r"No checkpoint specified \(save_path=None\)"):
                check()
        assert status.expect_partial() is status

    def test_missing_prefix(self, tmp_path: Path) -> None:
        ckpt = gpuckpt.Checkpoint(v=gpuckpt.Variable(1.0))
        missing = str(tmp_path / "nope")
        with pytest.raises(gpuckpt.NotFoundError, match="nope"):
            ckpt.read(missing)
        with pytest.raises(gpuckpt.NotFoundError, match=rf"^Error when restoring from checkpoint or SavedModel "
                                                        rf"at {missing}:(.|\n)*the '-1' in 'path/to/ckpt-1'"):
            ckpt.restore(missing)

    def test_empty_directory(self, tmp_path: Path) -> None:
        with pytest.raises(gpuckpt.NotFoundError, match="neither a 'checkpoint' state file"):
            gpuckpt.Checkpoint().restore(tmp_path)

    def test_saved_model_directory(self, tmp_path: Path) -> None:
        saved = gpuckpt.Checkpoint(v=gpuckpt.Variable([1.0, 2.0]))
        saved.write(tmp_path / "model" / "variables" / "variables")
        fresh = gpuckpt.Checkpoint(v=gpuckpt.Variable([0.0, 0.0]))
        fresh.restore(tmp_path / "model").assert_nontrivial_match()
        np.testing.assert_array_equal(fresh.v.numpy(), [1.0, 2.0])

    def test_name_based_checkpoint_is_restored_by_name(self, tmp_path: Path) -> None:
        gpuckpt.saver.write_tensors(tmp_path / "tf1", {"scope/w": np.ones(2, np.float32)})
        w = gpuckpt.Variable(np.zeros(2, np.float32), name="scope/w")
        status = gpuckpt.Checkpoint(w=w).read(tmp_path / "tf1")
        assert isinstance(status, gpuckpt.NameBasedSaverStatus)
        np.testing.assert_array_equal(w.numpy(), [1, 1])

    def test_skip_slot_variables(self, tmp_path: Path) -> None:
        model, opt = trained(1)
        path = gpuckpt.Checkpoint(model=model, optimizer=opt).write(tmp_path / "c")
        fresh_model, fresh_opt = Model(), Adam()
        options = gpuckpt.CheckpointOptions(experimental_skip_slot_variables=True)
        status = gpuckpt.Checkpoint(model=fresh_model, optimizer=fresh_opt).read(path, options=options)
        fresh_model.train_step(fresh_opt)  # creates slots, which stay at their initial values
        status.assert_consumed()
        m = fresh_opt.get_slot(fresh_model.layers[0].kernel, "m").numpy()
        np.testing.assert_allclose(m, np.full((3, 4), 0.05, np.float32))
