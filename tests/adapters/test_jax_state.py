"""JAX training state: typed PRNG keys, abstract templates, casts, flax TrainState and optax states."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import gpuckpt

jax = pytest.importorskip("jax", reason="the JAX adapter needs jax: pip install 'gpuckpt[jax]'")
jnp = jax.numpy
from gpuckpt import jax as gpuckpt_jax


def test_a_typed_prng_key_round_trips_with_its_implementation(tmp_path: Path) -> None:
    key = jax.random.split(jax.random.key(7, impl="rbg"), 3)
    path = gpuckpt_jax.save(tmp_path / "k", {"key": key})
    keys = dict(gpuckpt.list_variables(path))
    assert keys["tree/key/.ATTRIBUTES/VARIABLE_VALUE"] == [3, 4]  # rbg key data: 4 words per key
    assert gpuckpt.load_checkpoint(path).get_tensor("tree/key/.ATTRIBUTES/PRNG_IMPL") == b"rbg"
    restored, status = gpuckpt_jax.restore(path, {"key": jax.random.split(jax.random.key(0, impl="rbg"), 3)})
    status.assert_consumed()
    assert jnp.array_equal(jax.random.key_data(restored["key"]), jax.random.key_data(key))
    abstract = {"key": jax.ShapeDtypeStruct(key.shape, key.dtype)}
    restored, _ = gpuckpt_jax.restore(path, abstract)
    assert jax.random.key_impl(restored["key"]) == jax.random.key_impl(key)
    assert jnp.array_equal(jax.random.uniform(restored["key"][0]), jax.random.uniform(key[0]))


def test_a_key_where_the_template_has_an_array_names_both_sides(tmp_path: Path) -> None:
    path = gpuckpt_jax.save(tmp_path / "k", {"key": jax.random.key(1)})
    with pytest.raises(gpuckpt.InvalidArgumentError, match=r"pytree leaf \"\['key'\]\" \(\(root\).tree.key\): the "
                                                          r"checkpoint holds a typed PRNG key, the template a uint32"):
        gpuckpt_jax.restore(path, {"key": jnp.zeros(2, jnp.uint32)})


def test_abstract_templates_land_on_their_sharding(tmp_path: Path) -> None:
    saved = {"w": jnp.arange(8.0).reshape(2, 4), "step": jnp.int32(5)}
    path = gpuckpt_jax.save(tmp_path / "a", saved)
    device = jax.devices()[0]
    sharding = jax.sharding.SingleDeviceSharding(device)
    template = {"w": jax.ShapeDtypeStruct((2, 4), jnp.float32, sharding=sharding),
                "step": jax.ShapeDtypeStruct((), jnp.int32)}
    restored, status = gpuckpt_jax.restore(path, template)
    status.assert_consumed()
    assert isinstance(restored["w"], jax.Array) and restored["w"].sharding == sharding
    np.testing.assert_array_equal(restored["w"], saved["w"])
    assert int(restored["step"]) == 5
    with pytest.raises(gpuckpt.InvalidArgumentError, match=r"pytree leaf \"\['w'\]\" \(\(root\).tree.w\): the "
                                                          r"checkpoint holds shape \[2, 4\], the template shape \[4, 2\]"):
        gpuckpt_jax.restore(path, {"w": jax.ShapeDtypeStruct((4, 2), jnp.float32), "step": template["step"]})


def test_an_abstract_template_cannot_be_saved(tmp_path: Path) -> None:
    with pytest.raises(gpuckpt.InvalidArgumentError, match=r"\(root\).tree.w \(pytree leaf \"\['w'\]\"\) is a "
                                                          r"jax.ShapeDtypeStruct, an abstract template"):
        gpuckpt_jax.save(tmp_path / "a", {"w": jax.ShapeDtypeStruct((2,), jnp.float32)})


def test_casts_to_the_template_dtype_only_when_asked(tmp_path: Path) -> None:
    path = gpuckpt_jax.save(tmp_path / "c", {"w": jnp.array([1.5, -2.25], jnp.float32)})
    template = {"w": jnp.zeros(2, jnp.bfloat16)}
    with pytest.raises(gpuckpt.InvalidArgumentError, match=r"the checkpoint holds float32, the template bfloat16"):
        gpuckpt_jax.restore(path, template)
    restored, status = gpuckpt_jax.restore(path, template, cast=True)
    status.assert_consumed()
    assert restored["w"].dtype == jnp.bfloat16 and restored["w"].tolist() == [1.5, -2.25]
    restored, _ = gpuckpt_jax.restore(path, {"w": jax.ShapeDtypeStruct((2,), jnp.float16)}, cast=True)
    assert restored["w"].dtype == jnp.float16


def test_a_python_int_step_takes_the_saved_int32(tmp_path: Path) -> None:
    path = gpuckpt_jax.save(tmp_path / "s", {"step": jnp.int32(12)})
    restored, status = gpuckpt_jax.restore(path, {"step": 0})
    status.assert_consumed()
    assert restored["step"] == 12 and type(restored["step"]) is int


def test_optax_like_named_tuple_states(tmp_path: Path) -> None:
    from typing import NamedTuple

    class AdamState(NamedTuple):
        count: jax.Array
        mu: dict
        nu: dict

    state = (AdamState(jnp.int32(3), {"w": jnp.ones(2)}, {"w": jnp.full(2, 0.5)}), ())
    path = gpuckpt_jax.save(tmp_path / "o", state, name="opt_state")
    assert "opt_state/0/mu/w/.ATTRIBUTES/VARIABLE_VALUE" in dict(gpuckpt.list_variables(path))
    template = (AdamState(jnp.int32(0), {"w": jnp.zeros(2)}, {"w": jnp.zeros(2)}), ())
    restored, status = gpuckpt_jax.restore(path, template, name="opt_state")
    status.assert_consumed()
    assert isinstance(restored[0], AdamState) and int(restored[0].count) == 3
    np.testing.assert_array_equal(restored[0].nu["w"], [0.5, 0.5])


def test_a_flax_train_state_with_a_key(tmp_path: Path) -> None:
    optax = pytest.importorskip("optax")
    pytest.importorskip("flax")
    from flax.training import train_state

    class State(train_state.TrainState):
        key: jax.Array

    def make(seed: int, step: int | None = None) -> State:
        params = {"w": jax.random.normal(jax.random.key(seed), (3,))}
        state = State.create(apply_fn=lambda p, x: x @ p["w"], params=params, tx=optax.adamw(1e-2),
                             key=jax.random.key(seed))
        return state if step is None else state.replace(step=step)

    state = make(0)
    grads = {"w": jnp.ones(3)}
    state = state.apply_gradients(grads=grads).apply_gradients(grads=grads)
    path = gpuckpt.Checkpoint(state=gpuckpt_jax.PyTree(state)).write(tmp_path / "t")
    holder = gpuckpt_jax.PyTree(make(1, step=0))  # a fresh state: step is a Python int
    gpuckpt.Checkpoint(state=holder).read(path).assert_consumed()
    restored = holder.tree
    assert int(restored.step) == 2 and restored.tx is not None
    np.testing.assert_array_equal(restored.params["w"], state.params["w"])
    assert jnp.array_equal(jax.random.key_data(restored.key), jax.random.key_data(state.key))
    again = restored.apply_gradients(grads=grads)
    np.testing.assert_array_equal(again.params["w"], state.apply_gradients(grads=grads).params["w"])
