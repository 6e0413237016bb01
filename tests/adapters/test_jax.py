"""JAX adapter: pytrees of arrays saved by key path and restored as new pytrees on the template's devices."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

import gpuckpt

jax = pytest.importorskip("jax", reason="the JAX adapter needs jax: pip install 'gpuckpt[jax]'")
jnp = jax.numpy
gpuckpt_jax = pytest.importorskip("gpuckpt.jax")


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class Dense:
    kernel: jax.Array
    bias: jax.Array


def params(seed: int) -> dict:
    key = jax.random.PRNGKey(seed)
    k1, k2 = jax.random.split(key)
    return {
        "dense": Dense(jax.random.normal(k1, (3, 4), jnp.float32), jnp.zeros(4, jnp.bfloat16)),
        "blocks": [jax.random.normal(k2, (2,), jnp.float16), (jnp.arange(3, dtype=jnp.int32), jnp.array(True))],
        "step": jnp.array(7, jnp.int64) if jax.config.jax_enable_x64 else jnp.array(7, jnp.int32),
        "scale": 0.5,
        "table": np.arange(6, dtype=np.uint8).reshape(2, 3),
    }


def assert_trees_equal(a, b) -> None:
    leaves_a, tree_a = jax.tree_util.tree_flatten(a)
    leaves_b, tree_b = jax.tree_util.tree_flatten(b)
    assert tree_a == tree_b
    for x, y in zip(leaves_a, leaves_b):
        assert type(x) is type(y) or (isinstance(x, jax.Array) and isinstance(y, jax.Array))
        assert np.asarray(x).dtype == np.asarray(y).dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_round_trip_keeps_structure_dtypes_and_devices(tmp_path: Path) -> None:
    saved = params(0)
    saved["dense"] = Dense(saved["dense"].kernel, jnp.array([1.5, -2.0, 3.0, 256.0], jnp.bfloat16))
    path = gpuckpt_jax.save(tmp_path / "p", saved)
    template = params(1)
    restored, status = gpuckpt_jax.restore(path, template)
    status.assert_consumed()
    assert_trees_equal(restored, saved)
    assert isinstance(restored["dense"], Dense)
    assert restored["dense"].bias.dtype == jnp.bfloat16
    assert restored["dense"].kernel.sharding == template["dense"].kernel.sharding
    assert_trees_equal(template, params(1))  # the template is untouched


def test_keys_follow_key_paths(tmp_path: Path) -> None:
    path = gpuckpt_jax.save(tmp_path / "p", params(0), name="params")
    keys = dict(gpuckpt.list_variables(path))
    assert keys["params/dense/kernel/.ATTRIBUTES/VARIABLE_VALUE"] == [3, 4]
    assert keys["params/blocks/1/0/.ATTRIBUTES/VARIABLE_VALUE"] == [3]
    assert keys["params/scale/.ATTRIBUTES/VARIABLE_VALUE"] == []
    brain = gpuckpt.load_checkpoint(path).get_tensor("params/dense/bias/.ATTRIBUTES/VARIABLE_VALUE")
    assert brain.dtype == ml_dtypes.bfloat16


def test_unmatched_paths_are_reported_and_kept(tmp_path: Path) -> None:
    path = gpuckpt_jax.save(tmp_path / "p", {"w": jnp.ones(2), "old": jnp.ones(1)})
    template = {"w": jnp.zeros(2), "new": jnp.full(3, 4.0)}
    restored, status = gpuckpt_jax.restore(path, template)
    np.testing.assert_array_equal(restored["w"], [1, 1])
    np.testing.assert_array_equal(restored["new"], [4, 4, 4])
    with pytest.raises(AssertionError, match=r"Found 1 Python objects.*\(root\).tree.new \(<gpuckpt.jax leaf "
                                             r"\"\['new'\]\" float32\[3\]>\)"):
        status.expect_partial().assert_existing_objects_matched()
    _, status = gpuckpt_jax.restore(path, {"w": jnp.zeros(2)})
    status.assert_existing_objects_matched()
    with pytest.raises(AssertionError, match=r"Unresolved object in checkpoint \(root\).tree.old"):
        status.expect_partial().assert_consumed()


def test_dtype_mismatch_changes_nothing(tmp_path: Path) -> None:
    path = gpuckpt_jax.save(tmp_path / "p", {"a": jnp.ones(2), "b": jnp.ones(2, jnp.int32)})
    holder = gpuckpt_jax.PyTree({"a": jnp.zeros(2), "b": jnp.zeros(2, jnp.float32)})
    with pytest.raises(gpuckpt.InvalidArgumentError, match=r"pytree leaf \"\['b'\]\" \(\(root\).tree.b\): the "
                                                          r"checkpoint holds int32, the template float32; pass "
                                                          r"cast=True"):
        gpuckpt.Checkpoint(tree=holder).read(path)
    np.testing.assert_array_equal(holder.tree["a"], [0, 0])


def test_pytree_in_a_checkpoint_with_other_objects(tmp_path: Path) -> None:
    counter = gpuckpt.Variable(np.int64(3))
    holder = gpuckpt_jax.PyTree({"w": jnp.arange(4.0)})
    path = gpuckpt.Checkpoint(params=holder, counter=counter).save(tmp_path / "ck")
    fresh = gpuckpt_jax.PyTree({"w": jnp.zeros(4)})
    fresh_counter = gpuckpt.Variable(np.int64(0))
    gpuckpt.Checkpoint(params=fresh, counter=fresh_counter).restore(path).assert_consumed()
    np.testing.assert_array_equal(fresh.tree["w"], [0, 1, 2, 3])
    assert int(fresh_counter.numpy()) == 3


def test_unsupported_leaves_and_keys_are_named() -> None:
    with pytest.raises(gpuckpt.InvalidArgumentError, match=r"pytree leaf \"\['name'\]\" is a str"):
        gpuckpt_jax.PyTree({"name": "x"})
    with pytest.raises(gpuckpt.InvalidArgumentError, match="has the key"):
        gpuckpt_jax.PyTree({(1, 2): jnp.ones(1)})


@pytest.mark.gpu
def test_round_trip_on_a_gpu(tmp_path: Path) -> None:
    gpus = [d for d in jax.devices() if d.platform == "gpu"] if jax.default_backend() == "gpu" else []
    if not gpus:
        pytest.skip("no GPU device for jax")
    saved = jax.device_put({"w": jnp.arange(6.0).reshape(2, 3), "b": jnp.ones(3, jnp.bfloat16)}, gpus[0])
    path = gpuckpt_jax.save(tmp_path / "p", saved)
    template = jax.device_put({"w": jnp.zeros((2, 3)), "b": jnp.zeros(3, jnp.bfloat16)}, gpus[0])
    restored, status = gpuckpt_jax.restore(path, template)
    status.assert_consumed()
    assert_trees_equal(restored, saved)
    assert restored["w"].devices() == {gpus[0]}
