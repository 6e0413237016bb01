"""What the save pipeline needs to know about a value: dtype, shape, size, and where its bytes are.

``as_tensor`` accepts NumPy arrays, Python scalars, ``bytes``/``str`` and arrays of them (host
tensors), and device arrays: anything with ``__cuda_array_interface__`` (CuPy, PyTorch, Numba,
JAX), DLPack capsules on a CUDA device, and Numba's simulated device arrays. It never copies a
contiguous array; device arrays become :class:`DeviceTensor` views. This is the only module
that knows how foreign arrays expose their memory.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from .errors import InvalidArgumentError
from .format import dtypes, strings
from .format.dtypes import DType


class HostTensor(NamedTuple):
    """A host value ready to be written: numeric bytes as a flat uint8 view, or an encoded string payload.

    A NamedTuple, not a frozen dataclass: a save makes one per tensor, and this is cheaper to build."""

    dtype: DType
    shape: tuple[int, ...]
    data: np.ndarray  # flat uint8 view of the C-order bytes (numeric), or the encoded string payload
    string_crc: int | None = None  # masked entry CRC, known only for string payloads

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes)


def _string_elements(arr: np.ndarray, key: str) -> list[bytes]:
    out = []
    for item in arr.reshape(-1):
        if isinstance(item, (bytes, np.bytes_)):
            out.append(bytes(item))
        elif isinstance(item, str):
            out.append(item.encode("utf-8"))
        else:
            raise InvalidArgumentError(
                f"string tensor {key!r} holds a {type(item).__name__}, not bytes or str", key=key
            )
    return out


@dataclass(frozen=True)
class DeviceView:
    """Where a device array's elements are, read from the array itself without copying or syncing.

    ``address`` is the device pointer of element 0 and ``strides`` are in bytes (C order need not
    hold: a channels_last tensor has permuted strides); ``device`` is the CUDA ordinal the memory
    belongs to. ``owner`` is the user's array: it keeps the memory alive and tells the engine
    whose stream produces the values (engine/cuda.py). ``stream`` is the stream the array
    declared through ``__cuda_array_interface__`` v3 (None when it declared none). ``runtime``
    is a test double (gpuckpt.testing.fake_cuda) for arrays it made; None for real memory.
    ``dtype`` is a NumPy or ``ml_dtypes`` dtype: bfloat16 and float8 arrays are described here
    even though the CUDA array interface cannot express them (the engine moves bytes, not values).
    """

    address: int
    dtype: np.dtype
    shape: tuple[int, ...]
    strides: tuple[int, ...]
    device: int
    owner: object
    stream: int | None = None
    runtime: Any = None  # duck-typed like engine/cuda.py's runtime; no shared base class to name

    @property
    def itemsize(self) -> int:
        return int(self.dtype.itemsize)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.itemsize

    @property
    def contiguous(self) -> bool:
        """True when the elements are dense in C order (the order the file holds)."""
        shape, strides = self.runs()
        return len(shape) == 1 and strides[0] == self.itemsize

    def runs(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(shape, strides) with size-1 dims dropped and each dim merged into the one before it
        when they are contiguous together: a C-contiguous view becomes one dim of stride ``itemsize``."""
        merged: list[list[int]] = []
        for n, st in zip(self.shape, self.strides):
            if n == 1:
                continue
            if merged and merged[-1][1] == n * st:
                merged[-1] = [merged[-1][0] * n, st]
            else:
                merged.append([n, st])
        if not merged:
            merged = [[int(np.prod(self.shape, dtype=np.int64)), self.itemsize]]
        return tuple(n for n, _ in merged), tuple(st for _, st in merged)


@dataclass(frozen=True)
class DeviceTensor:
    """A device array to save: its checkpoint dtype and shape and a :class:`DeviceView` of its memory."""

    dtype: DType
    shape: tuple[int, ...]
    view: DeviceView

    @property
    def nbytes(self) -> int:
        return self.view.nbytes

    @property
    def data(self):
        """The bytes in C order as a flat uint8 device array with ``copy_to_host()`` (the CPU engine's
        way in, ``io_device="cpu"``); non-contiguous memory is packed on the device first."""
        if self.view.runtime is not None:
            return self.view.runtime.flat_bytes(self.view)
        from .engine.cuda import flat_bytes

        return flat_bytes(self.view)


_DLPACK_CUDA_DEVICES = (2, 13)  # kDLCUDA, kDLCUDAManaged
_VIEW_HOOK = "__gpuckpt_device_view__"  # test doubles describe their own memory


def _module(value) -> str:
    return type(value).__module__ or ""


def _is_torch_cuda(value) -> bool:
    return _module(value).startswith("torch") and getattr(value, "is_cuda", False) is True


def _is_jax_array(value) -> bool:
    return _module(value).startswith(("jax", "jaxlib")) and hasattr(value, "unsafe_buffer_pointer")


def is_device_array(value) -> bool:
    """True for arrays whose memory is on a CUDA device (or Numba's simulated one)."""
    if hasattr(type(value), _VIEW_HOOK) or _is_torch_cuda(value):
        return True
    if _module(value).startswith("numba.cuda.simulator"):
        return True
    try:
        if hasattr(value, "__cuda_array_interface__"):
            return True
    except Exception:  # an interface that refuses to describe itself
        return False
    device = getattr(value, "__dlpack_device__", None)
    if device is not None and not isinstance(value, np.ndarray):
        try:
            return device()[0] in _DLPACK_CUDA_DEVICES
        except Exception:
            return False
    return False


class RetypedDeviceArray:
    """A device array of a dtype the CUDA array interface cannot describe (bfloat16, float8), given as
    ``bits``, a device array of integers of the same width over the same memory (``torch.Tensor.view``
    keeps the device and the storage), saved and restored as ``dtype``: no byte leaves the device."""

    def __init__(self, bits, dtype):
        self.bits, self.dtype = bits, np.dtype(dtype)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.bits.shape)

    def __gpuckpt_device_view__(self) -> "DeviceView":
        view = device_view(self.bits)
        if view.itemsize != self.dtype.itemsize:
            raise InvalidArgumentError(f"a {view.dtype} device array cannot hold {self.dtype} values: "
                                       "the widths differ")
        return dataclasses.replace(view, dtype=self.dtype)


def as_device_array(value):
    """A Numba device array sharing ``value``'s memory (CUDA array interface, or DLPack via CuPy)."""
    if isinstance(value, RetypedDeviceArray):
        value = value.bits  # the integer view: the bytes are what is copied
    if _module(value).startswith("numba.cuda"):
        return value
    from .engine import cuda  # the one place that imports numba.cuda and CuPy

    if not hasattr(value, "__cuda_array_interface__"):
        value = cuda.from_dlpack(value)
    return cuda.numba_cuda().as_cuda_array(value)


def c_strides(shape: tuple[int, ...], itemsize: int) -> tuple[int, ...]:
    """Byte strides of a C-ordered array."""
    out, step = [], itemsize
    for n in reversed(shape):
        out.append(step)
        step *= max(n, 1)
    return tuple(reversed(out))


def _torch_view(t) -> DeviceView:
    import ml_dtypes  # noqa: F401  (registers bfloat16 and float8 names with NumPy)

    dtype = np.dtype(str(t.dtype).removeprefix("torch."))
    item = dtype.itemsize
    return DeviceView(int(t.data_ptr()), dtype, tuple(t.shape), tuple(s * item for s in t.stride()),
                      int(t.device.index or 0), t)


def _jax_view(a) -> DeviceView:
    devices = list(a.devices())
    if len(devices) != 1:
        raise InvalidArgumentError(f"a JAX array on {len(devices)} devices: gpuckpt saves single-device arrays")
    device = devices[0]
    dtype = np.dtype(a.dtype)
    shape = tuple(a.shape)
    ordinal = getattr(device, "local_hardware_id", None)
    return DeviceView(int(a.unsafe_buffer_pointer()), dtype, shape, c_strides(shape, dtype.itemsize),
                      int(ordinal if ordinal is not None else getattr(device, "id", 0)), a)


def _simulated_view(a) -> DeviceView:
    host = a._ary  # the simulator's FakeCUDAArray wraps a NumPy array
    return DeviceView(int(host.ctypes.data), host.dtype, tuple(host.shape), tuple(host.strides), 0, a)


def _interface_view(value) -> DeviceView:
    cai = value.__cuda_array_interface__
    dtype = np.dtype(cai["typestr"])
    shape = tuple(int(n) for n in cai["shape"])
    strides = tuple(cai["strides"]) if cai.get("strides") else c_strides(shape, dtype.itemsize)
    address = int(cai["data"][0] or 0)
    from .engine.cuda import device_of_pointer

    return DeviceView(address, dtype, shape, strides, device_of_pointer(address), value, cai.get("stream"))


def device_view(value, key: str = "?") -> DeviceView:
    """Describe a device array's memory (no copy, no synchronization); InvalidArgumentError if impossible."""
    hook = getattr(type(value), _VIEW_HOOK, None)
    if hook is not None:
        view = hook(value)
    elif _is_torch_cuda(value):
        view = _torch_view(value.detach())
    elif _module(value).startswith("numba.cuda.simulator"):
        view = _simulated_view(value)
    elif _is_jax_array(value):
        view = _jax_view(value)
    else:
        if not hasattr(value, "__cuda_array_interface__"):
            from .engine import cuda

            value = cuda.from_dlpack(value)
        view = _interface_view(value)
    if view.strides and min(view.strides) < 0:
        raise InvalidArgumentError(f"device array for {key!r} has negative strides; gpuckpt cannot save it", key=key)
    return view


def device_bytes(value, key: str = "?") -> DeviceTensor:
    """Describe a device array for saving: checkpoint dtype, shape and a view of its memory (no copy)."""
    view = device_view(value, key)
    try:
        dtype = dtypes.from_numpy(view.dtype)
    except InvalidArgumentError as exc:
        raise InvalidArgumentError(f"device array for {key!r}: {exc}", key=key) from exc
    return DeviceTensor(dtype, view.shape, view)


@dataclass(frozen=True)
class ValueSpec:
    """What restore needs to know of a live value: its dtype, shape and whether it is on a device."""

    dtype: DType
    shape: tuple[int, ...]
    on_device: bool


def value_spec(value) -> ValueSpec:
    """dtype, shape and placement of a live value, without copying it."""
    if is_device_array(value):
        view = device_view(value)
        return ValueSpec(dtypes.from_numpy(view.dtype), tuple(view.shape), True)
    if isinstance(value, (bytes, str)):
        return ValueSpec(dtypes.STRING, (), False)
    arr = np.asarray(value)
    return ValueSpec(dtypes.from_numpy(arr.dtype), tuple(arr.shape), False)


def as_tensor(value, key: str = "?") -> HostTensor | DeviceTensor:
    """Describe ``value`` for saving under ``key``; InvalidArgumentError for what cannot be saved."""
    if is_device_array(value):
        return device_bytes(value, key)
    return host_tensor(value, key)


def host_tensor(value, key: str = "?") -> HostTensor:
    """Describe a host value (an array, a scalar, ``bytes`` or ``str``) for saving under ``key``."""
    if isinstance(value, (bytes, str)):
        value = np.array(value.encode("utf-8") if isinstance(value, str) else value, dtype=object)
    arr = np.asarray(value)
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    dtype = dtypes.from_numpy(arr.dtype)
    if dtype.is_string:
        payload, crc = strings.encode(_string_elements(arr, key))
        return HostTensor(dtype, arr.shape, np.frombuffer(payload, np.uint8), crc)
    if not arr.flags.c_contiguous:
        arr = arr.copy(order="C")  # np.ascontiguousarray would turn a scalar into shape (1,)
    return HostTensor(dtype, arr.shape, arr.reshape(-1).view(np.uint8))


def aligned_empty(shape: tuple[int, ...], dtype: np.dtype | type[np.generic], alignment: int = 4096) -> np.ndarray:
    """An uninitialised array whose data starts on an ``alignment`` boundary (reads into it are ~4x faster)."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(nbytes + alignment, np.uint8)
    start = (-raw.ctypes.data) % alignment
    return raw[start : start + nbytes].view(dtype).reshape(shape)


def prefaulted_bytes(nbytes: int) -> np.ndarray:
    """A page-aligned uint8 buffer whose pages are mapped at once (Linux ``MAP_POPULATE``).

    Faulting fresh pages in one by one on first write costs more than the copy itself
    (measured here: 0.6 s against 0.1 s for 256 MiB), so buffers that are filled right away
    and then reused, like asynchronous saves' snapshots, are mapped this way.
    """
    import mmap

    flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | getattr(mmap, "MAP_POPULATE", 0)
    return np.frombuffer(mmap.mmap(-1, max(nbytes, 1), flags=flags), np.uint8)[:nbytes]
