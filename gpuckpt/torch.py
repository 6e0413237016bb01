"""PyTorch adapter: checkpoint ``nn.Module`` and ``torch.optim.Optimizer`` state where it lives.

Install with ``pip install 'gpuckpt[torch]'``. Importing this module imports torch; nothing
else in gpuckpt does, and the adapter is loaded only once torch has been imported.

``gpuckpt.Checkpoint(model=torch_model, optimizer=torch_optimizer)`` works as it does for
gpuckpt objects: modules and optimizers passed to a Checkpoint, assigned to a
``gpuckpt.Module`` or put in tracked containers become trackable through :func:`adapt`.

* A module's dependencies are its parameters, then its persistent buffers, then its
  sub-modules, each named by its attribute (the ``state_dict`` order). Keys read
  ``model/encoder/0/weight/.ATTRIBUTES/VARIABLE_VALUE``; each tensor's ``full_name`` is its
  ``state_dict`` key (``encoder.0.weight``). Shared parameters and modules are aliases.
* Tensors are saved without copies: CPU tensors as NumPy views of their memory, CUDA tensors
  through ``__cuda_array_interface__`` by the GPU engine. They are restored in place
  (``Tensor.copy_``), on the device they are on. bfloat16 and float8 tensors, which NumPy
  and the CUDA array interface lack, are viewed as integers of their width (on the CPU, then
  reinterpreted as ``ml_dtypes`` types; on CUDA, on the device: ``arrays.RetypedDeviceArray``),
  so no CUDA tensor is copied through the host.
* An optimizer's per-parameter state (Adam: ``step``, ``exp_avg``, ``exp_avg_sq``) is saved
  as slot variables of the parameter it belongs to, as TensorFlow saves optimizer slots:
  ``model/w/.OPTIMIZER_SLOT/optimizer/exp_avg/.ATTRIBUTES/VARIABLE_VALUE``. Each param
  group's numeric hyperparameters (``lr``, ``betas``, ...) are saved under
  ``optimizer/param_groups/<i>/.ATTRIBUTES/<name>``, so learning-rate schedules resume.
* State the optimizer has not created yet (a fresh optimizer has none before its first
  ``step()``) is created from the checkpoint when it is restored, with the saved dtype and
  shape on the parameter's device (``step`` on the CPU unless the group is ``capturable``
  or ``fused``), the placement ``Optimizer.load_state_dict`` gives it.

* Wrappers are transparent: a ``torch.compile``d module (``OptimizedModule``, whose state dict
  keys start ``_orig_mod.``) and a ``DistributedDataParallel``/``DataParallel`` module
  (``module.``) are saved and restored as the module they wrap, so a checkpoint moves freely
  between the wrapped and the plain model, either way round.
* Restores are strict (see ``gpuckpt.strict``): a checkpoint that lacks a tensor of a torch
  module or optimizer, or holds one the live objects lack, fails before anything is assigned,
  listing every missing and unexpected key, as ``load_state_dict(strict=True)`` does.
* An optimizer's parameters must all be reachable from the checkpoint (checkpoint the model with
  its optimizer): saving one without them is an error rather than a checkpoint without slots.

Only tensor optimizer state is supported. DTensor (FSDP2) parameters are refused with an error
naming the parameter.
"""

from __future__ import annotations

import numbers
import weakref
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import ml_dtypes
import numpy as np

from ._deps import import_optional
from .arrays import RetypedDeviceArray, as_device_array, is_device_array
from .distributed import torch_dtensor as _dtensor
from .errors import InvalidArgumentError
from .format import dtypes
from .statedict import validated_specs
from .trackable.base import DeferredRestoration, ForeignAdapter, SlotVariable, Trackable
from .trackable.variable import VARIABLE_VALUE

if TYPE_CHECKING:
    import torch
else:
    torch = import_optional("torch", extra="torch")

__all__ = ["TorchModule", "TorchOptimizer", "TorchTensor", "adapt", "trackable"]

# dtypes NumPy lacks: (integer dtype of the same width to view through, ml_dtypes type)
_VIEWED = {
    torch.bfloat16: (torch.int16, ml_dtypes.bfloat16),
    torch.float8_e4m3fn: (torch.uint8, ml_dtypes.float8_e4m3fn),
    torch.float8_e5m2: (torch.uint8, ml_dtypes.float8_e5m2),
}
_VIEWED_BY_NUMPY = {np.dtype(ml): (through, dtype) for dtype, (through, ml) in _VIEWED.items()}

# One adapter per torch object, for as long as the object lives, keyed by id(): identity is
# what makes shared parameters aliases and lets optimizer slots name their parameter. Entries
# leave with their object (weakref.finalize); adapters hold only weak references, so the
# cache keeps nothing alive, and nothing is stored on the user's objects (torch.save of a
# state_dict would pickle it).
_ADAPTERS: dict[int, "TorchModule | TorchOptimizer | TorchTensor"] = {}


def adapt(value: object) -> "Trackable | None":
    """The trackable for a torch ``nn.Module`` or ``Optimizer`` (the same one each time), else None.

    Called by gpuckpt for every candidate dependency once torch is imported; plain tensors
    are not adapted implicitly (use :func:`trackable` for a tensor to save as a variable).
    """
    if isinstance(value, (torch.nn.Module, torch.optim.Optimizer)):
        return trackable(value)
    return None


def unwrap(module: "torch.nn.Module") -> "torch.nn.Module":
    """The module a ``torch.compile`` or (Distributed)DataParallel wrapper holds, at any depth; else itself."""
    while True:
        inner = _wrapped(module)
        if inner is None:
            return module
        module = inner


def _wrapped(module: Any) -> "torch.nn.Module | None":
    inner = module.__dict__.get("_orig_mod") if type(module).__name__ == "OptimizedModule" else None
    if inner is None and isinstance(module, (torch.nn.DataParallel, torch.nn.parallel.DistributedDataParallel)):
        inner = module.module
    if inner is None:
        inner = module._modules.get("_orig_mod") if type(module).__name__ == "OptimizedModule" else None
    return inner if isinstance(inner, torch.nn.Module) else None


def trackable(obj: Any, full_name: str = "") -> "TorchModule | TorchOptimizer | TorchTensor":
    """The adapter of a module, optimizer or tensor; ``full_name`` names a tensor's values
    (its first adapter's name is kept)."""
    if isinstance(obj, torch.nn.Module):
        obj = unwrap(obj)
    cached = _ADAPTERS.get(id(obj))
    if cached is not None and cached._ref() is obj:
        return cached
    if isinstance(obj, torch.nn.Module):
        adapter: TorchModule | TorchOptimizer | TorchTensor = TorchModule(obj, full_name)
    elif isinstance(obj, torch.optim.Optimizer):
        adapter = TorchOptimizer(obj)
    elif isinstance(obj, torch.Tensor):
        adapter = TorchTensor(obj, full_name)
    else:
        raise InvalidArgumentError(f"gpuckpt.torch adapts nn.Module, Optimizer and Tensor objects, not "
                                   f"{type(obj).__name__}")
    _ADAPTERS[id(obj)] = adapter
    weakref.finalize(obj, _ADAPTERS.pop, id(obj), None)
    return adapter


class _Adapter(ForeignAdapter):
    """A trackable standing for one torch object, which it references weakly."""

    framework = "torch"

    def _defer_dependency(self, name: str, restoration: DeferredRestoration) -> None:
        """Not kept: torch objects never announce new dependencies, so it could never apply, and holding it
        (in the adapter cache, through the session, to the checkpoint's root) would keep the user's objects
        alive and silence the unused-values warning. The value stays unresolved and is reported."""


# -- tensors ----------------------------------------------------------------------------


class TorchTensor(_Adapter):
    """One tensor (a parameter, buffer or optimizer state) saved as a variable (``VARIABLE_VALUE``)."""

    def __init__(self, tensor: "torch.Tensor", full_name: str = ""):
        super().__init__(tensor)
        self._full_name = full_name
        self._last: tuple[Any, weakref.ref] | None = None  # (what the view was of, the view), see _view

    @property
    def tensor(self) -> "torch.Tensor":
        return self.obj

    _values_are_destinations = True  # the view is of the tensor's own memory (tensor_view raises for other devices)

    def _serialize_tensors(self) -> Mapping[str, Any]:
        return {VARIABLE_VALUE: self._view()}

    def _restore_destinations(self) -> Mapping[str, Any]:
        """The tensor's own memory (a DTensor's local shard), for restores that read in place: a NumPy
        view of a CPU tensor, or the CUDA tensor itself (bfloat16/float8: its integer view on the device)."""
        t = _dtensor.local_tensor(self.tensor, self._full_name)
        return {VARIABLE_VALUE: self._view(t)} if t.is_cpu or t.is_cuda else {}

    def _view(self, t: "torch.Tensor | None" = None) -> Any:
        """``tensor_view`` of ``t``, the (local) tensor. A save or restore asks for it several times per
        tensor, so the last view is handed out again while something still holds it (it is kept only
        weakly, so no memory outlives its users) and the tensor still has the same memory, layout, dtype
        and type."""
        if t is None:
            t = _dtensor.local_tensor(self.tensor, self._full_name)
        of = (t.data_ptr(), t.is_cuda, t.dtype, type(t), t.shape, t.stride())
        last = self._last
        if last is not None and last[0] == of:
            view = last[1]()
            if view is not None:
                return view
        view = tensor_view(t, self._full_name)
        try:
            self._last = (of, weakref.ref(view))
        except TypeError:  # a view that takes no weak reference is made afresh each time
            self._last = None
        return view

    def _restore_tensors(self, values: Mapping[str, Any]) -> None:
        copy_into(_dtensor.local_tensor(self.tensor, self._full_name), values[VARIABLE_VALUE])

    def _checkpoint_layout(self) -> Any:
        """A DTensor's block of its global tensor (``gpuckpt.distributed``), else replicated."""
        return _dtensor.layout_of_tensor(self.tensor, self._full_name)

    def _checkpoint_full_name(self) -> str:
        return self._full_name

    def __repr__(self) -> str:
        t = self.tensor
        return (f"<gpuckpt.torch.TorchTensor {self._full_name!r} shape={tuple(t.shape)} dtype={t.dtype} "
                f"device={t.device}>")


def _refuse_subclasses(tensor: "torch.Tensor", name: str = "") -> None:
    """DTensor (FSDP2) and other tensor subclasses have no single local buffer gpuckpt can save."""
    kind = type(tensor)
    if kind is torch.Tensor or kind is torch.nn.Parameter:
        return
    data = tensor.data if isinstance(tensor, torch.nn.Parameter) else tensor
    if type(data) is torch.Tensor:
        return
    what = "a DTensor (FSDP2 / tensor parallel)" if type(data).__name__ == "DTensor" else f"a {type(data).__name__}"
    raise InvalidArgumentError(f"cannot checkpoint {name or 'a tensor'}: it is {what}, a tensor subclass; gpuckpt "
                               "saves plain CPU and CUDA tensors (DTensor support is not implemented yet)",
                               key=name or None)


def tensor_view(tensor: "torch.Tensor", name: str = "") -> Any:
    """What gpuckpt saves for ``tensor``: a NumPy view of a CPU tensor, the tensor itself on CUDA, or for
    a CUDA dtype the CUDA array interface cannot describe (bfloat16, float8), its integer view on the
    device saved as that dtype (``arrays.RetypedDeviceArray``).

    No copy is made, except for a non-contiguous CPU tensor (which the saver packs).
    """
    kind = type(tensor)
    if (kind is torch.nn.Parameter or kind is torch.Tensor) and tensor.is_cpu and tensor.dtype not in _VIEWED:
        return tensor.detach().numpy()  # the common case, decided without the checks below (one per tensor)
    _refuse_subclasses(tensor, name)
    t = tensor.detach()
    device = t.device.type
    if device == "meta":
        raise InvalidArgumentError(f"cannot checkpoint or restore {name or 'a tensor'} on the meta device: it has "
                                   "no storage; materialize the module first (module.to_empty(device=...)), then "
                                   "restore into it")
    if device not in ("cpu", "cuda"):
        raise InvalidArgumentError(f"cannot checkpoint a tensor on device {t.device}: gpuckpt saves CPU and "
                                   "CUDA tensors")
    viewed = _VIEWED.get(t.dtype)
    if viewed is None:
        return t if device == "cuda" else t.numpy()
    through, ml = viewed
    if device == "cuda":
        return RetypedDeviceArray(t.view(through), ml)
    return t.view(through).numpy().view(ml)


def copy_into(tensor: "torch.Tensor", value: Any) -> None:
    """Overwrite ``tensor`` in place with a restored value: a NumPy array, or a device array
    that the GPU engine filled (it has the tensor's dtype and shape already)."""
    destination = tensor.detach()
    if is_device_array(value):
        source = torch.as_tensor(as_device_array(value), device=destination.device)
    else:
        source = _from_numpy(np.asarray(value))
    destination.copy_(source)


def tensor_from_checkpoint(value: Any, device: str = "cpu") -> "torch.Tensor":
    """A new tensor holding a restored value, on ``device`` when that device exists here (else the CPU)."""
    if is_device_array(value):
        tensor = torch.as_tensor(as_device_array(value), device="cuda").clone()
    else:
        tensor = _from_numpy(np.array(value))
    target = torch.device(device)
    if target.type == "cuda" and not torch.cuda.is_available():
        target = torch.device("cpu")
    return tensor.to(target) if tensor.device != target else tensor


def _from_numpy(array: np.ndarray) -> "torch.Tensor":
    """A CPU tensor sharing ``array``'s memory (a copy only when the array is read-only)."""
    if not array.flags.writeable:
        array = array.copy()
    viewed = _VIEWED_BY_NUMPY.get(array.dtype)
    if viewed is None:
        return torch.from_numpy(array)
    through, dtype = viewed
    integer = array.view(np.int16 if through == torch.int16 else np.uint8)
    return torch.from_numpy(integer).view(dtype)


def _torch_dtype(dtype: dtypes.DType) -> "torch.dtype":
    """The torch dtype of a checkpoint dtype, through NumPy (and ``ml_dtypes`` for the viewed ones)."""
    viewed = _VIEWED_BY_NUMPY.get(np.dtype(dtype.numpy))
    if viewed is not None:
        return viewed[1]
    try:
        return torch.from_numpy(np.empty(0, dtype.numpy)).dtype
    except TypeError as exc:
        raise InvalidArgumentError(f"PyTorch has no dtype for the checkpoint's {dtype.name}") from exc


# -- modules ----------------------------------------------------------------------------


class TorchModule(_Adapter):
    """An ``nn.Module``: parameters, persistent buffers and sub-modules as named dependencies."""

    def __init__(self, module: "torch.nn.Module", prefix: str = ""):
        super().__init__(module)
        self._prefix = f"{prefix}." if prefix else ""  # state_dict key prefix of this module's tensors

    @property
    def module(self) -> "torch.nn.Module":
        return self.obj

    def _trackable_children(self) -> list[tuple[str, Trackable]]:
        # torch's registration dicts, in state_dict order; unlike named_children() they keep a
        # module registered under two names twice, which the graph records as an alias
        module = self.module
        skipped = module._non_persistent_buffers_set
        tensors = [*module._parameters.items(), *((n, b) for n, b in module._buffers.items() if n not in skipped)]
        children: list[tuple[str, Trackable]] = []
        append, known = children.append, _ADAPTERS.get
        for name, t in tensors:  # listed several times a save or restore: known adapters skip trackable()'s checks
            if t is None:
                continue
            adapter = known(id(t))
            if adapter is None or adapter._ref() is not t:
                adapter = trackable(t, self._prefix + name)
            append((name, adapter))
        children += [(name, trackable(m, self._prefix + name)) for name, m in module._modules.items() if m is not None]
        return children

    def __repr__(self) -> str:
        return f"<gpuckpt.torch.TorchModule of {type(self.module).__name__}>"


# -- optimizers -------------------------------------------------------------------------


class TorchOptimizer(_Adapter):
    """A ``torch.optim.Optimizer``: per-parameter state as slot variables, param groups as children."""

    @property
    def optimizer(self) -> "torch.optim.Optimizer":
        return self.obj

    def _trackable_children(self) -> list[tuple[str, Trackable]]:
        groups = self.__dict__.get("_param_groups")
        if groups is None:
            groups = self.__dict__["_param_groups"] = _ParamGroups(self.optimizer)
        return [("param_groups", groups)]

    def _params(self) -> list["torch.Tensor"]:
        return [p for group in self.optimizer.param_groups for p in group["params"]]

    def _group_of(self, param: "torch.Tensor") -> dict | None:
        """The param group updating ``param`` (None if none does), through an index rebuilt when groups change."""
        groups = self.optimizer.param_groups
        signature = tuple((id(g), len(g["params"])) for g in groups)
        cached = self.__dict__.get("_group_index")
        if cached is None or cached[0] != signature:
            cached = (signature, {id(p): g for g in groups for p in g["params"]})
            self.__dict__["_group_index"] = cached
        return cached[1].get(id(param))

    def _checkpoint_validate(self, path: str, reachable: "set[int]") -> None:
        """Before a save: every parameter must be in the checkpoint, or its state would be left out."""
        missing = [(g, i, p) for g, group in enumerate(self.optimizer.param_groups)
                   for i, p in enumerate(group["params"]) if id(trackable(p)) not in reachable]
        if missing:
            shown = ", ".join(f"param_groups[{g}]['params'][{i}] (shape {list(p.shape)})" for g, i, p in missing[:10])
            raise InvalidArgumentError(
                f"{path} ({type(self.optimizer).__name__}) updates {len(missing)} parameters that the checkpoint "
                f"does not hold: {shown}{', ...' if len(missing) > 10 else ''}; their optimizer state (slots such "
                "as exp_avg) would not be saved. Checkpoint the model with its optimizer: "
                "gpuckpt.Checkpoint(model=model, optimizer=optimizer)", key=path)

    def _slot_variables(self) -> Sequence[SlotVariable]:
        slots = []
        state = self.optimizer.state
        for param in self._params():
            original = trackable(param)
            for name, value in state.get(param, {}).items():
                if not isinstance(value, torch.Tensor):
                    raise InvalidArgumentError(
                        f"optimizer {type(self.optimizer).__name__} keeps {name!r} of parameter "
                        f"{original._checkpoint_full_name() or tuple(param.shape)} as a {type(value).__name__}; "
                        "gpuckpt.torch saves only tensor state")
                slot = trackable(value, f"{original._checkpoint_full_name()}/{name}")
                slots.append(SlotVariable(name, original, slot))
        return slots

    def _lookup_slot(self, original: Trackable, slot_name: str) -> Trackable | None:
        if not isinstance(original, TorchTensor):
            return None
        value = self.optimizer.state.get(original.tensor, {}).get(slot_name)
        if not isinstance(value, torch.Tensor):
            return None
        return trackable(value, f"{original._checkpoint_full_name()}/{slot_name}")

    def _defer_slot(self, slot_name: str, original: Trackable, restoration: DeferredRestoration) -> None:
        """Create state the optimizer has not made yet from the checkpoint, then restore it at once."""
        param = original.tensor if isinstance(original, TorchTensor) else None
        spec = validated_specs(restoration).get(VARIABLE_VALUE)  # proven against the bytes present first
        if param is None or spec is None or self._group_of(param) is None:
            return  # not kept, as in _Adapter._defer_dependency: it is reported as unresolved
        state = self.optimizer.state[param]
        state[slot_name] = self._new_state(param, slot_name, *spec)
        try:
            slot = self._lookup_slot(original, slot_name)
            assert slot is not None, "the state just created is a tensor, so its slot exists"
            restoration.apply(slot)
        except BaseException:
            del state[slot_name]
            raise

    def _new_state(self, param: "torch.Tensor", slot_name: str, dtype: dtypes.DType,
                   shape: tuple[int, ...]) -> "torch.Tensor":
        """Zeros of the saved dtype and shape where ``Optimizer.load_state_dict`` would put them."""
        group = self._group_of(param)
        assert group is not None, "_defer_slot creates state only for parameters in a group"
        on_param_device = slot_name != "step" or group.get("capturable") or group.get("fused")
        device = param.device if on_param_device else torch.device("cpu")
        if _dtensor.is_dtensor(param) and tuple(shape) == tuple(param.shape):  # sharded like its parameter
            return torch.zeros_like(param, dtype=_torch_dtype(dtype))
        return torch.zeros(shape, dtype=_torch_dtype(dtype), device=device)

    def __repr__(self) -> str:
        return f"<gpuckpt.torch.TorchOptimizer of {type(self.optimizer).__name__}>"


def _live_optimizer(ref: "weakref.ref[torch.optim.Optimizer]") -> "torch.optim.Optimizer":
    """The optimizer a weak reference points at, or the error ``_Adapter.obj`` gives once it is gone."""
    optimizer = ref()
    if optimizer is None:
        raise InvalidArgumentError("the torch optimizer behind its param groups no longer exists")
    return optimizer


class _ParamGroups(Trackable):
    """The optimizer's param groups, children ``"0"``, ``"1"``, ... by position."""

    def __init__(self, optimizer: "torch.optim.Optimizer"):
        self._optimizer = weakref.ref(optimizer)
        self._groups: list[_ParamGroup] = []

    def _defer_dependency(self, name: str, restoration: DeferredRestoration) -> None:
        """Not kept, as in ``_Adapter._defer_dependency`` (``add_param_group`` announces nothing)."""

    def _trackable_children(self) -> list[tuple[str, Trackable]]:
        groups = _live_optimizer(self._optimizer).param_groups
        while len(self._groups) < len(groups):
            self._groups.append(_ParamGroup(self._optimizer, len(self._groups)))
        return [(str(i), g) for i, g in enumerate(self._groups[:len(groups)])]


class _ParamGroup(Trackable):
    """One param group's numeric hyperparameters (numbers, bools, tuples of numbers, 0-d tensors).

    Each is saved as an attribute (float64, int64 or bool) and restored with its current
    Python type, so ``lr`` stays a float and ``betas`` a tuple.
    """

    def __init__(self, optimizer_ref: "weakref.ref[torch.optim.Optimizer]", index: int):
        self._optimizer = optimizer_ref
        self._index = index

    def _group(self) -> dict:
        return _live_optimizer(self._optimizer).param_groups[self._index]

    def _serialize_tensors(self) -> Mapping[str, Any]:
        out = {}
        for name, value in self._group().items():
            array = _hyperparameter_array(value)
            if array is not None:
                out[name] = array
        return out

    def _restore_tensors(self, values: Mapping[str, Any]) -> None:
        group = self._group()
        for name, array in values.items():
            current = group[name]
            if isinstance(current, torch.Tensor):
                current.detach().copy_(torch.as_tensor(np.asarray(array)))
            elif isinstance(current, tuple):
                group[name] = tuple(type(c)(a) for c, a in zip(current, np.asarray(array).tolist()))
            else:
                group[name] = type(current)(np.asarray(array).item())


def _hyperparameter_array(value: Any) -> np.ndarray | np.generic | None:
    """A hyperparameter as a NumPy value, or None for what is not numeric (``params``, None, strings)."""
    if isinstance(value, torch.Tensor):
        return tensor_view(value) if value.dim() == 0 else None
    if isinstance(value, bool):
        return np.bool_(value)
    if isinstance(value, numbers.Integral):
        return np.int64(value)
    if isinstance(value, numbers.Real):
        return np.float64(value)
    if isinstance(value, tuple) and value and all(isinstance(v, numbers.Real) and not isinstance(v, bool)
                                                  for v in value):
        return np.array(value, np.float64)
    return None
