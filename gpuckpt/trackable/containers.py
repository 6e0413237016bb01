"""Tracked list, dict and tuple: wrappers whose trackable items are checkpoint dependencies.

Assigning a ``list`` or ``dict`` to a Module attribute (or passing one to ``Checkpoint``)
wraps it, as TensorFlow's ``ListWrapper`` and ``_DictWrapper`` do: the wrapper *shares* the
user's object, so an edit made through either is seen by both. Edits made through the
wrapper are tracked (a value waiting in a restore is assigned the moment its item appears);
an edit made behind it (``held.append(v)`` after ``m.l = held``) cannot be, so checkpointing
the wrapper afterwards raises, naming the attribute, until the container is assigned again.
Tuples (namedtuples and other tuple subclasses included) are wrapped when they hold
trackables or containers, as in TF; a namedtuple's items are dependencies under their field
names and their positions. Items are named ``"0"``, ``"1"``, ... by position and dict items by
key, in insertion order. Items that are not trackable are kept but not saved.

A ``TrackedList`` or ``TrackedDict`` subclasses ``list``/``dict`` for ``isinstance`` checks;
every Python-level operation goes to the shared object, and the built-in storage underneath
holds the contents as of the wrapper's last edit, which is how edits behind it are detected.
"""

from __future__ import annotations

import collections
import copy
import reprlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from ..errors import InvalidArgumentError
from .base import Trackable, as_trackable, is_trackable

_SHORT = reprlib.Repr()  # bounded contents in messages
_SHORT.maxlist = _SHORT.maxdict = 8
_SHORT.maxother = 80
_REASSIGN_HINT = ("Change it through the attribute, or assign your list or dict itself (not the wrapper) to the "
                  "attribute again after changing it: a fresh wrapper tracks its current contents.")


def wrap(value: Any) -> Any:
    """``value`` with plain lists and dicts, and tuples holding trackables, replaced by tracked wrappers."""
    if isinstance(value, Trackable):
        return value
    kind = type(value)
    if kind is list:
        return TrackedList(value)
    if kind is dict or kind is collections.OrderedDict:
        return TrackedDict(value)
    if isinstance(value, tuple) and _should_wrap_tuple(value):
        return tracked_tuple(value)
    return value


def _should_wrap_tuple(items: tuple) -> bool:
    """True when a tuple holds something to track: a trackable, a list, a dict, or such a tuple."""
    for item in items:
        kind = type(item)
        if kind is list or kind is dict or kind is collections.OrderedDict or is_trackable(item):
            return True
        if isinstance(item, tuple) and _should_wrap_tuple(item):
            return True
    return False


def untracked_edit(obj: Trackable) -> str | None:
    """Why ``obj`` cannot be checkpointed as it is (an edit its wrapper could not track), or None."""
    return obj._untracked_edit() if isinstance(obj, (TrackedList, TrackedDict, _TupleTracking)) else None


def _positional_children(items: Iterable[Any]) -> list[tuple[str, Trackable]]:
    return [(str(i), t) for i, v in enumerate(items) if (t := as_trackable(v)) is not None]


def _positional_lookup(items: Sequence[Any], name: str) -> Trackable | None:
    if not name.isdigit() or (len(name) > 1 and name[0] == "0"):
        return None
    index = int(name)
    return as_trackable(items[index]) if index < len(items) else None


def _storage_of(value: Any) -> Any:
    """The shared object behind a wrapper (so comparisons never see a wrapper's own storage)."""
    return value._self_storage if isinstance(value, (TrackedList, TrackedDict)) else value


def _wrap_in_place(storage: Any, keys: Iterable[Any]) -> None:
    """Replace nested containers of the user's object by wrappers, in place (TF does too)."""
    for key in list(keys):
        item = storage[key]
        wrapped = wrap(item)
        if wrapped is not item:
            storage[key] = wrapped


def _same(builtin_eq: Callable[..., Any], mirror: Any, storage: Any) -> bool:
    """Whether the wrapper's built-in storage still equals the shared object (C-level, identity first)."""
    try:
        return builtin_eq(mirror, storage) is True
    except Exception:  # an item's __eq__ that cannot answer (a NumPy array): something was replaced
        return False


class _EditTracking:
    """What the list and dict wrappers share: the shared object, and what became of edits behind it.

    The built-in storage (``list``/``dict`` underneath) mirrors the shared object as of the
    wrapper's last edit; a difference found later means an edit behind the wrapper. That
    marks the wrapper for good (``_self_stale`` keeps the contents it had last seen), as TF's
    flags do; shallow and deep copies inherit the mark.
    """

    _self_storage: Any
    _self_stale: Any = None  # None while every edit went through the wrapper

    _builtin_eq: Callable[..., Any]  # list.__eq__ or dict.__eq__: compares the built-in storage
    _builtin_len: Callable[..., int]  # list.__len__ or dict.__len__

    def _mirror(self) -> None:
        raise NotImplementedError

    def _snapshot(self) -> Any:
        raise NotImplementedError

    def _check_external(self) -> None:
        """Compare the shared object with the contents of the wrapper's last edit."""
        if self._self_stale is None and not _same(type(self)._builtin_eq, self, self._self_storage):
            self._self_stale = self._snapshot()
            self._mirror()

    def _edited(self) -> None:
        """After an edit through the wrapper: mirror it, then assign values waiting for new items."""
        self._mirror()
        self._dependencies_changed()  # type: ignore[attr-defined]

    def _can_follow(self) -> bool:
        """Before an append or a key assignment (the common edits): whether the built-in storage can
        repeat the edit instead of being rebuilt. A length difference shows an edit behind the wrapper
        at once; one that kept the length is found by the full comparison at save or restore."""
        if self._self_stale is not None:
            return False
        if type(self)._builtin_len(self) != len(self._self_storage):
            self._check_external()
            return False
        return True

    def _untracked_edit(self) -> str | None:
        self._check_external()
        if self._self_stale is None:
            return None
        kind = type(self._self_storage).__name__
        now, then = self._self_storage, self._self_stale
        return (f"the wrapped {kind} was modified outside the wrapper (it now holds {len(now)} items, "
                f"{_SHORT.repr(now)}; through the wrapper it was last {len(then)} items, {_SHORT.repr(then)}), "
                f"so values restored into new items would be lost. {_REASSIGN_HINT}")

    def _inherit(self, copied: Any) -> Any:
        copied._self_stale = self._self_stale
        return copied

    # comparisons see the user's object, as TF's wrappers' do; wrappers are unhashable like list and dict
    def __eq__(self, other: Any) -> Any:
        return self._self_storage == _storage_of(other)

    def __ne__(self, other: Any) -> Any:
        return self._self_storage != _storage_of(other)

    def __lt__(self, other: Any) -> Any:
        return self._self_storage < _storage_of(other)

    def __le__(self, other: Any) -> Any:
        return self._self_storage <= _storage_of(other)

    def __gt__(self, other: Any) -> Any:
        return self._self_storage > _storage_of(other)

    def __ge__(self, other: Any) -> Any:
        return self._self_storage >= _storage_of(other)

    __hash__ = None  # type: ignore[assignment]

    # reads see the shared object (the built-in storage underneath may lag behind an edit made around the wrapper)
    def __getitem__(self, key: Any) -> Any:
        return self._self_storage[key]

    def __len__(self) -> int:
        return len(self._self_storage)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._self_storage)

    def __reversed__(self) -> Iterator[Any]:
        return reversed(self._self_storage)

    def __contains__(self, item: Any) -> bool:
        return item in self._self_storage

    def __repr__(self) -> str:
        return repr(self._self_storage)


class TrackedList(_EditTracking, list, Trackable):
    """A ``list`` that wraps the user's list; its trackable items are dependencies named by position."""

    def __init__(self, items: Iterable[Any] = ()):
        storage = items if type(items) is list else list(items)
        _wrap_in_place(storage, range(len(storage)))
        self._self_storage = storage
        self._mirror()

    _builtin_eq = list.__eq__
    _builtin_len = list.__len__

    def _mirror(self) -> None:
        list.__setitem__(self, slice(None), self._self_storage)

    def _snapshot(self) -> list:
        return list.__getitem__(self, slice(None))

    def _trackable_children(self) -> list[tuple[str, Trackable]]:
        return _positional_children(self._self_storage)

    def _lookup_dependency(self, name: str) -> Trackable | None:
        return _positional_lookup(self._self_storage, name)

    # -- edits (tracked) ---------------------------------------------------------------

    def append(self, value: Any) -> None:
        self.extend((value,))

    def extend(self, values: Iterable[Any]) -> None:
        wrapped = [wrap(x) for x in values]
        follow = self._can_follow()
        self._self_storage.extend(wrapped)
        if follow:
            list.extend(self, wrapped)
            self._dependencies_changed()
        else:
            self._edited()

    def insert(self, index: Any, value: Any) -> None:
        self._check_external()
        self._self_storage.insert(index, wrap(value))
        self._edited()

    def __setitem__(self, index: Any, value: Any) -> None:
        self._check_external()
        if isinstance(index, slice):
            self._self_storage[index] = [wrap(x) for x in value]
        else:
            self._self_storage[index] = wrap(value)
        self._edited()

    def __delitem__(self, index: Any) -> None:
        self._check_external()
        del self._self_storage[index]
        self._edited()

    def pop(self, index: Any = -1) -> Any:
        self._check_external()
        value = self._self_storage.pop(index)
        self._edited()
        return value

    def remove(self, value: Any) -> None:
        self._check_external()
        self._self_storage.remove(value)
        self._edited()

    def clear(self) -> None:
        self._check_external()
        self._self_storage.clear()
        self._edited()

    def reverse(self) -> None:
        self._check_external()
        self._self_storage.reverse()
        self._edited()

    def sort(self, *, key: Any = None, reverse: bool = False) -> None:
        self._check_external()
        self._self_storage.sort(key=key, reverse=reverse)
        self._edited()

    def __iadd__(self, values: Iterable[Any]) -> "TrackedList":  # type: ignore[misc]
        self.extend(values)
        return self

    def __imul__(self, count: Any) -> "TrackedList":
        self._check_external()
        self._self_storage *= count
        self._edited()
        return self

    # -- reads (the shared list) -------------------------------------------------------

    def index(self, *args: Any) -> int:
        return self._self_storage.index(*args)

    def count(self, value: Any) -> int:
        return self._self_storage.count(value)

    def __add__(self, other: Any) -> Any:
        return self._self_storage + _storage_of(other)

    def __radd__(self, other: Any) -> Any:
        return _storage_of(other) + self._self_storage

    def __mul__(self, count: Any) -> Any:
        return self._self_storage * count

    __rmul__ = __mul__

    def __sizeof__(self) -> int:
        return list.__sizeof__(self) + self._self_storage.__sizeof__()

    # -- copies ------------------------------------------------------------------------

    def copy(self) -> "TrackedList":
        """A new wrapper around a shallow copy (a fresh wrapper, as TF's ``ListWrapper.copy``)."""
        return TrackedList(list(self._self_storage))

    def __copy__(self) -> "TrackedList":
        return self._inherit(TrackedList(list(self._self_storage)))

    def __deepcopy__(self, memo: dict) -> "TrackedList":
        return self._inherit(TrackedList(copy.deepcopy(self._self_storage, memo)))

    def __reduce_ex__(self, protocol: Any) -> Any:
        return TrackedList, (self._self_storage,)


class TrackedDict(_EditTracking, dict, Trackable):
    """A ``dict`` that wraps the user's dict; its trackable values are dependencies named by key."""

    def __init__(self, *args: Any, **kwargs: Any):
        if len(args) == 1 and not kwargs and type(args[0]) in (dict, collections.OrderedDict):
            storage = args[0]
        else:
            storage = dict(*args, **kwargs)
        _wrap_in_place(storage, storage.keys())
        self._self_storage = storage
        self._mirror()

    _builtin_eq = dict.__eq__
    _builtin_len = dict.__len__

    def _mirror(self) -> None:
        dict.clear(self)
        dict.update(self, self._self_storage)

    def _snapshot(self) -> dict:
        return dict(dict.items(self))

    def _trackable_children(self) -> list[tuple[str, Trackable]]:
        children = []
        for key, value in self._self_storage.items():
            tracked = as_trackable(value)
            if tracked is None:
                continue
            if not isinstance(key, str):
                raise InvalidArgumentError(
                    f"cannot checkpoint a dict with the non-string key {key!r} mapping to a trackable "
                    f"object; use string keys (TensorFlow requires them too)")
            children.append((key, tracked))
        return children

    def _lookup_dependency(self, name: str) -> Trackable | None:
        return as_trackable(self._self_storage.get(name))

    # -- edits (tracked) ---------------------------------------------------------------

    def __setitem__(self, key: Any, value: Any) -> None:
        self.update(((key, value),))

    def __delitem__(self, key: Any) -> None:
        self._check_external()
        del self._self_storage[key]
        self._edited()

    def update(self, *args: Any, **kwargs: Any) -> None:
        wrapped = {key: wrap(value) for key, value in dict(*args, **kwargs).items()}
        follow = self._can_follow()
        self._self_storage.update(wrapped)
        if follow:
            dict.update(self, wrapped)
            self._dependencies_changed()
        else:
            self._edited()

    def setdefault(self, key: Any, default: Any = None) -> Any:
        if key not in self._self_storage:
            self[key] = default
        return self._self_storage[key]

    def pop(self, key: Any, *default: Any) -> Any:
        self._check_external()
        value = self._self_storage.pop(key, *default)
        self._edited()
        return value

    def popitem(self) -> tuple[Any, Any]:
        self._check_external()
        item = self._self_storage.popitem()
        self._edited()
        return item

    def clear(self) -> None:
        self._check_external()
        self._self_storage.clear()
        self._edited()

    def __ior__(self, other: Any) -> "TrackedDict":
        self.update(other)
        return self

    # -- reads (the shared dict) -------------------------------------------------------

    def get(self, key: Any, default: Any = None) -> Any:
        return self._self_storage.get(key, default)

    def keys(self) -> Any:
        return self._self_storage.keys()

    def values(self) -> Any:
        return self._self_storage.values()

    def items(self) -> Any:
        return self._self_storage.items()

    def __or__(self, other: Any) -> Any:
        return self._self_storage | _storage_of(other)

    def __ror__(self, other: Any) -> Any:
        return _storage_of(other) | self._self_storage

    def __sizeof__(self) -> int:
        return dict.__sizeof__(self) + self._self_storage.__sizeof__()

    # -- copies ------------------------------------------------------------------------

    def copy(self) -> "TrackedDict":
        """``copy.copy(self)``, as TF's ``_DictWrapper.copy``: the copy inherits an untracked edit."""
        return self.__copy__()

    def __copy__(self) -> "TrackedDict":
        return self._inherit(TrackedDict(copy.copy(self._self_storage)))

    def __deepcopy__(self, memo: dict) -> "TrackedDict":
        return self._inherit(TrackedDict(copy.deepcopy(self._self_storage, memo)))

    def __reduce_ex__(self, protocol: Any) -> Any:
        return TrackedDict, (self._self_storage,)


class _TupleTracking(Trackable):
    """What every wrapped tuple has: items as dependencies by position (and, in a namedtuple, by field).

    A mixin without instance layout, so that it combines with any tuple subclass (one with a
    ``__dict__`` included); see :func:`tracked_tuple`.
    """

    _self_original: type = tuple
    _self_unconstructable = False

    def _fields_of(self) -> tuple[str, ...]:
        return getattr(self._self_original, "_fields", ())

    def _items(self) -> tuple:
        return self  # type: ignore[return-value]  # every subclass is also a tuple subclass

    def _trackable_children(self) -> list[tuple[str, Trackable]]:
        items = self._items()
        named = [(field, t) for field, v in zip(self._fields_of(), items, strict=False)
                 if (t := as_trackable(v)) is not None]
        return named + _positional_children(items)

    def _lookup_dependency(self, name: str) -> Trackable | None:
        fields = self._fields_of()
        if name in fields:
            return as_trackable(self._items()[fields.index(name)])
        return _positional_lookup(self._items(), name)

    def _untracked_edit(self) -> str | None:
        if not self._self_unconstructable:
            return None
        return (f"the namedtuple {self!r} cannot be rebuilt from its fields {self._fields_of()} (its __new__ "
                "takes other arguments), so it cannot be restored; keep it in an object that is not a tuple")

    def __copy__(self) -> Any:
        return self

    def __deepcopy__(self, memo: dict) -> Any:
        return _rebuild_tuple(self._self_original, copy.deepcopy(tuple(self._items()), memo))

    def __reduce_ex__(self, protocol: Any) -> Any:
        return _rebuild_tuple, (self._self_original, tuple(self._items()))


class TrackedTuple(_TupleTracking, tuple):
    """A plain tuple whose trackable items are dependencies named by position.

    A wrapped namedtuple or other tuple subclass is an instance of a subclass of the user's
    type instead (``isinstance``, fields and methods work), and of ``Trackable``.
    """

    def __new__(cls, items: Iterable[Any] = ()) -> "TrackedTuple":
        return super().__new__(cls, [wrap(x) for x in items])


_TUPLE_CLASSES: dict[type, type] = {}  # one trackable subclass per tuple type (it refers to the type anyway)


def tracked_tuple(value: tuple) -> Any:
    """Wrap a tuple: a plain one becomes a ``TrackedTuple``; a namedtuple or other subclass an instance
    of a subclass of its own type that is also trackable (TF's ``_TupleWrapper`` proxies it instead)."""
    kind = type(value)
    if isinstance(value, _TupleTracking):
        return value
    if kind is tuple:
        return TrackedTuple(value)
    wrapped = [wrap(x) for x in value]
    unconstructable = False
    fields = getattr(kind, "_fields", None)
    if fields is not None:
        try:
            kind(**dict(zip(fields, wrapped, strict=True)))
        except TypeError:
            unconstructable = True
    result: Any = tuple.__new__(_tracked_class(kind), wrapped)
    result.__dict__.update(getattr(value, "__dict__", {}))
    if unconstructable:
        result._self_unconstructable = True
    return result


def _tracked_class(kind: type) -> type:
    cls = _TUPLE_CLASSES.get(kind)
    if cls is None:
        namespace = {"_self_original": kind, "__module__": kind.__module__, "__qualname__": kind.__qualname__}
        if hasattr(kind, "_make"):
            namespace["_make"] = classmethod(lambda cls, iterable: tracked_tuple(kind._make(iterable)))
        try:
            cls = type(kind.__name__, (_TupleTracking, kind), namespace)
        except TypeError as exc:
            raise InvalidArgumentError(
                f"cannot track the tuple subclass {kind.__qualname__} (holding trackable objects): {exc}") from exc
        _TUPLE_CLASSES[kind] = cls
    return cls


def _rebuild_tuple(kind: type, items: tuple) -> Any:
    """Re-create a wrapped tuple of type ``kind`` from its items (pickling and deep copies)."""
    if kind is tuple:
        return wrap(items)
    # a namedtuple's _make bypasses a custom __new__
    rebuilt = kind._make(items) if hasattr(kind, "_fields") else kind(items)  # type: ignore[attr-defined]
    return wrap(rebuilt)
