"""The trackable protocol: how an object tells gpuckpt its dependencies and saveable values.

Any object that takes part in a checkpoint subclasses :class:`Trackable` and overrides
the methods it needs (each has a do-nothing default):

``_trackable_children() -> Sequence[tuple[str, Trackable]]``
    Named dependencies, in a stable order. The order decides node numbering and so the
    bytes of the object graph (TF numbers nodes breadth-first in this order).
``_serialize_tensors() -> Mapping[str, array]``
    The values this object saves, by attribute name (a variable saves one,
    ``"VARIABLE_VALUE"``). Arrays are NumPy arrays, ``bytes`` or object arrays of bytes.
``_restore_tensors(values: Mapping[str, array]) -> None``
    Receives checkpointed values, already checked against the arrays that
    ``_serialize_tensors`` returns (same dtype, same shape), under the same names.
``_restore_destinations() -> Mapping[str, array]``
    Optional: memory a restore may write checkpointed values into directly, by attribute
    name: the object's own C-contiguous, writable NumPy array of the value's dtype and
    shape, or its device array. Values read there are verified in place and never passed
    to ``_restore_tensors``; attributes not offered (the default: none) go through it.
    A class whose ``_serialize_tensors`` values *are* that memory (a variable's own array)
    sets ``_values_are_destinations = True``, and a restore then uses those values without
    asking (``tests/api/test_restore_destinations_fast.py`` checks that the two agree for ``Variable``).
``_slot_variables() -> Sequence[SlotVariable]``
    For optimizers: per-variable state ("slots") keyed by the variable it belongs to.
    Saved as TF1-style ``slot_variables`` (docs/format.md §9.3/9.4); the slot-name order of the
    first appearance in this list is the order TF gives slot nodes.
``_checkpoint_full_name() -> str``
    The ``full_name`` written next to each attribute (a variable's name; ``""`` otherwise).

Restore-on-create: a restore keeps the values of dependencies that do not exist yet as
*deferred restorations* on the live parent. An object that gains dependencies after
construction calls :meth:`Trackable._dependencies_changed` (``Module`` and the tracked
containers do this for you; an optimizer calls it after creating slots), and any value
waiting for the new dependency is assigned at once.

Objects of other frameworks take part through adapters: once PyTorch is imported, an
``nn.Module`` or optimizer found where a dependency may be is replaced, in the object
graph only, by its adapter from ``gpuckpt.torch`` (see :func:`as_trackable`). Any other
object whose class has ``state_dict()`` and ``load_state_dict()`` (an LR scheduler, a
``GradScaler``, a data loader) is adapted by ``gpuckpt.statedict``.
"""

from __future__ import annotations

import importlib
import sys
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ..errors import InvalidArgumentError


@dataclass(frozen=True)
class SlotVariable:
    """One optimizer slot: ``slot`` holds the ``slot_name`` state of ``original``."""

    slot_name: str
    original: "Trackable"
    slot: "Trackable"


class DeferredRestoration(Protocol):
    """A value waiting for a dependency to appear; ``apply`` binds and restores it.

    ``saved_specs`` gives the saved dtype (a ``gpuckpt.format.dtypes.DType``) and shape of
    each attribute, so that an object that creates state on demand (the PyTorch optimizer
    adapter) can create it to fit the checkpoint, as ``Optimizer.load_state_dict`` does.
    """

    def apply(self, obj: "Trackable") -> None: ...

    def saved_specs(self) -> Mapping[str, tuple[Any, tuple[int, ...]]]: ...


@dataclass
class _DeferredState:
    by_name: dict[str, list[DeferredRestoration]]
    slots: list[tuple[str, "Trackable", DeferredRestoration]]


class Trackable:
    """Base class of everything a checkpoint can hold; see the module docstring."""

    _values_are_destinations: bool = False  # _restore_destinations() offers what _serialize_tensors() gives

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        overrides = "_restore_destinations" in cls.__dict__ or "_serialize_tensors" in cls.__dict__
        if overrides and "_values_are_destinations" not in cls.__dict__:
            cls._values_are_destinations = False  # a subclass that changes either one says again whether they agree

    def _trackable_children(self) -> Sequence[tuple[str, "Trackable"]]:
        """Named dependencies in their stable order; none by default."""
        return ()

    def _serialize_tensors(self) -> Mapping[str, Any]:
        """Values to save, by attribute name; none by default."""
        return {}

    def _restore_tensors(self, values: Mapping[str, Any]) -> None:
        """Accept checkpointed values (already validated); nothing to do by default."""

    def _restore_destinations(self) -> Mapping[str, Any]:
        """Arrays a restore may fill in place, by attribute name; none by default (values then go
        through ``_restore_tensors``)."""
        return {}

    def _slot_variables(self) -> Sequence[SlotVariable]:
        """Optimizer slots; none by default."""
        return ()

    def _checkpoint_full_name(self) -> str:
        """The ``full_name`` TF records for this object's attributes."""
        return ""

    def _lookup_dependency(self, name: str) -> "Trackable | None":
        """The dependency called ``name``, or None."""
        for child_name, child in self._trackable_children():
            if child_name == name:
                return child
        return None

    def _lookup_slot(self, original: "Trackable", slot_name: str) -> "Trackable | None":
        """This optimizer's ``slot_name`` slot for ``original``, or None."""
        for ref in self._slot_variables():
            if ref.original is original and ref.slot_name == slot_name:
                return ref.slot
        return None

    # -- deferred restoration -------------------------------------------------------

    def _deferred_state(self) -> _DeferredState:
        state = self.__dict__.get("_self_deferred")
        if state is None:
            state = _DeferredState(by_name={}, slots=[])
            object.__setattr__(self, "_self_deferred", state)
        return state

    def _defer_dependency(self, name: str, restoration: DeferredRestoration) -> None:
        """Keep ``restoration`` until a dependency called ``name`` is added.

        It replaces one kept from an earlier restore: the newest restore wins anyway, and each
        holds its values in memory, so an evaluation loop restoring a checkpoint again and
        again into objects that never gain ``name`` holds one restore's values, not all of them.
        """
        for older in self._deferred_state().by_name.get(name, ()):
            _superseded(older)
        self._deferred_state().by_name[name] = [restoration]

    def _defer_slot(self, slot_name: str, original: "Trackable", restoration: DeferredRestoration) -> None:
        """Keep ``restoration`` until this optimizer creates ``slot_name`` for ``original`` (replacing
        one kept from an earlier restore, as ``_defer_dependency`` does)."""
        state = self._deferred_state()
        for entry in state.slots:
            if entry[0] == slot_name and entry[1] is original:
                _superseded(entry[2])
        state.slots = [e for e in state.slots if not (e[0] == slot_name and e[1] is original)]
        state.slots.append((slot_name, original, restoration))

    def _has_deferred(self) -> bool:
        state = self.__dict__.get("_self_deferred")
        return bool(state and (state.by_name or state.slots))

    def _dependencies_changed(self) -> None:
        """Apply deferred restorations whose dependency or slot now exists."""
        if not self._has_deferred():
            return
        state = self._deferred_state()
        for name in list(state.by_name):
            child = self._lookup_dependency(name)
            if child is not None:
                self._apply_deferred(name, child)
        for entry in list(state.slots):
            slot_name, original, restoration = entry
            slot = self._lookup_slot(original, slot_name)
            if slot is not None:
                state.slots.remove(entry)
                restoration.apply(slot)

    def _apply_deferred(self, name: str, child: "Trackable") -> None:
        """Run the restorations waiting for ``name`` on ``child`` (newest restore last)."""
        waiting = self._deferred_state().by_name.pop(name, [])
        for index, restoration in enumerate(waiting):
            try:
                restoration.apply(child)
            except BaseException:
                self._deferred_state().by_name[name] = waiting[index:]
                raise


def _superseded(restoration: DeferredRestoration) -> None:
    """Tell a replaced restoration that a newer restore took its place (it then does not warn about
    values never used); restorations without a ``superseded`` method are just dropped."""
    superseded = getattr(restoration, "superseded", None)
    if superseded is not None:
        superseded()


class ForeignAdapter(Trackable):
    """A trackable standing for one framework object, which it references weakly (the adapters'
    common base: the framework owns the object, the checkpoint only describes it)."""

    framework = "framework"  # named in the error raised once the object is gone

    def __init__(self, obj: Any):
        self._ref = weakref.ref(obj)

    @property
    def obj(self) -> Any:
        obj = self._ref()
        if obj is None:
            raise InvalidArgumentError(f"the {self.framework} object behind {type(self).__name__} no longer exists")
        return obj


# Frameworks whose objects become trackable through an adapter module: (top-level package,
# adapter module). An adapter is imported only once its framework has been imported (a
# framework's objects cannot exist before), so ``import gpuckpt`` never imports torch.
_ADAPTERS: tuple[tuple[str, str], ...] = (("torch", "gpuckpt.torch"),)
_ADAPTERS += (("nvidia.dali", "gpuckpt.dali"),)  # DALI pipelines and framework iterators


def as_trackable(value: object) -> "Trackable | None":
    """``value`` if it is trackable, the adapter's trackable for a framework object
    (a PyTorch ``nn.Module`` or optimizer), else None.

    Adapters return the same trackable for the same object every time, so aliases,
    optimizer slots and deferred restorations refer to one node.
    """
    if isinstance(value, Trackable):
        return value
    for framework, adapter in _ADAPTERS:
        if framework in sys.modules:
            adapted = importlib.import_module(adapter).adapt(value)
            if adapted is not None:
                return adapted
    if _has_state_dict(value):  # LR schedulers, GradScaler, data loaders, user classes: gpuckpt.statedict
        return importlib.import_module("gpuckpt.statedict").adapt(value)
    return None


def _has_state_dict(value: object) -> bool:
    kind = type(value)
    return callable(getattr(kind, "state_dict", None)) and callable(getattr(kind, "load_state_dict", None))


def is_trackable(value: object) -> bool:
    """True for objects that take part in checkpoints (adapted framework objects included)."""
    return as_trackable(value) is not None
