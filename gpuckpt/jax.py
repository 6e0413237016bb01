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
lacks (bfloat16, float8), which that interface cannot describe and which are copied to the host.
Restored values are read into host memory, CRC-verified, then placed on the device.

    >>> gpuckpt.jax.save("/tmp/run/params", params)                     # doctest: +SKIP
    >>> restored, status = gpuckpt.jax.restore("/tmp/run/params", params)  # doctest: +SKIP
    >>> status.assert_consumed()                                         # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from ._deps import import_optional
from .arrays import as_device_array, is_device_array
from .checkpoint import Checkpoint
from .errors import InvalidArgumentError
from .options import CheckpointOptions
from .status import CheckpointLoadStatus, NameBasedSaverStatus
from .trackable.base import Trackable
from .trackable.variable import VARIABLE_VALUE

if TYPE_CHECKING:
    import jax
else:
    jax = import_optional("jax", extra="jax")

__all__ = ["PyTree", "restore", "save"]


class PyTree(Trackable):
    """A pytree held for checkpointing; ``tree`` is its current value (a new pytree after a restore).

    Its dependencies are the pytree's top-level entries, each a node named by its key.
    """

    def __init__(self, tree: Any, *, cast: bool = False):
        self._cast = cast
        self._set(tree)

    def _set(self, tree: Any) -> None:
        cast = self._cast
        paths_and_leaves, self._treedef = jax.tree_util.tree_flatten_with_path(tree)
        self._leaves = [_Leaf(leaf, _path_name(path), cast) for path, leaf in paths_and_leaves]
        self._root = _Node()
        for (path, _), leaf in zip(paths_and_leaves, self._leaves):
            self._root.insert([_entry_name(entry, path) for entry in path], leaf)

    @property
    def tree(self) -> Any:
        """The pytree: the template's structure with the current (restored or original) leaves."""
        return jax.tree_util.tree_unflatten(self._treedef, [leaf.value for leaf in self._leaves])

    @tree.setter
    def tree(self, tree: Any) -> None:
        """Hold a new pytree (the next state of a training loop) for the next save."""
        self._set(tree)

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


PRNG_IMPL = "PRNG_IMPL"  # the attribute beside a typed PRNG key's key data: its implementation's name


def _is_key(value: Any) -> bool:
    dtype = getattr(value, "dtype", None)
    return dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)


class _Leaf(Trackable):
    """One leaf, saved as ``VARIABLE_VALUE``; a restore replaces ``value`` with a new array.

    A typed PRNG key (``jax.random.key``) is saved as its key data (uint32) with its implementation's
    name in ``PRNG_IMPL``, and restored with ``jax.random.wrap_key_data``. A ``jax.ShapeDtypeStruct``
    is an abstract template: it takes any value of its dtype and shape, placed on its sharding.
    """

    def __init__(self, value: Any, path: str, cast: bool = False):
        if not isinstance(value, (jax.Array, jax.ShapeDtypeStruct, np.ndarray, np.generic, bool, int, float,
                                  complex)):
            raise InvalidArgumentError(f"pytree leaf {path!r} is a {type(value).__name__}; gpuckpt.jax saves "
                                       "JAX arrays (typed PRNG keys included), NumPy arrays and Python numbers, and "
                                       "restores into those and jax.ShapeDtypeStruct templates", key=path)
        self.value: Any = value  # a leaf of any accepted kind, replaced by what a restore gives it
        self.path = path
        self.cast = cast
        self._saved: dict[str, tuple[Any, tuple[int, ...]]] = {}  # what the checkpoint holds, when known

    def _serialize_tensors(self) -> Mapping[str, Any]:
        value = self.value
        if isinstance(value, jax.ShapeDtypeStruct):
            return self._abstract_spec(value)
        if _is_key(value):
            return {VARIABLE_VALUE: np.asarray(jax.random.key_data(value)),
                    PRNG_IMPL: str(jax.random.key_impl(value)).encode("utf-8")}
        on_gpu = isinstance(value, jax.Array) and any(d.platform != "cpu" for d in value.devices())
        if on_gpu and np.dtype(value.dtype).isbuiltin == 1 and not self._saved:
            return {VARIABLE_VALUE: value}  # saved through __cuda_array_interface__, no copy
        if self._saved and VARIABLE_VALUE in self._saved:  # restoring with a cast or into a Python number
            dtype, shape = self._saved[VARIABLE_VALUE]
            return {VARIABLE_VALUE: np.broadcast_to(np.zeros((), dtype.numpy), shape)}
        # a view of a CPU array's buffer (no copy); GPU arrays of dtypes NumPy lacks (bfloat16,
        # float8), which the CUDA array interface cannot describe, come to the host first
        return {VARIABLE_VALUE: np.asarray(value)}

    def _checkpoint_validate(self, path: str) -> None:
        """Before a save: an abstract template has no value to save."""
        if isinstance(self.value, jax.ShapeDtypeStruct):
            raise InvalidArgumentError(f"{path} (pytree leaf {self.path!r}) is a jax.ShapeDtypeStruct, an abstract "
                                       "template with no value to save", key=self.path)

    def _abstract_spec(self, value: "jax.ShapeDtypeStruct") -> dict[str, Any]:
        """A zero-cost array of the template's dtype and shape (no allocation), for the restore's checks."""
        if _is_key(value):
            if VARIABLE_VALUE not in self._saved:
                return {}
            dtype, shape = self._saved[VARIABLE_VALUE]
            return {VARIABLE_VALUE: np.broadcast_to(np.zeros((), np.uint32), shape), PRNG_IMPL: b""}
        dtype, shape = self._saved[VARIABLE_VALUE] if self.cast and self._saved else (None, value.shape)
        return {VARIABLE_VALUE: np.broadcast_to(np.zeros((), dtype.numpy if dtype else value.dtype), shape)}

    def _checkpoint_prepare(self, saved: Mapping[str, tuple[Any, tuple[int, ...]]], where: str) -> None:
        """Before values are read: check the checkpoint's entry against this template leaf, naming both sides."""
        self._saved = {}
        entry = saved.get(VARIABLE_VALUE)
        if entry is None:
            return
        dtype, shape = entry
        template = self.value
        if _is_key(template):
            if PRNG_IMPL not in saved:
                raise InvalidArgumentError(f"pytree leaf {self.path!r} ({where}): the template holds a typed PRNG "
                                           f"key, the checkpoint a plain {dtype.name} array", key=self.path)
            self._saved = dict(saved)
            return
        if PRNG_IMPL in saved:
            raise InvalidArgumentError(f"pytree leaf {self.path!r} ({where}): the checkpoint holds a typed PRNG key, "
                                       f"the template a {_dtype_of(template)} value; make the template leaf a key "
                                       "(jax.random.key) or a ShapeDtypeStruct of one", key=self.path)
        want_shape = tuple(np.shape(template)) if not isinstance(template, jax.ShapeDtypeStruct) else template.shape
        if tuple(shape) != want_shape:
            raise InvalidArgumentError(f"pytree leaf {self.path!r} ({where}): the checkpoint holds shape "
                                       f"{list(shape)}, the template shape {list(want_shape)}", key=self.path)
        want = _dtype_of(template)
        if np.dtype(dtype.numpy) == want:
            if isinstance(template, jax.ShapeDtypeStruct):
                self._saved = {VARIABLE_VALUE: entry}
            return
        if self.cast or _python_number_takes(template, np.dtype(dtype.numpy)):
            self._saved = {VARIABLE_VALUE: entry}
            return
        raise InvalidArgumentError(
            f"pytree leaf {self.path!r} ({where}): the checkpoint holds {dtype.name}, the template {want.name}; "
            "pass cast=True (gpuckpt.jax.restore, or gpuckpt.jax.PyTree(template, cast=True)) to cast to the "
            "template's dtype, or give the template leaf the checkpoint's dtype", key=self.path)

    def _restore_tensors(self, values: Mapping[str, Any]) -> None:
        restored = values[VARIABLE_VALUE]
        if is_device_array(restored):
            restored = as_device_array(restored).copy_to_host()
        restored = np.asarray(restored)
        if PRNG_IMPL in values:
            impl = values[PRNG_IMPL]
            impl = (impl.item() if isinstance(impl, np.ndarray) else impl)
            impl = impl.decode("utf-8") if isinstance(impl, bytes) else str(impl)
            # jax annotates key data as jax.Array; it takes NumPy arrays as well (and documents ArrayLike elsewhere)
            key = jax.random.wrap_key_data(restored, impl=impl)  # type: ignore[arg-type]
            sharding = getattr(self.value, "sharding", None)
            self.value = jax.device_put(key, sharding) if sharding is not None else key
        else:
            self.value = _like(self.value, restored)
        self._saved = {}

    def _checkpoint_full_name(self) -> str:
        return self.path

    def __repr__(self) -> str:
        value = self.value
        if not isinstance(value, (jax.Array, jax.ShapeDtypeStruct)):
            value = np.asarray(value)
        return f"<gpuckpt.jax leaf {self.path!r} {value.dtype}{list(value.shape)}>"


def _dtype_of(template: Any) -> np.dtype:
    if isinstance(template, (jax.Array, jax.ShapeDtypeStruct, np.ndarray, np.generic)):
        return np.dtype(template.dtype)
    return np.asarray(template).dtype


def _python_number_takes(template: Any, saved: np.dtype) -> bool:
    """A Python number has no dtype of its own: it takes any saved value of its kind (``step=0`` an int32 step)."""
    if isinstance(template, bool):
        return saved.kind == "b"
    if isinstance(template, int):
        return saved.kind in "iub"
    if isinstance(template, float):
        return saved.kind in "fiub"
    if isinstance(template, complex):
        return saved.kind in "cfiub"
    return False


def _like(template: Any, value: np.ndarray) -> Any:
    """``value`` in the template leaf's kind: a JAX array on its sharding (cast to its dtype), a NumPy array,
    or a number."""
    if isinstance(template, (jax.Array, jax.ShapeDtypeStruct)):
        if value.dtype != np.dtype(template.dtype):
            value = value.astype(template.dtype)
        sharding = template.sharding
        return jax.device_put(value, sharding) if sharding is not None else jax.device_put(value)
    if isinstance(template, np.ndarray):
        return value.astype(template.dtype, copy=False)
    if isinstance(template, np.generic):
        return value.astype(template.dtype)[()]
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


def restore(save_path: str | os.PathLike, template: Any, *, name: str = "tree", cast: bool = False,
            options: CheckpointOptions | None = None) -> tuple[Any, CheckpointLoadStatus | NameBasedSaverStatus]:
    """A new pytree shaped like ``template`` with the values saved under ``name``, and the status.

    Every value is checked against the template leaf (same dtype and shape; ``cast=True`` casts to
    the template's dtype instead) and read before any leaf is replaced; arrays land on the template
    leaves' shardings. Template leaves may be ``jax.ShapeDtypeStruct``s (with or without a sharding).
    """
    holder = PyTree(template, cast=cast)
    status = Checkpoint(**{name: holder}).read(save_path, options)
    return holder.tree, status
