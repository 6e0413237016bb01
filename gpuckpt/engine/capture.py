"""Snapshots for asynchronous saves: every value copied, at call time, into reusable memory.

An asynchronous save must hold the values as they were when ``save`` was called, while
training goes on changing the variables. :class:`CapturePool` copies host values into one
host buffer per save in flight, and device values, per device:

* into a device snapshot buffer, when the device has room for it (``SPARE_BYTES`` kept free):
  one pointer-table gather launch on a capture stream that first waits on an event of each
  producer's stream (torch's current stream, CuPy's, the array's declared stream; JAX arrays
  are waited for); the producers' streams then wait for the snapshot before training may
  write again. ``capture`` returns without waiting for the copy: the snapshot values are
  device arrays whose producer is the capture stream, so the background save (GPU engine:
  CRC kernels, DMA, writes) is ordered after the copy by the same fence as any save.
* otherwise into pinned host memory by DMA, fenced the same way; ``capture`` returns once the
  copies are queued (the training streams wait only until their values are copied), and the
  values are PendingHostArray objects: reading them as NumPy arrays (which the background
  save does) waits for the copies first.

Buffers are handed back for reuse once the files are committed; a steady run of saves
allocates nothing. A capture that fails waits for the copies it queued before its buffers go
back (a released buffer is never still being written).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from ..arrays import DeviceView, device_view, is_device_array, prefaulted_bytes
from ..format import crc

ALIGN = 64  # each value starts on a cache line of the buffer
DEVICE_ALIGN = 256
SPARE_BYTES = 1 << 30  # device memory a snapshot leaves free for training
WAIT_TIMEOUT_S = 600.0
CRC_PIECE = 256 << 10  # a checksummed copy's piece: small enough to be still in cache when checksummed


@dataclass(frozen=True)
class Capture:
    """One save's private copies: ``tensors`` (views into ``buffer``/device buffers, or immutable strings)."""

    tensors: dict[str, object]
    buffer: np.ndarray | None
    nbytes: int
    pinned: bool = False
    device_buffers: tuple = field(default=())  # ((runtime, device, buffer), ...) of device snapshots
    pending: tuple = field(default=())  # PendingHostArrays whose copies must land before the buffer is reused
    crcs: Mapping[str, int] = field(default_factory=dict)  # masked CRC32C of host values checksummed while copied


class DeviceSnapshot:
    """A value copied into a device snapshot buffer: a device array whose producer is the capture
    stream (the engine's fence waits for the copy through it)."""

    def __init__(self, view: DeviceView, stream, buffer):
        self._view = DeviceView(view.address, view.dtype, view.shape, view.strides, view.device, self, None,
                                view.runtime)
        self._gpuckpt_stream, self._buffer = stream, buffer  # the buffer lives as long as its values

    def __gpuckpt_device_view__(self) -> DeviceView:
        return self._view

    def copy_to_host(self) -> np.ndarray:
        """The values, copied to host memory (after the snapshot's copy)."""
        from ..arrays import device_bytes

        return device_bytes(self).data.copy_to_host().view(self.dtype).reshape(self.shape)

    @property
    def dtype(self) -> np.dtype:
        return self._view.dtype

    @property
    def shape(self) -> tuple[int, ...]:
        return self._view.shape


class PendingHostArray:
    """A value being copied by DMA into pinned host memory: ``np.asarray`` (``__array__``) waits
    for the copy to land, with a deadline, then gives the host array (no further copy)."""

    def __init__(self, array: np.ndarray, runtime, event, timeout: float, keep: tuple = ()):
        self._array, self._runtime, self._event, self._timeout = array, runtime, event, timeout
        self._keep = keep  # device temporaries the copy reads from, alive until it has landed
        self._landed = False

    @property
    def dtype(self) -> np.dtype:
        return self._array.dtype

    @property
    def shape(self) -> tuple[int, ...]:
        return self._array.shape

    @property
    def nbytes(self) -> int:
        return int(self._array.nbytes)

    def wait(self) -> np.ndarray:
        """The host array, once its copy has landed."""
        if not self._landed:
            self._runtime.host_wait(self._event, self._timeout, "the snapshot's copy to host memory")
            self._landed, self._keep = True, ()
        return self._array

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        array = self.wait()
        return array if dtype is None else array.astype(dtype)


class CapturePool:
    """Host and device buffers for snapshots, reused across saves; at most one set per save in flight."""

    def __init__(self, timeout: float = WAIT_TIMEOUT_S) -> None:
        self._free: list[tuple[np.ndarray, bool]] = []  # (buffer, pinned)
        self._free_device: list[tuple[object, int, object, int]] = []  # (runtime, device, buffer, nbytes)
        self._lock = threading.Lock()
        self.timeout = timeout

    def capture(self, tensors: Mapping[str, object], *, checksum: bool = False) -> Capture:
        """Copy every value now (device values: queued on the device, fenced against their producers).

        With ``checksum``, each host numeric value's masked CRC32C is computed as it is copied, a
        piece at a time while the piece is still in cache (one pass over memory, not two), so the
        engine need not read the snapshot again for it (``Capture.crcs``)."""
        plan, total, device_values = _layout(tensors)
        out: dict[str, object] = {}
        on_host_device: dict[str, DeviceView] = {}  # device values that go through pinned host memory
        device_buffers = []
        try:
            for (runtime, ordinal), members in _by_device(device_values).items():
                need = sum(_rounded(v.nbytes, DEVICE_ALIGN) for _, v in members)
                with runtime.activate(ordinal):
                    if need + SPARE_BYTES <= runtime.free_device_bytes():
                        buffer = self._take_device(runtime, ordinal, need)
                        device_buffers.append((runtime, ordinal, buffer, need))
                        out.update(_snapshot_on_device(runtime, members, buffer))
                    else:
                        on_host_device.update((k, v) for k, v in members)
        except BaseException:
            self._give_back_device(device_buffers)
            raise
        host_total = total + sum(_rounded(v.nbytes, ALIGN) for v in on_host_device.values())
        pending: tuple[PendingHostArray, ...] = ()
        pinned = bool(on_host_device)
        buffer = self._take(host_total, pinned=pinned) if host_total else None
        done = Capture({}, buffer, host_total, pinned, tuple(device_buffers))
        try:
            offset = total
            host_offsets: dict[str, int] = {}  # where each of on_host_device lands in the host buffer
            for key, view in on_host_device.items():
                host_offsets[key] = offset
                offset += _rounded(view.nbytes, ALIGN)
            if on_host_device:
                assert buffer is not None  # host_total counts every value in on_host_device
                out.update(_snapshot_to_host(on_host_device, host_offsets, buffer, self.timeout))
                pending = tuple(v for v in out.values() if isinstance(v, PendingHostArray))
            crcs: dict[str, int] | None = {} if checksum else None
            for key, value in tensors.items():
                if key not in out:
                    out[key] = _copy_one(value, plan.get(key), buffer, crcs, key)
        except BaseException:
            for value in out.values():  # copies already queued land before the buffer goes back
                if isinstance(value, PendingHostArray):
                    value.wait()
            self.release(done)
            raise
        return Capture({k: out[k] for k in tensors}, buffer, host_total, pinned, tuple(device_buffers), pending,
                       crcs if crcs is not None else {})

    def release(self, capture: Capture) -> None:
        """Give a capture's buffers back once its save is committed (or has failed), after any copy
        into them has landed (a save that failed early may not have read every value)."""
        for value in capture.pending:
            value.wait()
        if capture.buffer is not None:
            with self._lock:
                self._free.append((capture.buffer, capture.pinned))
        self._give_back_device(capture.device_buffers)

    def close(self) -> None:
        """Drop the idle buffers (pinned memory is unregistered when they are collected)."""
        with self._lock:
            self._free.clear()
            self._free_device.clear()

    def _give_back_device(self, buffers) -> None:
        with self._lock:
            self._free_device.extend(buffers)

    def _take_device(self, runtime, device: int, nbytes: int):
        with self._lock:
            fitting = [b for b in self._free_device if b[0] is runtime and b[1] == device and b[3] >= nbytes]
            if fitting:
                best = min(fitting, key=lambda b: b[3])
                self._free_device.remove(best)
                return best[2]
            self._free_device = [b for b in self._free_device if not (b[0] is runtime and b[1] == device)]
        return runtime.device_buffer(nbytes)

    def _take(self, nbytes: int, *, pinned: bool) -> np.ndarray:
        with self._lock:
            fitting = [item for item in self._free if item[0].nbytes >= nbytes and item[1] >= pinned]
            if fitting:
                best = min(fitting, key=lambda item: item[0].nbytes)
                self._free.remove(best)
                return best[0]
            self._free.clear()  # too small, or pageable where pinned is needed: let them go
        if pinned:
            from .cuda import default_runtime

            return default_runtime().pinned(nbytes)
        return prefaulted_bytes(nbytes)


def _rounded(n: int, align: int) -> int:
    return -(-int(n) // align) * align


def _layout(tensors: Mapping[str, object]):
    """Offsets of host numeric values in the host buffer, its size, and the device values' views."""
    plan: dict[str, tuple[int, np.ndarray]] = {}
    device: dict[str, DeviceView] = {}
    offset = 0
    for key, value in tensors.items():
        if is_device_array(value):
            device[key] = device_view(value, key)
            continue
        if isinstance(value, (bytes, str)):
            continue
        arr = np.asarray(value)
        if arr.dtype == object:
            continue
        plan[key] = (offset, arr)
        offset += _rounded(arr.nbytes, ALIGN)
    return plan, offset, device


def _by_device(views: dict[str, DeviceView]) -> dict[tuple, list[tuple[str, DeviceView]]]:
    from .cuda import default_runtime

    groups: dict[tuple, list[tuple[str, DeviceView]]] = {}
    for key, view in views.items():
        runtime = view.runtime if view.runtime is not None else default_runtime()
        groups.setdefault((runtime, view.device), []).append((key, view))
    return groups


def _snapshot_on_device(runtime, members, buffer) -> dict[str, object]:
    """One gather launch copies every value into ``buffer``, between the two producer fences."""
    from ..arrays import c_strides
    from ..kernels import gather
    from .cuda import fence_producers, release_producers

    entries, placed, offset = [], [], 0
    for key, view in members:
        shape, strides = view.runs()
        entries.append((view.address, offset, 0, view.nbytes, view.itemsize, shape, strides))
        placed.append((key, view, offset))
        offset += _rounded(view.nbytes, DEVICE_ALIGN)
    table = gather.gather_table(entries)
    stream = runtime.stream()
    producers = fence_producers(runtime, [v for _, v in members], stream)
    if table.shape[0]:
        table_dev = runtime.table_buffer(table.shape[0])
        runtime.upload(table, table_dev, stream)
        runtime.gather(table_dev, table.shape[0], buffer, stream)
    release_producers(runtime, producers, stream)
    base = runtime.address_of(buffer)
    out: dict[str, object] = {}
    for key, view, off in placed:
        snap = DeviceView(base + off, view.dtype, view.shape, c_strides(view.shape, view.itemsize), view.device,
                          buffer, None, view.runtime)
        out[key] = DeviceSnapshot(snap, stream, buffer)
    if any(type(v.owner).__module__.startswith(("jax", "jaxlib")) for _, v in members):
        event = runtime.event()  # XLA cannot be told to wait: hold the call until its arrays are copied
        runtime.record(event, stream)
        runtime.host_wait(event, WAIT_TIMEOUT_S, "the snapshot of JAX arrays")
    return out


def _snapshot_to_host(views: dict[str, DeviceView], offsets: Mapping[str, int], buffer: np.ndarray,
                      timeout: float) -> dict[str, object]:
    """Queue a DMA of each device value into its place (``offsets``) in the pinned buffer (fenced against its
    producers); the values are PendingHostArrays. If queuing fails, wait for what was queued."""
    from .cuda import fence_producers, release_producers

    out: dict[str, object] = {}
    for (runtime, ordinal), members in _by_device(views).items():
        with runtime.activate(ordinal):
            stream = runtime.stream()
            producers = fence_producers(runtime, [v for _, v in members], stream)
            event = runtime.event()
            arrays, keep = {}, []
            try:
                for key, view in members:
                    offset = offsets[key]
                    dst = buffer[offset : offset + view.nbytes]
                    if view.nbytes:
                        keep.append(_c_order_bytes(runtime, view))
                        runtime.download(dst, keep[-1], stream)
                    arrays[key] = dst.view(view.dtype).reshape(view.shape)
            except BaseException:
                runtime.record(event, stream)  # whatever was queued lands before the buffer can go back
                runtime.host_wait(event, timeout, "the snapshot's copies to host memory")
                raise
            runtime.record(event, stream)
            release_producers(runtime, producers, stream)
            out.update((k, PendingHostArray(a, runtime, event, timeout, tuple(keep))) for k, a in arrays.items())
    return out


def _c_order_bytes(runtime, view: DeviceView):
    """Device bytes of ``view`` in C order (packed on the device when strided)."""
    if view.runtime is not None:
        return view.runtime.flat_bytes(view) if not view.contiguous else view.runtime.bytes_of(view)
    from .cuda import device_array_at, flat_bytes, simulated

    if not view.contiguous or simulated():
        return flat_bytes(view)
    return device_array_at(view.address, view.nbytes, view.owner)


def _copy_one(value: object, placed: tuple[int, np.ndarray] | None, buffer: np.ndarray | None,
              crcs: dict[str, int] | None, key: str) -> object:
    """Copy one host value into its place (with ``crcs``, checksumming it on the way when it is a
    C-contiguous numeric array in native byte order: the bytes the engine will write)."""
    if placed is None:  # strings: bytes are immutable; an object array is copied (its items are bytes)
        return np.array(value, dtype=object, copy=True) if isinstance(value, np.ndarray) else value
    offset, arr = placed
    view = buffer[offset : offset + arr.nbytes] if buffer is not None else np.empty(0, np.uint8)
    typed = view.view(arr.dtype).reshape(arr.shape)
    if crcs is not None and arr.flags.c_contiguous and arr.dtype.kind in "biufc" and arr.dtype.isnative:
        crcs[key] = _copy_checksummed(arr.reshape(-1).view(np.uint8), view)
    elif arr.nbytes:
        np.copyto(typed, arr)
    return typed


def _copy_checksummed(source: np.ndarray, dest: np.ndarray) -> int:
    """Copy flat bytes ``source`` into ``dest`` by pieces of ``CRC_PIECE`` bytes, checksumming each piece
    just copied while it is in cache; the masked CRC32C of the bytes."""
    value = 0
    for start in range(0, source.nbytes, CRC_PIECE):
        piece = dest[start : start + CRC_PIECE]
        np.copyto(piece, source[start : start + CRC_PIECE])
        value = crc.crc32c(piece, value)
    return crc.mask(value)
