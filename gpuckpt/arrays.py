"""What the save pipeline needs to know about a value: dtype, shape, size, and where its bytes are.

``as_tensor`` accepts NumPy arrays (and anything ``np.asarray`` takes without copying device
memory), Python scalars, ``bytes``/``str`` and arrays of them (string tensors). It never
copies a contiguous host array.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import InvalidArgumentError
from .format import dtypes, strings
from .format.dtypes import DType


@dataclass(frozen=True)
class HostTensor:
    """A host value ready to be written: numeric bytes as a flat uint8 view, or an encoded string payload."""

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
            raise InvalidArgumentError(f"string tensor {key!r} holds a {type(item).__name__}, not bytes or str", key=key)
    return out


def as_tensor(value, key: str = "?") -> HostTensor:
    """Describe ``value`` for saving under ``key``; InvalidArgumentError for what cannot be saved."""
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


def aligned_empty(shape: tuple[int, ...], dtype: np.dtype, alignment: int = 4096) -> np.ndarray:
    """An uninitialised array whose data starts on an ``alignment`` boundary (reads into it are ~4x faster)."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(nbytes + alignment, np.uint8)
    start = (-raw.ctypes.data) % alignment
    return raw[start : start + nbytes].view(dtype).reshape(shape)
