"""Small models and an optimizer-like trackable with slots, shared by the API tests."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

import gpuckpt
from gpuckpt.trackable import AutoTrackable, SlotVariable


class Dense(gpuckpt.Module):
    """kernel and bias, created in the constructor."""

    def __init__(self, n_in: int, n_out: int, seed: int = 0):
        super().__init__()
        rng = np.random.default_rng(seed)
        self.kernel = gpuckpt.Variable(rng.standard_normal((n_in, n_out)).astype(np.float32))
        self.bias = gpuckpt.Variable(np.zeros(n_out, np.float32))


class LazyDense(gpuckpt.Module):
    """Like Keras layers: variables are created on the first call, not in the constructor."""

    def __init__(self, n_out: int):
        super().__init__()
        self._n_out = n_out  # configuration, not checkpoint state: a public plain attribute would be refused at save

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if not hasattr(self, "kernel"):
            self.kernel = gpuckpt.Variable(np.ones((x.shape[-1], self._n_out), np.float32))
            self.bias = gpuckpt.Variable(np.zeros(self._n_out, np.float32))
        return x @ self.kernel.numpy() + self.bias.numpy()


class Adam(AutoTrackable):
    """A TF1-style Adam: ``beta1_power``/``beta2_power`` children and ``m``/``v`` slots per variable.

    Slots are created on the first ``apply_gradients`` (so a restore defers their values),
    and the optimizer calls ``_dependencies_changed`` then, as the protocol asks.
    """

    def __init__(self, learning_rate: float = 0.1, beta1: float = 0.9, beta2: float = 0.999):
        self._self_hyper = (learning_rate, beta1, beta2)
        self._self_slots: dict[int, tuple[gpuckpt.Variable, dict[str, gpuckpt.Variable]]] = {}
        self.beta1_power = gpuckpt.Variable(np.float32(beta1), name="beta1_power")
        self.beta2_power = gpuckpt.Variable(np.float32(beta2), name="beta2_power")

    def get_slot(self, var: gpuckpt.Variable, name: str) -> gpuckpt.Variable:
        return self._self_slots[id(var)][1][name]

    def _create_slots(self, variables: Iterable[gpuckpt.Variable]) -> None:
        created = False
        for var in variables:
            if id(var) not in self._self_slots:
                zeros = np.zeros(var.shape, var.dtype.numpy)
                self._self_slots[id(var)] = (var, {
                    "m": gpuckpt.Variable(zeros, name=f"{var.name}/Adam"),
                    "v": gpuckpt.Variable(zeros, name=f"{var.name}/Adam_1")})
                created = True
        if created:
            self._dependencies_changed()

    def apply_gradients(self, grads_and_vars: Sequence[tuple[np.ndarray, gpuckpt.Variable]]) -> None:
        lr, beta1, beta2 = self._self_hyper
        self._create_slots(var for _, var in grads_and_vars)
        b1p, b2p = float(self.beta1_power.numpy()), float(self.beta2_power.numpy())
        step = lr * np.sqrt(1 - b2p) / (1 - b1p)
        for grad, var in grads_and_vars:
            m, v = self.get_slot(var, "m"), self.get_slot(var, "v")
            m.assign((beta1 * m.numpy() + (1 - beta1) * grad).astype(var.dtype.numpy))
            v.assign((beta2 * v.numpy() + (1 - beta2) * grad * grad).astype(var.dtype.numpy))
            var.assign_sub((step * m.numpy() / (np.sqrt(v.numpy()) + 1e-8)).astype(var.dtype.numpy))
        self.beta1_power.assign(np.float32(b1p * beta1))
        self.beta2_power.assign(np.float32(b2p * beta2))

    def _slot_variables(self) -> list[SlotVariable]:
        return [SlotVariable(name, var, slot)
                for name in ("m", "v")
                for var, slots in self._self_slots.values() for slot_name, slot in slots.items()
                if slot_name == name]


class Model(gpuckpt.Module):
    """Two dense layers in a list and a step counter."""

    def __init__(self):
        super().__init__()
        self.layers = [Dense(3, 4, seed=1), Dense(4, 2, seed=2)]
        self.step = gpuckpt.Variable(np.int64(0))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        for layer in self.layers:
            x = x @ layer.kernel.numpy() + layer.bias.numpy()
        return x

    def train_step(self, optimizer: Adam) -> None:
        grads = [(np.full(v.shape, 0.5, np.float32), v) for v in self.trainable_variables
                 if v.dtype.name == "float32"]
        optimizer.apply_gradients(grads)
        self.step.assign_add(1)
