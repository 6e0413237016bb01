"""Host-side plumbing shared by the kernels: argument checks, chunk tables, word views, streams."""

from __future__ import annotations

from ._deps import require_numba

require_numba()

import numpy as np  # noqa: E402
from numba import config, cuda  # noqa: E402

from gpuckpt.errors import InvalidArgumentError  # noqa: E402


def simulated() -> bool:
    """True when numba runs CUDA kernels in its simulator (NUMBA_ENABLE_CUDASIM=1)."""
    return bool(config.ENABLE_CUDASIM)  # type: ignore[attr-defined]  # numba sets its config at import


def device_bytes(arr, name: str):
    """``arr`` as a 1-D uint8 array a kernel can use in place (never a hidden host round trip).

    On a real GPU it must expose ``__cuda_array_interface__`` (numba device or mapped arrays,
    CuPy arrays); in the simulator NumPy arrays are accepted too.
    """
    if not simulated():
        from numba.cuda.cudadrv.devicearray import DeviceNDArray  # the simulator has no such class

        if not cuda.is_cuda_array(arr):
            raise TypeError(f"{name} must be a CUDA array (device or mapped memory), got {type(arr).__name__}")
        if not isinstance(arr, DeviceNDArray):  # CuPy, mapped host memory...: a view, no copy
            arr = cuda.as_cuda_array(arr)
    if arr.dtype != np.uint8 or len(arr.shape) != 1:
        raise InvalidArgumentError(f"{name} must be a 1-D uint8 array, got {arr.dtype} with shape {arr.shape}")
    if not _contiguous(arr):
        raise InvalidArgumentError(f"{name} must be contiguous")
    return arr


def _contiguous(arr) -> bool:
    flags = getattr(arr, "flags", None)
    if flags is not None:
        return bool(flags["C_CONTIGUOUS"])
    return bool(arr.is_c_contiguous())


def address(arr) -> int:
    """Address of the first byte of a device (or, in the simulator, host) array."""
    if isinstance(arr, np.ndarray):
        return arr.ctypes.data
    if simulated():
        return arr._ary.ctypes.data  # the simulator's FakeCUDAArray wraps a NumPy array
    return arr.device_ctypes_pointer.value or 0


def word_view(arr, stream):
    """(uint64 view of arr's whole words, True) when arr starts 8-aligned, else (placeholder, False)."""
    nwords = arr.shape[0] // 8
    if nwords and address(arr) % 8 == 0:
        return arr[: nwords * 8].view(np.uint64), True
    return to_device(np.zeros(1, dtype=np.uint64), stream), False


def segment_table(offsets, sizes, length: int, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Offsets and sizes as int64 arrays, checked to lie inside a buffer of ``length`` bytes."""
    offsets = np.ascontiguousarray(offsets, dtype=np.int64).reshape(-1)
    sizes = np.ascontiguousarray(sizes, dtype=np.int64).reshape(-1)
    if offsets.shape != sizes.shape:
        raise InvalidArgumentError(f"{name}: {offsets.size} offsets but {sizes.size} sizes")
    if offsets.size and (offsets.min() < 0 or sizes.min() < 0 or (offsets + sizes).max() > length):
        raise InvalidArgumentError(f"{name}: a segment lies outside the {length}-byte buffer")
    return offsets, sizes


def chunk_table(sizes: np.ndarray, chunk_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    """(segment index, start within the segment) of every chunk; empty segments have none."""
    if chunk_bytes <= 0:
        raise InvalidArgumentError(f"chunk size must be positive, got {chunk_bytes}")
    counts = -(-sizes // chunk_bytes)
    segs = np.repeat(np.arange(sizes.size, dtype=np.int64), counts)
    first = np.cumsum(counts) - counts
    starts = (np.arange(segs.size, dtype=np.int64) - np.repeat(first, counts)) * chunk_bytes
    return segs, starts


def to_device(arr: np.ndarray, stream):
    """Copy a small host table to the device on ``stream``."""
    return cuda.to_device(arr, stream=stream or 0)


def launch_stream(stream):
    """The stream argument of a launch configuration (0 is the default stream)."""
    return stream or 0


def synchronize(stream) -> None:
    """Wait for ``stream`` (or the whole device when None)."""
    if stream:
        stream.synchronize()
    else:
        cuda.synchronize()
