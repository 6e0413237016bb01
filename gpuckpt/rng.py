"""Random number generator state as one trackable: ``Checkpoint(rng=gpuckpt.rng.RNGState())``.

``RNGState`` saves and restores, at the moment of the save and the restore:

* Python's ``random`` module generator (``random.getstate()``), as Python state;
* NumPy's legacy global generator (``np.random.get_state()``): its 624-word key as a uint32
  variable, the rest as Python state; plus any ``np.random.Generator`` passed in ``numpy=``;
* PyTorch, when torch has been imported: the CPU generator (``torch.get_rng_state()``) and the
  generator of every CUDA device (``torch.cuda.get_rng_state_all()``), as uint8 variables, plus
  any ``torch.Generator`` passed in ``torch=``.

Restoring onto a machine with a different number of CUDA devices is an error naming both
counts. JAX keys are values of the training state, not global state: put them in the pytree
(``gpuckpt.jax`` saves typed keys as their key data with their implementation).
"""

from __future__ import annotations

import random
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .errors import InvalidArgumentError
from .statedict import trackable as state_dict_trackable
from .trackable.base import Trackable

__all__ = ["RNGState"]


class RNGState(Trackable):
    """The process's random generators (Python, NumPy, torch CPU and CUDA), saved and restored together.

    ``numpy`` and ``torch`` take extra generator objects (``np.random.Generator``,
    ``torch.Generator``) saved by position. ``include`` limits the global generators saved
    (any of ``"python"``, ``"numpy"``, ``"torch"``, ``"cuda"``).
    """

    def __init__(self, *, numpy: Sequence[Any] = (), torch: Sequence[Any] = (),
                 include: Sequence[str] = ("python", "numpy", "torch", "cuda")):
        unknown = set(include) - {"python", "numpy", "torch", "cuda"}
        if unknown:
            raise InvalidArgumentError(f"RNGState(include=...) got unknown generators {sorted(unknown)}")
        self._holder = _Generators(tuple(numpy), tuple(torch), tuple(include))

    def _trackable_children(self) -> list[tuple[str, Trackable]]:
        return [("generators", state_dict_trackable(self._holder))]

    def __repr__(self) -> str:
        return f"<gpuckpt.rng.RNGState {list(self._holder.include)}>"


class _Generators:
    """The generators behind an ``RNGState``, with the ``state_dict()`` protocol gpuckpt saves."""

    def __init__(self, numpy: tuple, torch: tuple, include: tuple[str, ...]):
        self.numpy, self.torch, self.include = numpy, torch, include

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {}
        if "python" in self.include:
            state["python"] = random.getstate()
        if "numpy" in self.include:
            name, keys, pos, has_gauss, cached = np.random.get_state()
            state["numpy"] = {"name": name, "keys": np.asarray(keys, np.uint32), "pos": int(pos),
                              "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}
        if self.numpy:
            state["numpy_generators"] = [g.bit_generator.state for g in self.numpy]
        torch = sys.modules.get("torch")
        if torch is not None:
            if "torch" in self.include:
                state["torch"] = torch.get_rng_state()
            if "cuda" in self.include and torch.cuda.is_available():
                state["cuda"] = list(torch.cuda.get_rng_state_all())
            if self.torch:
                state["torch_generators"] = [g.get_state() for g in self.torch]
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if "python" in state:
            version, internal, gauss = state["python"]
            random.setstate((version, tuple(internal), gauss))
        if "numpy" in state:
            s = state["numpy"]
            np.random.set_state((s["name"], np.asarray(s["keys"], np.uint32), s["pos"], s["has_gauss"],
                                 s["cached_gaussian"]))
        saved = state.get("numpy_generators", [])
        _same_count("np.random.Generator objects", len(saved), len(self.numpy))
        for generator, value in zip(self.numpy, saved):
            generator.bit_generator.state = value
        torch_module = sys.modules.get("torch")
        if ("cuda" in self.include and "cuda" not in state and torch_module is not None
                and torch_module.cuda.is_available()):
            _same_count("CUDA devices", 0, torch_module.cuda.device_count())  # else their generators stay as they are
        if "torch" in state or "cuda" in state or "torch_generators" in state:
            import torch

            if "torch" in state:
                torch.set_rng_state(state["torch"].cpu())
            if "cuda" in state:
                devices = torch.cuda.device_count() if torch.cuda.is_available() else 0
                _same_count("CUDA devices", len(state["cuda"]), devices)
                torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
            saved = state.get("torch_generators", [])
            _same_count("torch.Generator objects", len(saved), len(self.torch))
            for generator, value in zip(self.torch, saved):
                generator.set_state(value.cpu())


def _same_count(what: str, saved: int, live: int) -> None:
    if saved != live:
        hint = " (RNGState(include=...) without 'cuda' leaves CUDA generators out)" if what == "CUDA devices" else ""
        raise InvalidArgumentError(f"the checkpoint holds the random state of {saved} {what}, this process has "
                                   f"{live}{hint}")
