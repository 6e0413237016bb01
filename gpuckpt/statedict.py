"""Objects with ``state_dict()`` and ``load_state_dict()`` as trackables: schedulers, scalers, data loaders.

Any object whose class defines both methods (an LR scheduler, ``torch.amp.GradScaler``,
torchdata's ``StatefulDataLoader``, a user class) takes part in a checkpoint as it is:
``Checkpoint(scheduler=scheduler, scaler=scaler, loader=loader)``. Its state dict is split in two:

* tensors and NumPy arrays (at any depth) are saved as variables, children named by their path
  in the state dict joined with ``/`` (``loader/_sampler_iter_state.Ssampler_iter_state.Sgenerator/...``,
  ``/`` being escaped as ``.S`` in keys), so TensorFlow and ``gpuckpt inspect`` see them;
* everything else (numbers, strings, bools, None, bytes, lists, tuples and dicts of them) is saved
  in the node's ``py_state`` attribute, typed JSON (``gpuckpt.pystate``), with each tensor's place
  marked. Anything else in the state dict is an ``InvalidArgumentError`` naming its path.

A restore calls ``load_state_dict`` once, with the whole saved state dict rebuilt (tensors as
CPU tensors, or NumPy arrays where NumPy arrays were saved), as soon as every value of the node
has been read. Tensors that the live object's state dict lacks (a data loader that has not been
iterated yet) are created from the checkpoint, after their entry is checked against the bytes
present.
"""

from __future__ import annotations

import sys
import weakref
from collections.abc import Mapping
from typing import Any

import numpy as np

from . import pystate
from .errors import DataLossError, InvalidArgumentError
from .trackable.base import DeferredRestoration, Trackable
from .trackable.variable import VARIABLE_VALUE

__all__ = ["StateDictTrackable", "adapt", "has_state_dict", "trackable"]

_ADAPTERS: dict[int, "StateDictTrackable"] = {}


def has_state_dict(value: object) -> bool:
    """True when ``value``'s class defines callable ``state_dict`` and ``load_state_dict``."""
    kind = type(value)
    return callable(getattr(kind, "state_dict", None)) and callable(getattr(kind, "load_state_dict", None))


def adapt(value: object) -> "StateDictTrackable | None":
    """The trackable of an object with ``state_dict()``/``load_state_dict()`` (the same one each time), else None."""
    if isinstance(value, (type, Trackable)) or not has_state_dict(value):
        return None
    return trackable(value)


def trackable(obj: Any) -> "StateDictTrackable":
    """The one adapter of ``obj``, kept for as long as ``obj`` lives (it is referenced weakly)."""
    cached = _ADAPTERS.get(id(obj))
    if cached is not None and cached._ref() is obj:
        return cached
    try:
        ref = weakref.ref(obj)
    except TypeError as exc:
        raise InvalidArgumentError(f"cannot checkpoint a {type(obj).__name__} through its state_dict(): it cannot "
                                   "be referenced weakly (a class with __slots__ needs '__weakref__')") from exc
    adapter = StateDictTrackable(ref)
    _ADAPTERS[id(obj)] = adapter
    weakref.finalize(obj, _ADAPTERS.pop, id(obj), None)
    return adapter


def _tensor_kind(value: Any) -> str | None:
    """"torch" for a torch tensor, "numpy" for a NumPy array, None for anything else."""
    if isinstance(value, np.ndarray):
        return "numpy"
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(value, torch.Tensor):
        return "torch"
    return None


class _Snapshot:
    """One call of ``state_dict()``: the JSON of its plain part and its tensors by child name."""

    def __init__(self, state: Any, where: str):
        self.tensors: dict[str, Any] = {}

        def extra(value: Any, path: str) -> Any:
            kind = _tensor_kind(value)
            if kind is None:
                return None
            name = path.strip("/") or "value"
            if name in self.tensors:
                raise InvalidArgumentError(f"{where}: two tensors of the state dict are both named {name!r}")
            self.tensors[name] = value
            device = str(value.device) if kind == "torch" else "cpu"
            return {"tensor": [name, kind, device]}

        self.encoded = pystate.encode(state, "", _PathNamer(extra))


class _PathNamer:
    """Turns the encoder's paths (``[key]`` chains) into ``/``-joined child names for tensors."""

    def __init__(self, extra: Any):
        self._extra = extra

    def __call__(self, value: Any, path: str) -> Any:
        return self._extra(value, _slash_path(path))


def _slash_path(path: str) -> str:
    """``['a']['b'][0]`` → ``a/b/0``."""
    parts, rest = [], path
    while rest.startswith("["):
        end = rest.index("]")
        token = rest[1:end]
        if len(token) >= 2 and token[0] == token[-1] and token[0] in "'\"":
            token = token[1:-1]
        parts.append(token)
        rest = rest[end + 1:]
    return "/".join(parts)


class StateDictTrackable(Trackable):
    """The checkpoint node of one object with ``state_dict()``/``load_state_dict()``; see the module docstring."""

    def __init__(self, ref: "weakref.ref"):
        self._ref = ref
        self._self_path = ""
        self._self_snapshot: _Snapshot | None = None
        self._self_holders: dict[str, _StateTensor] = {}
        self._self_pending: Any = None  # the restored JSON, waiting for its tensors
        self._self_arrived: dict[str, Any] = {}
        self._self_needed: set[str] = set()

    @property
    def obj(self) -> Any:
        obj = self._ref()
        if obj is None:
            raise InvalidArgumentError("the object behind a gpuckpt state_dict trackable no longer exists")
        return obj

    def _where(self) -> str:
        return f"{self._self_path or type(self.obj).__name__} ({type(self.obj).__name__}.state_dict())"

    def _checkpoint_validate(self, path: str) -> None:
        """Record this node's path for messages and check the state dict can be saved (called before a save)."""
        self._self_path = path
        self._take_snapshot()

    def _take_snapshot(self) -> _Snapshot:
        try:
            state = self.obj.state_dict()
        except Exception as exc:
            raise InvalidArgumentError(f"{self._where()} failed: {exc!r}") from exc
        try:
            snapshot = _Snapshot(state, self._where())
        except InvalidArgumentError as exc:
            raise InvalidArgumentError(f"{self._where()}: {exc}", key=exc.key) from exc
        self._self_snapshot = snapshot
        return snapshot

    def _trackable_children(self) -> list[tuple[str, Trackable]]:
        snapshot = self._take_snapshot()
        for name, tensor in snapshot.tensors.items():
            holder = self._self_holders.get(name)
            if holder is None:
                holder = self._self_holders[name] = _StateTensor(self, name)
            holder.value = tensor
        return [(name, self._self_holders[name]) for name in snapshot.tensors]

    def _lookup_dependency(self, name: str) -> Trackable | None:
        return self._self_holders.get(name)

    def _serialize_tensors(self) -> Mapping[str, Any]:
        snapshot = self._self_snapshot or self._take_snapshot()
        self._self_snapshot = None
        return {pystate.PY_STATE: snapshot.encoded}

    # -- restoring ----------------------------------------------------------------------

    def _restore_tensors(self, values: Mapping[str, Any]) -> None:
        names: list[str] = []

        def placeholder(body: Any) -> Any:
            names.append(body[0])
            return _Placeholder(*body)

        self._self_pending = pystate.decode(values[pystate.PY_STATE], f"{self._where()} {pystate.PY_STATE}",
                                            placeholder)
        self._self_needed = set(names)
        self._self_arrived = {k: v for k, v in self._self_arrived.items() if k in self._self_needed}
        self._maybe_load()

    def _arrived(self, name: str, value: Any) -> None:
        self._self_arrived[name] = value
        self._maybe_load()

    def _maybe_load(self) -> None:
        if self._self_pending is None or not self._self_needed <= set(self._self_arrived):
            return
        state = _fill(self._self_pending, self._self_arrived)
        self._self_pending, self._self_arrived = None, {}
        try:
            self.obj.load_state_dict(state)
        except Exception as exc:
            raise InvalidArgumentError(f"{type(self.obj).__name__}.load_state_dict() refused the state restored "
                                       f"for {self._self_path or 'it'}: {exc!r}") from exc

    def _defer_dependency(self, name: str, restoration: DeferredRestoration) -> None:
        """A saved tensor the live state dict lacks: hold it from the checkpoint and restore it at once."""
        specs = validated_specs(restoration)
        if VARIABLE_VALUE not in specs:
            return  # not kept (it could never apply; holding it would keep the session alive): reported as unused
        holder = self._self_holders[name] = _StateTensor(self, name)
        dtype, shape = specs[VARIABLE_VALUE]
        holder.value = np.broadcast_to(np.zeros((), dtype.numpy), shape)  # a spec, not an allocation
        restoration.apply(holder)

    def __repr__(self) -> str:
        obj = self._ref()
        return f"<gpuckpt state_dict trackable of {type(obj).__name__ if obj is not None else 'a dead object'}>"


class _Placeholder:
    """Where a tensor goes back into the rebuilt state dict, and what kind of tensor it was."""

    def __init__(self, name: str, kind: str, device: str):
        self.name, self.kind, self.device = name, kind, device

    def rebuild(self, array: Any) -> Any:
        if self.kind == "torch":
            from .torch import tensor_from_checkpoint

            return tensor_from_checkpoint(array, self.device)
        return np.array(array)


def _fill(value: Any, tensors: Mapping[str, Any]) -> Any:
    if isinstance(value, _Placeholder):
        return value.rebuild(tensors[value.name])
    if type(value) is list:
        return [_fill(v, tensors) for v in value]
    if type(value) is tuple:
        return tuple(_fill(v, tensors) for v in value)
    if type(value) is dict:
        return {k: _fill(v, tensors) for k, v in value.items()}
    return value


class _StateTensor(Trackable):
    """One tensor of a state dict, saved as a variable; on restore it hands its value to its owner."""

    def __init__(self, owner: StateDictTrackable, name: str):
        self._owner = owner
        self._name = name
        self.value: Any = None

    def _serialize_tensors(self) -> Mapping[str, Any]:
        if _tensor_kind(self.value) == "torch":
            from .torch import tensor_view

            return {VARIABLE_VALUE: tensor_view(self.value)}
        return {VARIABLE_VALUE: self.value}

    def _restore_tensors(self, values: Mapping[str, Any]) -> None:
        self._owner._arrived(self._name, values[VARIABLE_VALUE])

    def _checkpoint_full_name(self) -> str:
        return self._name

    def __repr__(self) -> str:
        return f"<gpuckpt state_dict tensor {self._name!r}>"


def validated_specs(restoration: DeferredRestoration) -> dict[str, tuple[Any, tuple[int, ...]]]:
    """The saved dtype and shape of each attribute, after proving the bytes they need are in the checkpoint.

    Nothing may be allocated to a declared shape before this: a forged index can declare any shape.
    Entries were bounds-checked against their data files when the checkpoint was opened
    (``storage.files``); this checks that each one stores the bytes its shape needs.
    """
    matching = getattr(restoration, "matching", None)
    node_id = getattr(restoration, "node_id", None)
    if matching is None or node_id is None:
        return dict(restoration.saved_specs())
    out = {}
    for attribute in matching.saved.nodes[node_id].attributes:
        key = attribute.checkpoint_key
        entry = matching.entries.get(key)
        if entry is None:
            raise DataLossError(f"checkpoint {matching.prefix} lists key {key!r} in its object graph but has no "
                                "such tensor", path=matching.prefix, key=key)
        if not entry.dtype.is_string:
            needed = entry.num_elements * entry.dtype.itemsize
            if not entry.is_sliced and entry.size != needed:
                raise DataLossError(f"checkpoint {matching.prefix}: key {key!r} declares shape {list(entry.shape)} "
                                    f"({needed} bytes of {entry.dtype.name}) but stores {entry.size} bytes",
                                    path=matching.prefix, key=key)
        out[attribute.name] = (entry.dtype, tuple(entry.shape))
    return out
