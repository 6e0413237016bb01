"""Module: an object whose attribute assignments become named checkpoint dependencies."""

from __future__ import annotations

import re
from typing import Any

from .base import Trackable, as_trackable, is_trackable
from .containers import wrap
from .variable import Variable

INTERNAL_PREFIX = "_self_"


class AutoTrackable(Trackable):
    """Tracks every attribute whose value is trackable, in first-assignment order.

    Lists, dicts and tuples are wrapped (see ``containers``) and tracked too. Attributes
    named ``_self_*`` hold internal state and are never tracked; properties are left alone.
    """

    def _dependencies(self) -> dict[str, Trackable]:
        deps = self.__dict__.get("_self_dependencies")
        if deps is None:
            deps = {}
            object.__setattr__(self, "_self_dependencies", deps)
        return deps

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith(INTERNAL_PREFIX) or _is_data_descriptor(type(self), name):
            object.__setattr__(self, name, value)
            return
        value = wrap(value)
        object.__setattr__(self, name, value)
        deps = self._dependencies()
        if is_trackable(value):
            deps[name] = value  # an overwritten dependency keeps its position, as in TF
            self._dependencies_changed()
        else:
            deps.pop(name, None)

    def __delattr__(self, name: str) -> None:
        object.__delattr__(self, name)
        self._dependencies().pop(name, None)

    def _trackable_children(self) -> list[tuple[str, Trackable]]:
        # framework objects (a torch nn.Module) stay as they are on the attribute; their adapter is the child
        children = []
        for name, value in self._dependencies().items():
            child = as_trackable(value)
            assert child is not None, name  # __setattr__ records only values that as_trackable adapts
            children.append((name, child))
        return children

    def _lookup_dependency(self, name: str) -> Trackable | None:
        return as_trackable(self._dependencies().get(name))


def _is_data_descriptor(cls: type, name: str) -> bool:
    return hasattr(getattr(cls, name, None), "__set__")


def _snake_case(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


class Module(AutoTrackable):
    """A container of variables and sub-modules, like ``tf.Module``."""

    def __init__(self, name: str | None = None):
        self._self_name = name if name is not None else _snake_case(type(self).__name__)

    @property
    def name(self) -> str:
        return self.__dict__.get("_self_name") or _snake_case(type(self).__name__)

    @property
    def variables(self) -> tuple[Variable, ...]:
        """Every variable reachable from this module, each once, in breadth-first order."""
        return tuple(obj for obj in _reachable(self) if isinstance(obj, Variable))

    @property
    def trainable_variables(self) -> tuple[Variable, ...]:
        return tuple(v for v in self.variables if v.trainable)

    @property
    def submodules(self) -> tuple["Module", ...]:
        """Every module reachable from this one (itself excluded), in breadth-first order."""
        return tuple(obj for obj in _reachable(self)[1:] if isinstance(obj, Module))


def _reachable(root: Trackable) -> list[Trackable]:
    seen = {id(root)}
    order = [root]
    for obj in order:
        for _, child in obj._trackable_children():
            if id(child) not in seen:
                seen.add(id(child))
                order.append(child)
    return order
