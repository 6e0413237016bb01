"""Tracked list, dict and tuple: built-in containers whose trackable items are dependencies.

Assigning a ``list``, ``dict`` or ``tuple`` to a Module attribute (or passing one to
``Checkpoint``) wraps it, recursively, in one of these subclasses, so that later appends
and item assignments are tracked too. As in TensorFlow, every container is a node of the
object graph: list and tuple items are named ``"0"``, ``"1"``, … by position and dict items
by key, in insertion order. Items that are not trackable are kept but not saved.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Sequence
from typing import Any

from ..errors import InvalidArgumentError
from .base import Trackable, as_trackable, is_trackable


def wrap(value: Any) -> Any:
    """``value`` with plain lists, dicts and tuples (at any depth) replaced by tracked ones."""
    if isinstance(value, Trackable):
        return value
    kind = type(value)
    if kind is list:
        return TrackedList(value)
    if kind is dict or kind is collections.OrderedDict:
        return TrackedDict(value)
    if kind is tuple:
        return TrackedTuple(value)
    return value


def _positional_children(items: Iterable[Any]) -> list[tuple[str, Trackable]]:
    return [(str(i), t) for i, v in enumerate(items) if (t := as_trackable(v)) is not None]


def _positional_lookup(items: Sequence[Any], name: str) -> Trackable | None:
    if not name.isdigit() or (len(name) > 1 and name[0] == "0"):
        return None
    index = int(name)
    return as_trackable(items[index]) if index < len(items) else None


class TrackedList(list, Trackable):
    """A ``list`` whose trackable items are dependencies named by position."""

    def __init__(self, items: Iterable[Any] = ()):
        super().__init__(wrap(x) for x in items)

    def _trackable_children(self) -> list[tuple[str, Trackable]]:
        return _positional_children(self)

    def _lookup_dependency(self, name: str) -> Trackable | None:
        return _positional_lookup(self, name)

    def append(self, value: Any) -> None:
        super().append(wrap(value))
        self._dependencies_changed()

    def extend(self, values: Iterable[Any]) -> None:
        super().extend(wrap(x) for x in values)
        self._dependencies_changed()

    def insert(self, index: Any, value: Any) -> None:
        super().insert(index, wrap(value))
        self._dependencies_changed()

    def __setitem__(self, index: Any, value: Any) -> None:
        if isinstance(index, slice):
            super().__setitem__(index, [wrap(x) for x in value])
        else:
            super().__setitem__(index, wrap(value))
        self._dependencies_changed()

    def __iadd__(self, values: Iterable[Any]) -> "TrackedList":
        self.extend(values)
        return self

    def __imul__(self, count: Any) -> "TrackedList":
        super().__imul__(count)
        self._dependencies_changed()
        return self


class TrackedDict(dict, Trackable):
    """A ``dict`` whose trackable values are dependencies named by key, in insertion order."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__()
        self.update(*args, **kwargs)

    def _trackable_children(self) -> list[tuple[str, Trackable]]:
        children = []
        for key, value in self.items():
            if not is_trackable(value):
                continue
            if not isinstance(key, str):
                raise InvalidArgumentError(
                    f"cannot checkpoint a dict with the non-string key {key!r} mapping to a trackable "
                    f"object; use string keys (TensorFlow requires them too)")
            children.append((key, as_trackable(value)))
        return children

    def _lookup_dependency(self, name: str) -> Trackable | None:
        return as_trackable(self.get(name))

    def __setitem__(self, key: Any, value: Any) -> None:
        super().__setitem__(key, wrap(value))
        self._dependencies_changed()

    def update(self, *args: Any, **kwargs: Any) -> None:
        for key, value in dict(*args, **kwargs).items():
            super().__setitem__(key, wrap(value))
        self._dependencies_changed()

    def setdefault(self, key: Any, default: Any = None) -> Any:
        if key not in self:
            self[key] = default
        return self[key]

    def __ior__(self, other: Any) -> "TrackedDict":
        self.update(other)
        return self


class TrackedTuple(tuple, Trackable):
    """A ``tuple`` whose trackable items are dependencies named by position."""

    def __new__(cls, items: Iterable[Any] = ()) -> "TrackedTuple":
        return super().__new__(cls, (wrap(x) for x in items))

    def _trackable_children(self) -> list[tuple[str, Trackable]]:
        return _positional_children(self)

    def _lookup_dependency(self, name: str) -> Trackable | None:
        return _positional_lookup(self, name)
