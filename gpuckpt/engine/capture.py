"""Snapshots for asynchronous saves: every value copied, at call time, into reusable host memory.

An asynchronous save must hold the values as they were when ``save`` was called, while
training goes on changing the variables. :class:`CapturePool` copies them into one host
buffer per save in flight (pinned when device arrays are captured, so the device-to-host
copy runs on the copy engine at full speed) and hands the buffer back for reuse once the
files are committed: a steady run of saves allocates nothing, and never faults in fresh pages.

Device arrays are copied on a side stream. Numba's streams are *blocking* streams, so the
copy starts only after the work already queued on the legacy default stream (where CuPy,
PyTorch and Numba queue by default) and the call returns once it has landed; kernels that
training queues afterwards cannot change what was captured. Work queued on other streams
must be synchronized by the caller first (docs/async.md).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from ..arrays import as_device_array, is_device_array, prefaulted_bytes

ALIGN = 64  # each value starts on a cache line of the buffer


@dataclass(frozen=True)
class Capture:
    """One save's private copies: ``tensors`` (views into ``buffer``, or immutable strings)."""

    tensors: dict[str, object]
    buffer: np.ndarray | None
    nbytes: int
    pinned: bool = False


class CapturePool:
    """Host buffers for snapshots, reused across saves; at most one per save in flight."""

    def __init__(self) -> None:
        self._free: list[tuple[np.ndarray, bool]] = []  # (buffer, pinned)
        self._lock = threading.Lock()

    def capture(self, tensors: Mapping[str, object]) -> Capture:
        """Copy every value now; device values by DMA into (pinned) host memory."""
        plan, total, on_device = _layout(tensors)
        buffer = self._take(total, pinned=on_device) if total else None
        done = Capture({}, buffer, total, on_device)
        out: dict[str, object] = {}
        stream = _side_stream() if on_device else None
        try:
            for key, value in tensors.items():
                out[key] = _copy_one(value, plan.get(key), buffer, stream)
            if stream is not None:
                stream.synchronize()
        except BaseException:
            self.release(done)
            raise
        return Capture(out, buffer, total, on_device)

    def release(self, capture: Capture) -> None:
        """Give a capture's buffer back once its save is committed (or has failed)."""
        if capture.buffer is not None:
            with self._lock:
                self._free.append((capture.buffer, capture.pinned))

    def close(self) -> None:
        """Drop the idle buffers (pinned memory is unregistered when they are collected)."""
        with self._lock:
            self._free.clear()

    def _take(self, nbytes: int, *, pinned: bool) -> np.ndarray:
        with self._lock:
            fitting = [item for item in self._free if item[0].nbytes >= nbytes and item[1] >= pinned]
            if fitting:
                best = min(fitting, key=lambda item: item[0].nbytes)
                self._free.remove(best)
                return best[0]
            self._free.clear()  # too small, or pageable where pinned is needed: let them go
        if pinned:
            return _cuda().pinned_array(nbytes, np.uint8)
        return prefaulted_bytes(nbytes)


def _layout(tensors: Mapping[str, object]) -> tuple[dict[str, tuple[int, object]], int, bool]:
    """Offset of each numeric value in the buffer, the buffer's size, and whether any is on a device."""
    plan: dict[str, tuple[int, object]] = {}
    offset, on_device = 0, False
    for key, value in tensors.items():
        if is_device_array(value):
            arr, on_device = as_device_array(value), True
        elif isinstance(value, (bytes, str)):
            continue
        else:
            arr = np.asarray(value)
            if arr.dtype == object:
                continue
        plan[key] = (offset, arr)
        offset += -(-int(arr.nbytes) // ALIGN) * ALIGN
    return plan, offset, on_device


def _copy_one(value: object, placed: tuple[int, object] | None, buffer: np.ndarray | None, stream) -> object:
    if placed is None:  # strings: bytes are immutable; an object array is copied (its items are bytes)
        return np.array(value, dtype=object, copy=True) if isinstance(value, np.ndarray) else value
    offset, arr = placed
    view = buffer[offset : offset + arr.nbytes] if buffer is not None else np.empty(0, np.uint8)
    typed = view.view(arr.dtype).reshape(arr.shape)
    if arr.nbytes == 0:
        return typed
    if stream is not None and not isinstance(arr, np.ndarray):
        arr.reshape(arr.size).view(np.uint8).copy_to_host(view, stream=stream)
    else:
        np.copyto(typed, arr)
    return typed


def _side_stream():
    return _cuda().stream()


def _cuda():
    from .._deps import import_optional

    return import_optional("numba.cuda", extra="gpu")
