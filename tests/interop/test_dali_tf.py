"""TensorFlow reads a checkpoint that holds DALI pipeline states beside variables."""

from __future__ import annotations

import numpy as np
import pytest

import gpuckpt

pytestmark = pytest.mark.tf

helpers = pytest.importorskip("tests.adapters.test_dali", reason="needs DALI: pip install 'gpuckpt[dali]'")


def test_tensorflow_reads_the_dali_state_as_a_string_tensor(tmp_path) -> None:
    tf = pytest.importorskip("tensorflow")
    files = str(helpers.write_samples(tmp_path / "files"))
    factory = helpers.pipeline_factory(files, num_pipelines=2)
    weights = gpuckpt.Variable(np.arange(6, dtype=np.float32).reshape(2, 3))
    checkpoint = gpuckpt.Checkpoint(model=weights, data=factory)
    source = factory.build()
    helpers.batches_after(source, 3)
    path = checkpoint.save(tmp_path / "ckpt")

    reader = tf.train.load_checkpoint(path)
    shapes = reader.get_variable_to_shape_map()
    dtypes = reader.get_variable_to_dtype_map()
    assert shapes[helpers.STATE_KEY] == [2] and dtypes[helpers.STATE_KEY] == tf.string
    states = reader.get_tensor(helpers.STATE_KEY)
    assert list(states) == [p.checkpoint() for p in source]
    np.testing.assert_array_equal(reader.get_tensor("model/.ATTRIBUTES/VARIABLE_VALUE"), weights.numpy())

    # TF restores its own objects from the same file; the DALI state is a value TF has no object for
    tf_checkpoint = tf.train.Checkpoint(model=tf.Variable(np.zeros((2, 3), np.float32)))
    tf_checkpoint.restore(path).expect_partial()
    np.testing.assert_array_equal(tf_checkpoint.model.numpy(), weights.numpy())
