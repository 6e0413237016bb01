"""Name-based restore of checkpoints without an object graph (TF1 ``Saver``), without TensorFlow."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import gpuckpt
from gpuckpt.saver import write_tensors

from .models import Adam, Dense


def tf1_style(tmp_path: Path, tensors: dict) -> str:
    """A checkpoint keyed by variable names, as TF1's Saver writes it (no object graph)."""
    return write_tensors(tmp_path / "tf1", tensors)


def named_model() -> gpuckpt.Module:
    m = gpuckpt.Module()
    m.kernel = gpuckpt.Variable(np.zeros((2, 2), np.float32), name="dense/kernel")
    m.bias = gpuckpt.Variable(np.zeros(2, np.float32), name="dense/bias")
    return m


def test_variables_are_matched_by_name(tmp_path: Path) -> None:
    path = tf1_style(tmp_path, {"dense/kernel": np.arange(4, dtype=np.float32).reshape(2, 2),
                                "dense/bias": np.array([5, 6], np.float32), "global_step": np.int64(3)})
    model = named_model()
    status = gpuckpt.Checkpoint(model=model).restore(path)
    assert isinstance(status, gpuckpt.NameBasedSaverStatus)
    status.assert_consumed().assert_existing_objects_matched().assert_nontrivial_match().expect_partial()
    np.testing.assert_array_equal(model.kernel.numpy(), [[0, 1], [2, 3]])
    np.testing.assert_array_equal(model.bias.numpy(), [5, 6])
    assert status.result.unused_keys == ("global_step",)
    assert sorted(status.result.restored) == [("(root).model.bias", "dense/bias"),
                                              ("(root).model.kernel", "dense/kernel")]


def test_a_variable_without_a_value_fails_the_assertions(tmp_path: Path) -> None:
    path = tf1_style(tmp_path, {"dense/kernel": np.ones((2, 2), np.float32)})
    model = named_model()
    status = gpuckpt.Checkpoint(model=model).read(path)
    np.testing.assert_array_equal(model.kernel.numpy(), np.ones((2, 2)))
    for check in (status.assert_consumed, status.assert_existing_objects_matched, status.assert_nontrivial_match):
        with pytest.raises(AssertionError, match=r"1 objects found no value under their name in the checkpoint: "
                                                 r"\(root\).model.bias \(name 'dense/bias'\)"):
            check()


def test_mismatched_dtype_changes_nothing(tmp_path: Path) -> None:
    path = tf1_style(tmp_path, {"dense/kernel": np.ones((2, 2), np.float32), "dense/bias": np.ones(2, np.int32)})
    model = named_model()
    with pytest.raises(gpuckpt.InvalidArgumentError,
                       match=r"key 'dense/bias' \(\(root\).model.bias\): expected dtype float32 does not equal "
                             r"original dtype int32"):
        gpuckpt.Checkpoint(model=model).read(path)
    np.testing.assert_array_equal(model.kernel.numpy(), np.zeros((2, 2)))  # all or nothing


def test_slot_variables_are_matched_by_their_names(tmp_path: Path) -> None:
    """TF1 Adam names its slots ``<var>/Adam`` and ``<var>/Adam_1``; tests/api/models.Adam does too."""
    dense = Dense(2, 2)
    dense.kernel._name, dense.bias._name = "dense/kernel", "dense/bias"
    opt = Adam()
    opt._create_slots(dense.trainable_variables)
    path = tf1_style(tmp_path, {"dense/kernel": np.ones((2, 2), np.float32), "dense/bias": np.ones(2, np.float32),
                                "dense/kernel/Adam": np.full((2, 2), 2, np.float32),
                                "dense/kernel/Adam_1": np.full((2, 2), 3, np.float32),
                                "dense/bias/Adam": np.full(2, 4, np.float32),
                                "dense/bias/Adam_1": np.full(2, 5, np.float32),
                                "beta1_power": np.float32(0.5), "beta2_power": np.float32(0.25)})
    gpuckpt.Checkpoint(model=dense, optimizer=opt).read(path).assert_consumed()
    np.testing.assert_array_equal(opt.get_slot(dense.kernel, "v").numpy(), np.full((2, 2), 3))
    np.testing.assert_array_equal(opt.get_slot(dense.bias, "m").numpy(), np.full(2, 4))
    assert float(opt.beta2_power.numpy()) == 0.25


def test_skip_slot_variables_leaves_slots_alone(tmp_path: Path) -> None:
    var = gpuckpt.Variable(np.zeros(2, np.float32), name="w")
    opt = Adam()
    opt._create_slots([var])
    path = tf1_style(tmp_path, {"w": np.ones(2, np.float32), "w/Adam": np.ones(2, np.float32)})
    options = gpuckpt.CheckpointOptions(experimental_skip_slot_variables=True)
    status = gpuckpt.Checkpoint(v=var, optimizer=opt).read(path, options)
    np.testing.assert_array_equal(opt.get_slot(var, "m").numpy(), [0, 0])
    assert ("(root).v", "w") in status.result.restored
