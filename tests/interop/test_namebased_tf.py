"""A checkpoint written by TensorFlow 1's ``Saver`` (graph mode) is restored by name into gpuckpt Variables."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import gpuckpt
from tests.api.models import Adam

pytestmark = pytest.mark.tf


@pytest.fixture(scope="module")
def tf():
    return pytest.importorskip("tensorflow", reason="name-based interop needs tensorflow-cpu (the test extra)")


def write_tf1_checkpoint(tf, prefix: Path) -> dict[str, np.ndarray]:
    """Train a tiny dense layer one Adam step in TF1 graph mode and save it with ``tf.compat.v1.train.Saver``.

    Returns every saved variable's value by its graph name.
    """
    v1 = tf.compat.v1
    with tf.Graph().as_default():
        with v1.variable_scope("dense"):
            kernel = v1.get_variable("kernel", initializer=np.arange(6, dtype=np.float32).reshape(3, 2))
            bias = v1.get_variable("bias", initializer=np.array([0.5, -0.5], np.float32))
        step = v1.train.get_or_create_global_step()
        x = tf.constant(np.ones((4, 3), np.float32))
        loss = tf.reduce_sum(tf.matmul(x, kernel) + bias)
        train = v1.train.AdamOptimizer(0.1).minimize(loss, global_step=step)
        saver = v1.train.Saver()
        with v1.Session() as sess:
            sess.run(v1.global_variables_initializer())
            sess.run(train)
            saver.save(sess, str(prefix))
            return {v.op.name: sess.run(v) for v in v1.global_variables()}


def test_tf1_saver_checkpoint_restores_by_name(tf, tmp_path: Path) -> None:
    values = write_tf1_checkpoint(tf, tmp_path / "model.ckpt")
    assert {"dense/kernel/Adam", "dense/kernel/Adam_1", "beta1_power", "global_step"} <= set(values)
    kernel = gpuckpt.Variable(np.zeros((3, 2), np.float32), name="dense/kernel")
    bias = gpuckpt.Variable(np.zeros(2, np.float32), name="dense/bias")
    step = gpuckpt.Variable(np.int64(0), name="global_step")
    opt = Adam()
    opt._create_slots([kernel, bias])  # slots named dense/kernel/Adam, dense/kernel/Adam_1, ... as TF1 names them
    checkpoint = gpuckpt.Checkpoint(model=gpuckpt.Module(), optimizer=opt)
    checkpoint.model.layer = [kernel, bias]
    checkpoint.model.step = step

    status = checkpoint.restore(gpuckpt.latest_checkpoint(tmp_path))

    assert isinstance(status, gpuckpt.NameBasedSaverStatus)
    status.assert_consumed()
    assert status.result.unused_keys == ()
    np.testing.assert_array_equal(kernel.numpy(), values["dense/kernel"])
    np.testing.assert_array_equal(bias.numpy(), values["dense/bias"])
    assert int(step.numpy()) == values["global_step"] == 1
    np.testing.assert_array_equal(opt.get_slot(kernel, "m").numpy(), values["dense/kernel/Adam"])
    np.testing.assert_array_equal(opt.get_slot(bias, "v").numpy(), values["dense/bias/Adam_1"])
    assert float(opt.beta1_power.numpy()) == pytest.approx(values["beta1_power"])
    assert not np.array_equal(values["dense/kernel/Adam"], 0)  # the step really changed the slots
