"""Real TensorFlow restores gpuckpt's object-based checkpoints, and gpuckpt restores TensorFlow's."""

from __future__ import annotations

from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

import gpuckpt
from tests.api.models import Adam, Dense

pytestmark = pytest.mark.tf


@pytest.fixture(scope="module")
def tf():
    return pytest.importorskip("tensorflow")


VALUES = {
    "embed": np.arange(20, dtype=np.float32).reshape(5, 4),
    "half": np.array([0.5, -2.0, 65504.0], np.float16),
    "brain": np.array([1.5, -3.0, 256.0], ml_dtypes.bfloat16),
    "count": np.int64(-7),
    "flags": np.array([True, False, True]),
    "ids": np.array([[1, 2], [3, 4]], np.int32),
    "bytes": np.array([0, 255, 7], np.uint8),
    "wide": np.array([1.0 + 2.0j], np.complex128),
    "text": b"caf\xc3\xa9",
    "words": np.array([b"a", b"", b"\x00\xff"], dtype=object),
}


def build(module_cls, variable, values: dict):
    """One nested structure, built with either library's Module and Variable classes."""
    def block(seed: int):
        b = module_cls()
        b.kernel = variable(np.full((2, 2), seed, np.float32))
        b.bias = variable(np.full(2, -seed, np.float32))
        return b

    m = module_cls()
    m.embed = variable(values["embed"])
    m.blocks = [block(1), block(2)]
    m.heads = {"cls": block(3), "extra": [variable(values["half"]), variable(values["brain"])]}
    m.pair = (variable(values["ids"]), {"inner": variable(values["text"])})
    m.misc = {"flags": variable(values["flags"]), "bytes": variable(values["bytes"]),
              "wide": variable(values["wide"]), "words": variable(values["words"])}
    m.step = variable(values["count"])
    m.alias = m.embed
    m.empty = []
    return m


def zeros_like_values() -> dict:
    out = {k: np.zeros_like(v) for k, v in VALUES.items() if isinstance(v, np.ndarray) and v.dtype != object}
    out.update(count=np.int64(0), text=b"", words=np.array([b"", b"", b""], dtype=object))
    return out


def tf_variable(tf):
    def make(value):
        if isinstance(value, bytes) or getattr(value, "dtype", None) == object:
            return tf.Variable(tf.constant(value, dtype=tf.string))
        return tf.Variable(tf.constant(value))
    return make


def leaves(module) -> list:
    """The variables' values in a fixed order, as NumPy arrays (bytes for strings)."""
    return [np.asarray(v.numpy()) for v in (
        module.embed, module.blocks[0].kernel, module.blocks[1].bias, module.heads["cls"].kernel,
        module.heads["extra"][0], module.heads["extra"][1], module.pair[0], module.pair[1]["inner"],
        module.misc["flags"], module.misc["bytes"], module.misc["wide"], module.misc["words"], module.step)]


def assert_same_leaves(a, b) -> None:
    for x, y in zip(leaves(a), leaves(b), strict=True):
        assert x.dtype == y.dtype or x.dtype.kind in "OS" and y.dtype.kind in "OS"
        np.testing.assert_array_equal(x, y)


def test_tf_reads_gpuckpt_write_of_a_nested_module(tf, tmp_path: Path) -> None:
    ours = build(gpuckpt.Module, gpuckpt.Variable, VALUES)
    path = gpuckpt.Checkpoint(model=ours, step=ours.step).write(tmp_path / "ours")
    theirs = build(tf.Module, tf_variable(tf), zeros_like_values())
    tf.train.Checkpoint(model=theirs, step=theirs.step).read(path).assert_consumed()
    assert_same_leaves(ours, theirs)


def test_tf_restores_latest_gpuckpt_save(tf, tmp_path: Path) -> None:
    ours = build(gpuckpt.Module, gpuckpt.Variable, VALUES)
    ckpt = gpuckpt.Checkpoint(model=ours)
    ckpt.save(tmp_path / "ckpt")
    ckpt.save(tmp_path / "ckpt")
    theirs = build(tf.Module, tf_variable(tf), zeros_like_values())
    tf_ckpt = tf.train.Checkpoint(model=theirs)
    tf_ckpt.restore(tf.train.latest_checkpoint(str(tmp_path))).assert_consumed()
    assert int(tf_ckpt.save_counter.numpy()) == 2
    assert_same_leaves(ours, theirs)


def test_gpuckpt_reads_tf_write_of_a_nested_module(tf, tmp_path: Path) -> None:
    theirs = build(tf.Module, tf_variable(tf), VALUES)
    path = tf.train.Checkpoint(model=theirs, step=theirs.step).write(str(tmp_path / "theirs"))
    ours = build(gpuckpt.Module, gpuckpt.Variable, zeros_like_values())
    gpuckpt.Checkpoint(model=ours, step=ours.step).read(path).assert_consumed()
    assert_same_leaves(ours, theirs)


def test_same_structure_gives_the_same_bytes(tf, tmp_path: Path) -> None:
    theirs = build(tf.Module, tf_variable(tf), VALUES)
    tf_path = tf.train.Checkpoint(model=theirs, step=theirs.step).write(str(tmp_path / "theirs"))
    ours = build(gpuckpt.Module, gpuckpt.Variable, VALUES)
    our_path = gpuckpt.Checkpoint(model=ours, step=ours.step).write(tmp_path / "ours")
    for suffix in (".index", ".data-00000-of-00001"):
        assert Path(our_path + suffix).read_bytes() == Path(tf_path + suffix).read_bytes(), suffix


def tf_model_and_adam(tf):
    model = tf.Module()
    model.w = tf.Variable(np.array([1.0, 2.0], np.float32))
    model.b = tf.Variable(np.float32(3.0))
    return model, tf.compat.v1.train.AdamOptimizer(0.1)


def our_model_and_adam():
    model = gpuckpt.Module()
    model.w = gpuckpt.Variable(np.array([1.0, 2.0], np.float32))
    model.b = gpuckpt.Variable(np.float32(3.0))
    return model, Adam(0.1)


def test_tf_restores_gpuckpt_slot_variables_on_creation(tf, tmp_path: Path) -> None:
    model, opt = our_model_and_adam()
    opt.apply_gradients([(np.array([0.5, -1.0], np.float32), model.w), (np.float32(2.0), model.b)])
    path = gpuckpt.Checkpoint(model=model, optimizer=opt).write(tmp_path / "ours")

    tf_model, tf_opt = tf_model_and_adam(tf)
    status = tf.train.Checkpoint(model=tf_model, optimizer=tf_opt).read(path)
    tf_opt.apply_gradients([(tf.zeros([2]), tf_model.w), (tf.zeros([]), tf_model.b)])  # creates the slots
    status.assert_consumed()
    np.testing.assert_allclose(tf_opt.get_slot(tf_model.w, "m").numpy(), 0.9 * opt.get_slot(model.w, "m").numpy())
    np.testing.assert_allclose(tf_opt.get_slot(tf_model.b, "v").numpy(), 0.999 * opt.get_slot(model.b, "v").numpy())


def test_gpuckpt_restores_tf_slot_variables_on_creation(tf, tmp_path: Path) -> None:
    tf_model, tf_opt = tf_model_and_adam(tf)
    tf_opt.apply_gradients([(tf.constant([0.5, -1.0]), tf_model.w), (tf.constant(2.0), tf_model.b)])
    path = tf.train.Checkpoint(model=tf_model, optimizer=tf_opt).write(str(tmp_path / "theirs"))

    model, opt = our_model_and_adam()
    status = gpuckpt.Checkpoint(model=model, optimizer=opt).read(path)
    opt._create_slots([model.w, model.b])
    status.assert_consumed()
    for var, tf_var in ((model.w, tf_model.w), (model.b, tf_model.b)):
        np.testing.assert_array_equal(var.numpy(), tf_var.numpy())
        for slot in ("m", "v"):
            np.testing.assert_array_equal(opt.get_slot(var, slot).numpy(), tf_opt.get_slot(tf_var, slot).numpy())
    np.testing.assert_array_equal(opt.beta1_power.numpy(), tf_opt._get_beta_accumulators()[0].numpy())


def test_tf_manager_continues_a_gpuckpt_manager(tf, tmp_path: Path) -> None:
    ours = gpuckpt.Checkpoint(v=gpuckpt.Variable(np.float64(1.0)))
    manager = gpuckpt.CheckpointManager(ours, tmp_path, max_to_keep=2)
    for value in (1.0, 2.0, 3.0):
        ours.v.assign(np.float64(value))
        manager.save()
    tf_ckpt = tf.train.Checkpoint(v=tf.Variable(np.float64(0.0)))
    tf_manager = tf.train.CheckpointManager(tf_ckpt, str(tmp_path), max_to_keep=2)
    assert tf_manager.checkpoints == manager.checkpoints
    tf_ckpt.restore(tf_manager.latest_checkpoint).assert_consumed()
    assert float(tf_ckpt.v.numpy()) == 3.0
    assert tf_manager.save() == str(tmp_path / "ckpt-4")


def test_gpuckpt_manager_continues_a_tf_manager(tf, tmp_path: Path) -> None:
    tf_ckpt = tf.train.Checkpoint(layer=tf.Module())
    tf_ckpt.layer.kernel = tf.Variable(np.ones((2, 2), np.float32))
    tf_ckpt.layer.bias = tf.Variable(np.zeros(2, np.float32))
    tf_manager = tf.train.CheckpointManager(tf_ckpt, str(tmp_path), max_to_keep=3)
    for _ in range(3):
        tf_manager.save()
    ours = gpuckpt.Checkpoint(layer=Dense(2, 2))
    manager = gpuckpt.CheckpointManager(ours, tmp_path, max_to_keep=3)
    assert manager.checkpoints == tf_manager.checkpoints
    assert manager.restore_or_initialize() == str(tmp_path / "ckpt-3")
    np.testing.assert_array_equal(ours.layer.kernel.numpy(), np.ones((2, 2)))
    assert manager.save() == str(tmp_path / "ckpt-4")
    assert tf.train.latest_checkpoint(str(tmp_path)) == str(tmp_path / "ckpt-4")
