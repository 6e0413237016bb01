"""Before a save: find state that the checkpoint would silently leave out, and refuse it by path.

The graph walk saves what trackables declare. This pass catches what they would drop:

* a public attribute of a ``gpuckpt.Module`` (or of a ``Checkpoint``) holding a plain Python value
  or an array (``module.step = 5``): not trackable, so nothing would be saved. The error says to
  use ``gpuckpt.Variable`` (an array), ``gpuckpt.PythonState`` (a Python value), or a name
  starting with ``_`` (not checkpoint state);
* a tracked list, tuple or dict given to a checkpoint that mixes trackable objects with plain
  values (the plain ones would be dropped);
* objects that check themselves (``_checkpoint_validate(path, reachable)``): state dict trackables
  (their state dict must be encodable), PyTorch optimizers (their parameters must be reachable).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .errors import InvalidArgumentError
from .graph import BASE_CHILDREN, BASE_SLOTS, named_children, pretty_path
from .pystate import is_plain
from .trackable.base import Trackable, is_trackable
from .trackable.containers import TrackedDict, TrackedList, TrackedTuple
from .trackable.module import AutoTrackable


def check(root: Trackable, attached: Sequence[tuple[str, Trackable]] = ()) -> None:
    """Raise ``InvalidArgumentError`` naming the path of the first value a save would leave out."""
    objects, paths = reachable(root, attached, validate=True)
    check_objects(objects, paths)


_NOTHING_TO_CHECK: dict[type, bool] = {}  # per class: no _checkpoint_validate, not a Module or tracked container


def is_plain_leaf(obj: Trackable) -> bool:
    """Whether ``obj`` can have no dependencies or slots and has nothing for these checks to look at
    (a ``Variable``): a leaf by ``graph.is_leaf`` that declares no slots (``graph.declares_slots``),
    with no ``_checkpoint_validate`` and neither a ``Module`` nor a tracked container (decided once per class)."""
    cls = type(obj)
    if cls._trackable_children is not BASE_CHILDREN or cls._slot_variables is not BASE_SLOTS:
        return False
    plain = _NOTHING_TO_CHECK.get(cls)
    if plain is None:
        plain = _NOTHING_TO_CHECK[cls] = getattr(cls, "_checkpoint_validate", None) is None and not issubclass(
            cls, (AutoTrackable, TrackedList, TrackedTuple, TrackedDict))
    return plain


def check_objects(objects: Sequence[Trackable], paths: Sequence[tuple[str, ...]]) -> None:
    """``check``'s tests of each reachable object (``objects[i]`` at ``paths[i]``), once the
    graph is known: plain public attributes, plain container items, ``_checkpoint_validate(path, ids)``."""
    ids = {id(obj) for obj in objects}
    for obj, path in zip(objects, paths):
        if is_plain_leaf(obj):
            continue
        if isinstance(obj, AutoTrackable):
            _check_attributes(obj, path)
        if isinstance(obj, (TrackedList, TrackedTuple, TrackedDict)):
            _check_items(obj, pretty_path(path))
        validate = getattr(obj, "_checkpoint_validate", None)
        if validate is not None and _takes_reachable(validate):
            validate(pretty_path(path), ids)


def validate_before_children(obj: Trackable, path: tuple[str, ...]) -> None:
    """Run an object's own ``_checkpoint_validate(path)`` (before its children are asked for: they
    come from what it checks)."""
    check_self = getattr(obj, "_checkpoint_validate", None)
    if check_self is not None and not _takes_reachable(check_self):
        check_self(pretty_path(path))


def _takes_reachable(method: Any) -> bool:
    code = getattr(getattr(method, "__func__", method), "__code__", None)
    return code is not None and code.co_argcount >= 3


def reachable(root: Trackable, attached: Sequence[tuple[str, Trackable]] = (), *, validate: bool = False):
    """Every object reachable from ``root`` through dependencies, and its path (local names)."""
    seen = {id(root)}
    objects: list[Trackable] = [root]
    paths: list[tuple[str, ...]] = [()]
    for index, obj in enumerate(objects):
        if validate:
            validate_before_children(obj, paths[index])
        for name, child in named_children(obj, attached if index == 0 else (), paths[index]):
            if id(child) not in seen:
                seen.add(id(child))
                objects.append(child)
                paths.append((*paths[index], name))
    return objects, paths


def _unsaved_kind(value: Any) -> str | None:
    """What kind of state ``value`` is when a checkpoint would drop it, else None (code, config objects...)."""
    if isinstance(value, Trackable) or is_trackable(value):
        return None
    if isinstance(value, np.ndarray):
        return "a NumPy array"
    if value is not None and is_plain(value):
        return f"a Python {type(value).__name__}"
    return None


def _check_attributes(obj: AutoTrackable, path: tuple[str, ...]) -> None:
    for attribute, value in vars(obj).items():
        if attribute.startswith("_") or isinstance(value, Trackable):
            continue  # internal state (INTERNAL_PREFIX included): not checkpoint state by convention
        kind = _unsaved_kind(value)
        if kind is not None:
            name = pretty_path(path)
            raise InvalidArgumentError(
                f"{name}.{attribute} holds {kind} ({_short(value)}), which a checkpoint does not save: use "
                f"gpuckpt.Variable(...) for an array or a counter, gpuckpt.PythonState(...) to save a Python value, "
                f"or a name starting with '_' for a value that is not checkpoint state", key=f"{name}.{attribute}")


def _check_items(container: Any, name: str) -> None:
    items = container.items() if isinstance(container, dict) else enumerate(container)
    for key, value in items:
        kind = _unsaved_kind(value)
        if kind is not None:
            raise InvalidArgumentError(
                f"{name}[{key!r}] holds {kind} ({_short(value)}), which a checkpoint does not save: only trackable "
                "items of lists, tuples and dicts are saved. Wrap it in gpuckpt.PythonState(...) to save it, or keep "
                "it out of the checkpointed container", key=f"{name}[{key!r}]")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."

