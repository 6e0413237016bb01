"""JAX adapter: checkpoint a pytree of ``jax.Array``s, and restore it as a new pytree.

Install with ``pip install 'gpuckpt[jax]'``. Importing this module imports jax; nothing else
in gpuckpt does.

A pytree (nested dicts, lists, tuples, ``None``, and dataclasses or other classes registered
with ``jax.tree_util``) becomes a tree of trackable nodes named by its key path: dict keys,
sequence positions and dataclass field names, so ``{"dense": {"w": w}}`` under the
checkpoint name ``params`` is saved as ``params/dense/w/.ATTRIBUTES/VARIABLE_VALUE``. Leaves
are JAX arrays, NumPy arrays or Python numbers.

JAX arrays are immutable, so a restore cannot write into them: it builds a new pytree of the
template's structure whose arrays are placed with ``jax.device_put`` on each template
leaf's sharding (its device). Template leaves with no value in the checkpoint are kept as
they are and reported by the status, like any unmatched object (``(root).params.dense.b``).

Saving takes no copies of arrays on the CPU (NumPy views of their buffers); arrays on a GPU
go through gpuckpt's device path (``__cuda_array_interface__``), except those of dtypes NumPy
lacks (bfloat16, float8), which that interface cannot describe and which are copied to the host. Restored values are read
into host memory, CRC-verified, then placed on the device.

    >>> gpuckpt.jax.save("/tmp/run/params", params)                     # doctest: +SKIP
    >>> restored, status = gpuckpt.jax.restore("/tmp/run/params", params)  # doctest: +SKIP
    >>> status.assert_consumed()                                         # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from ._deps import import_optional
from .arrays import as_device_array, is_device_array
from .checkpoint import Checkpoint
from .errors import InvalidArgumentError
from .options import CheckpointOptions
from .status import CheckpointLoadStatus, NameBasedSaverStatus
from .trackable.base import Trackable
from .trackable.variable import VARIABLE_VALUE

jax = import_optional("jax", extra="jax")

__all__ = ["PyTree", "restore", "save"]


class PyTree(Trackable):
    """A pytree held for checkpointing; ``tree`` is its current value (a new pytree after a restore).

    Its dependencies are the pytree's top-level entries, each a node named by its key.
    """

    def __init__(self, tree: Any):
        paths_and_leaves, self._treedef = jax.tree_util.tree_flatten_with_path(tree)
        self._leaves = [_Leaf(leaf, _path_name(path)) for path, leaf in paths_and_leaves]
        self._root = _Node()
        for (path, _), leaf in zip(paths_and_leaves, self._leaves):
            self._root.insert([_entry_name(entry, path) for entry in path], leaf)

    @property
    def tree(self) -> Any:
        """The pytree: the template's structure with the current (restored or original) leaves."""
        return jax.tree_util.tree_unflatten(self._treedef, [leaf.value for leaf in self._leaves])

    def _trackable_children(self) -> list[tuple[str, Trackable]]:
        return self._root._trackable_children()

    def __repr__(self) -> str:
        return f"<gpuckpt.jax.PyTree with {len(self._leaves)} leaves: {self._treedef}>"


class _Node(Trackable):
    """An inner node of the pytree: children by key, in the pytree's flattening order."""

    def __init__(self) -> None:
        self._children: dict[str, Trackable] = {}

    def insert(self, names: list[str], leaf: "_Leaf") -> None:
        if not names:
            raise InvalidArgumentError("a pytree that is a single leaf has no name to save it under; "
                                       "put it in a dict")
        head, rest = names[0], names[1:]
        existing = self._children.get(head)
        if not rest:
            if existing is not None:
                raise InvalidArgumentError(f"two pytree entries are both named {leaf.path!r}")
            self._children[head] = leaf
            return
        if existing is None:
            existing = self._children[head] = _Node()
        if not isinstance(existing, _Node):
            raise InvalidArgumentError(f"pytree entry {leaf.path!r} is below a leaf of the same name")
        existing.insert(rest, leaf)

    def _trackable_children(self) -> list[tuple[str, Trackable]]:
        return list(self._children.items())


class _Leaf(Trackable):
    """One leaf, saved as ``VARIABLE_VALUE``; a restore replaces ``value`` with a new array."""

    def __init__(self, value: Any, path: str):
        if not isinstance(value, (jax.Array, np.ndarray, np.generic, bool, int, float, complex)):
            raise InvalidArgumentError(f"pytree leaf {path!r} is a {type(value).__name__}; gpuckpt.jax saves "
                                       "JAX arrays, NumPy arrays and Python numbers")
        self.value = value
        self.path = path

    def _serialize_tensors(self) -> Mapping[str, Any]:
        value = self.value
        on_gpu = isinstance(value, jax.Array) and any(d.platform != "cpu" for d in value.devices())
        if on_gpu and np.dtype(value.dtype).isbuiltin == 1:
            return {VARIABLE_VALUE: value}  # saved through __cuda_array_interface__, no copy
        # a view of a CPU array's buffer (no copy); GPU arrays of dtypes NumPy lacks (bfloat16,
        # float8), which the CUDA array interface cannot describe, come to the host first
        return {VARIABLE_VALUE: np.asarray(value)}

    def _restore_tensors(self, values: Mapping[str, Any]) -> None:
        restored = values[VARIABLE_VALUE]
        if is_device_array(restored):
            restored = as_device_array(restored).copy_to_host()
        self.value = _like(self.value, np.asarray(restored))

    def _checkpoint_full_name(self) -> str:
        return self.path

    def __repr__(self) -> str:
        value = np.asarray(self.value) if not isinstance(self.value, jax.Array) else self.value
        return f"<gpuckpt.jax leaf {self.path!r} {value.dtype}{list(value.shape)}>"


def _like(template: Any, value: np.ndarray) -> Any:
    """``value`` in the template leaf's kind: a JAX array on its sharding, a NumPy array, or a number."""
    if isinstance(template, jax.Array):
        return jax.device_put(value, template.sharding)
    if isinstance(template, np.ndarray):
        return value
    if isinstance(template, np.generic):
        return value[()]
    return type(template)(value.item())


def _entry_name(entry: Any, path: tuple) -> str:
    """The local name of one key-path entry: a dict key, a position or a field name."""
    tree_util = jax.tree_util
    if isinstance(entry, tree_util.DictKey):
        if not isinstance(entry.key, (str, int)):
            raise InvalidArgumentError(f"pytree entry {_path_name(path)!r} has the key {entry.key!r}; gpuckpt "
                                       "saves dicts with string (or integer) keys")
        return str(entry.key)
    if isinstance(entry, tree_util.SequenceKey):
        return str(entry.idx)
    if isinstance(entry, tree_util.GetAttrKey):
        return entry.name
    if isinstance(entry, tree_util.FlattenedIndexKey):
        return str(entry.key)
    raise InvalidArgumentError(f"pytree entry {_path_name(path)!r}: unsupported key type {type(entry).__name__}")


def _path_name(path: tuple) -> str:
    return jax.tree_util.keystr(path)


def save(file_prefix: str | os.PathLike, tree: Any, *, name: str = "tree",
         options: CheckpointOptions | None = None) -> str:
    """Write ``tree`` at exactly ``file_prefix`` as the checkpoint's ``name`` object; returns the prefix.

    The same as ``gpuckpt.Checkpoint(**{name: PyTree(tree)}).write(file_prefix)``.
    """
    return Checkpoint(**{name: PyTree(tree)}).write(file_prefix, options)


def restore(save_path: str | os.PathLike, template: Any, *, name: str = "tree",
            options: CheckpointOptions | None = None) -> tuple[Any, CheckpointLoadStatus | NameBasedSaverStatus]:
    """A new pytree shaped like ``template`` with the values saved under ``name``, and the status.

    Every value is checked against the template leaf (same dtype and shape) and read before
    any leaf is replaced; arrays land on the template leaves' shardings.
    """
    holder = PyTree(template)
    status = Checkpoint(**{name: holder}).read(save_path, options)
    return holder.tree, status
