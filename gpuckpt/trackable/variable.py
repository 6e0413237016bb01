"""Variable: one named array that checkpoints save under ``VARIABLE_VALUE``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ..arrays import aligned_empty, as_device_array, is_device_array
from ..errors import InvalidArgumentError
from ..format import dtypes
from .base import Trackable

VARIABLE_VALUE = "VARIABLE_VALUE"


_ALIGNED_FROM = 256 << 10  # arrays this large start on a page: reads into them run faster (the restore's reads)


def _to_array(value: Any, dtype: dtypes.DType | None) -> np.ndarray:
    """A fresh NumPy array from ``value`` (page-aligned when large); strings become object arrays of UTF-8 bytes."""
    if isinstance(value, Variable):
        value = value.value()
    if dtype is None:
        dtype = _infer_dtype(value)
    if dtype.is_string:
        return np.vectorize(_as_bytes, otypes=[object])(np.array(value, dtype=object))
    source = np.asarray(value, dtype=dtype.numpy)
    if source.nbytes < _ALIGNED_FROM:
        return np.array(source, copy=True)
    out = aligned_empty(source.shape, source.dtype)
    np.copyto(out, source)
    return out


def _infer_dtype(value: Any) -> dtypes.DType:
    """NumPy values keep their dtype; Python numbers get TF's defaults (float32, int32)."""
    is_numpy = isinstance(value, (np.ndarray, np.generic))
    array = value if is_numpy else np.array(value)
    if array.dtype.kind in "OSU":
        return dtypes.STRING
    if not is_numpy and array.dtype == np.float64:
        return dtypes.BY_NAME["float32"]
    if not is_numpy and array.dtype == np.int64 and _fits_int32(array):
        return dtypes.BY_NAME["int32"]
    return dtypes.from_numpy(array.dtype)


def _fits_int32(array: np.ndarray) -> bool:
    info = np.iinfo(np.int32)
    return array.size == 0 or bool(info.min <= array.min() and array.max() <= info.max)


def _flat_bytes(array: Any) -> Any:
    """A flat uint8 view of a contiguous host or Numba device array."""
    return array.reshape(array.size).view(np.uint8)


def _as_bytes(x: Any) -> bytes:
    return x.encode("utf-8") if isinstance(x, str) else bytes(x)


class Variable(Trackable):
    """A mutable array with a name, like ``tf.Variable``.

    The array lives behind :meth:`value` and :meth:`_set_array`, so that other engines
    can keep it elsewhere (for instance on a GPU) without changing the checkpoint code.
    """

    def __init__(self, initial_value: Any, dtype: Any = None, name: str | None = None,
                 trainable: bool = True):
        wanted = None if dtype is None else dtypes.as_dtype(dtype)
        self._device = None  # a Numba view of the array's memory when it lives on a GPU
        if is_device_array(initial_value):
            array = initial_value  # kept as given (CuPy, PyTorch, Numba, ...): saved and restored in place
            self._device = as_device_array(initial_value)
            found = dtypes.from_numpy(self._device.dtype)
            if wanted is not None and wanted != found:
                raise InvalidArgumentError(f"device array of dtype {found.name} given for a {wanted.name} variable")
            wanted = found
        else:
            array = _to_array(initial_value, wanted)
        self._dtype = wanted or dtypes.from_numpy(array.dtype)
        self._array = array
        self._name = "Variable" if name is None else name
        self.trainable = trainable

    # -- the array --------------------------------------------------------------------

    def value(self) -> np.ndarray:
        """The array itself (not a copy); what checkpoints save."""
        return self._array

    @property
    def on_device(self) -> bool:
        """True when the value lives in GPU memory."""
        return self._device is not None

    def _set_array(self, array: Any) -> None:
        """Overwrite the held values in place with an array of the same dtype and shape.

        A device variable keeps its memory: host values are copied in (H2D), device values
        device-to-device.
        """
        if self._device is not None:
            if is_device_array(array):
                source = as_device_array(array)
            else:
                source = np.require(array, dtype=self._device.dtype, requirements="C")  # keeps 0-d shapes
            if tuple(source.shape) != tuple(self._device.shape):
                raise InvalidArgumentError(f"cannot copy a value of shape {tuple(source.shape)} into device "
                                           f"variable {self._name!r} of shape {tuple(self._device.shape)}")
            if self._device.size:  # raw bytes: dtypes match already, and ml_dtypes need no casting rules
                _flat_bytes(self._device).copy_to_device(_flat_bytes(source))
        elif self._array.dtype == object:
            self._array[...] = array
        else:
            np.copyto(self._array, array, casting="no")

    # -- public API -------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self._name

    @property
    def dtype(self) -> dtypes.DType:
        return self._dtype

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._array.shape)

    def numpy(self) -> np.ndarray | bytes:
        """A host copy of the value (``bytes`` for a scalar string, as TF gives)."""
        if self._device is not None:
            return self._device.copy_to_host()
        copy = np.array(self._array, copy=True)
        return copy.item() if self._dtype.is_string and copy.ndim == 0 else copy

    def assign(self, value: Any) -> "Variable":
        """Set the value; the shape must match, Python numbers are cast, arrays must match dtype."""
        array = self._converted(value)
        if tuple(array.shape) != self.shape:
            raise InvalidArgumentError(
                f"cannot assign a value of shape {tuple(array.shape)} to variable {self._name!r} "
                f"of shape {self.shape}")
        self._set_array(array)
        return self

    def assign_add(self, delta: Any) -> "Variable":
        """Add ``delta`` (broadcast like NumPy) in place (on the host for device variables)."""
        current = self._device.copy_to_host() if self._device is not None else self._array
        return self.assign((current + self._converted(delta)).astype(current.dtype))

    def assign_sub(self, delta: Any) -> "Variable":
        """Subtract ``delta`` (broadcast like NumPy) in place (on the host for device variables)."""
        current = self._device.copy_to_host() if self._device is not None else self._array
        return self.assign((current - self._converted(delta)).astype(current.dtype))

    def _converted(self, value: Any) -> Any:
        """``value`` as an array of this variable's dtype; NumPy values must already have it.
        Device values stay on the device."""
        if is_device_array(value):
            found = dtypes.from_numpy(as_device_array(value).dtype)
            if found != self._dtype:
                raise InvalidArgumentError(f"cannot assign a {found.name} value to variable {self._name!r} "
                                           f"of dtype {self._dtype.name}")
            return value
        given = value.dtype.numpy if isinstance(value, Variable) else getattr(value, "dtype", None)
        if given is not None and not self._dtype.is_string and np.dtype(given) != self._dtype.numpy:
            raise InvalidArgumentError(
                f"cannot assign a {np.dtype(given)} value to variable {self._name!r} of dtype "
                f"{self._dtype.name}")
        return _to_array(value, self._dtype)

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        return np.asarray(self.numpy() if self._device is not None else self._array, dtype=dtype)

    def __repr__(self) -> str:
        where = ", on GPU" if self._device is not None else f", numpy={self._array!r}"
        return f"<gpuckpt.Variable {self._name!r} shape={self.shape} dtype={self._dtype.name}{where}>"

    # -- trackable protocol -----------------------------------------------------------

    _values_are_destinations = True  # value() is the array (or device memory) a restore fills in place

    def _serialize_tensors(self) -> Mapping[str, Any]:
        return {VARIABLE_VALUE: self.value()}

    def _restore_destinations(self) -> Mapping[str, Any]:
        """The variable's own memory (host array or device array), for restores that read in place."""
        if self._device is not None:
            return {VARIABLE_VALUE: self._device}
        if self._array.dtype == object:
            return {}
        return {VARIABLE_VALUE: self._array}

    def _restore_tensors(self, values: Mapping[str, Any]) -> None:
        value = values[VARIABLE_VALUE]
        self._set_array(value if is_device_array(value) else _to_array(value, self._dtype))

    def _checkpoint_full_name(self) -> str:
        return self._name
