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
* otherwise, where streams can wait on flags written later (``cuStreamWaitValue32``; not in
  Numba's simulator), chunk by chunk through the GPU engine's ring, copying nothing at call
  time: an event is recorded on each producer's stream (the ring's gathers wait on it, so they
  copy the values of the call) and each value gets a :class:`Ticket`, a flag the ring writes on
  the device right after gathering the value's last chunk. The producer's stream waits on one
  ticket per device, written once every value of that device is gathered (``fence=True``, the
  default); with ``fence=False`` the caller waits on each value's own ticket
  (``Capture.tickets[key].wait_on(stream)``) just before it overwrites that value, so training
  is held only until that value's chunk is copied. ``capture`` returns at once, and no memory
  of the state's size is taken: the ring's slots are the only staging;
* otherwise into pinned host memory by DMA, fenced the same way; ``capture`` returns once the
  copies are queued (the training streams wait only until their values are copied), and the
  values are PendingHostArray objects: reading them as NumPy arrays (which the background
  save does) waits for the copies first.

Buffers are handed back for reuse once the files are committed; a steady run of saves
allocates nothing. A capture that fails waits for the copies it queued before its buffers go
back (a released buffer is never still being written).
"""

from __future__ import annotations

import dataclasses
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
    tickets: Mapping[str, "Ticket"] = field(default_factory=dict)  # chunked values: released once copied
    boards: tuple = field(default=())  # the _Boards of the chunked values, one per device
    crcs: Mapping[str, int] = field(default_factory=dict)  # masked CRC32C of host values checksummed while copied


class _ViewedValue:
    """A device value the engines see through ``_view`` (its dtype and shape are the view's)."""

    _view: DeviceView

    def __gpuckpt_device_view__(self) -> DeviceView:
        return self._view

    @property
    def dtype(self) -> np.dtype:
        return self._view.dtype

    @property
    def shape(self) -> tuple[int, ...]:
        return self._view.shape


class DeviceSnapshot(_ViewedValue):
    """A value copied into a device snapshot buffer: a device array whose producer is the capture
    stream (the engine's fence waits for the copy through it)."""

    def __init__(self, view: DeviceView, stream, buffer):
        self._view = DeviceView(view.address, view.dtype, view.shape, view.strides, view.device, self, None,
                                view.runtime)
        self._gpuckpt_stream, self._buffer = stream, buffer  # the buffer lives as long as its values

    def copy_to_host(self) -> np.ndarray:
        """The values, copied to host memory (after the snapshot's copy)."""
        from ..arrays import device_bytes

        return device_bytes(self).data.copy_to_host().view(self.dtype).reshape(self.shape)


class _Board:
    """The flags of one device's chunked snapshots, reused by later captures (each takes the next
    generation, so a flag is never reset); ``written`` is recorded after the last release on a stream."""

    def __init__(self, runtime, device: int):
        self.runtime, self.device = runtime, device
        self.flags, self.size, self.generation = None, 0, 0
        self.stream, self.written = runtime.stream(), runtime.event()

    def next(self, count: int) -> int:
        """The generation of a capture of ``count`` values (flags index 0 .. count - 1, then ``count``: all)."""
        if self.flags is None or self.size < count + 1:
            self.flags, self.size = self.runtime.flags(count + 1), count + 1  # zeroed: below every generation
        self.generation = (self.generation + 1) & 0x7FFFFFFF or 1
        return self.generation

    def mark_written(self, stream) -> None:
        """Record ``written`` after the releases queued on ``stream`` (a later capture reuses the flags)."""
        self.runtime.record(self.written, stream)


class Ticket:
    """One value's release in a chunked snapshot: once ``flags[index]`` reaches ``generation`` (written on
    the device after the ring gathered the value), a stream that waited on it may overwrite the value.
    Released once (the engine's ring releases it; the pool again after the save, for a save that failed)."""

    def __init__(self, board: _Board, index: int, generation: int, done: "Ticket | None" = None):
        self.board, self.index, self.generation, self.done = board, index, generation, done
        self.flags = board.flags
        self.released = False

    def wait_on(self, stream) -> None:
        """``stream``'s later work (training that overwrites the value) waits until the value is copied."""
        self.board.runtime.wait_value(stream, self.flags, self.index, self.generation)

    def release(self, stream) -> None:
        """Once ``stream``'s queued work (the gather of the value) is done, let the waiters go."""
        if not self.released:
            self.released = True
            self.board.runtime.write_value(stream, self.flags, self.index, self.generation)


class ChunkedSnapshot(_ViewedValue):
    """A device value copied later, chunk by chunk, by the background save's ring: the copy waits on
    ``_gpuckpt_ready`` (recorded on the producer's stream at the save call), and the ring releases
    ``_gpuckpt_ticket`` (and, once every value of the device is gathered, ``_gpuckpt_done``)."""

    def __init__(self, view: DeviceView, ready, ticket: Ticket, done: Ticket):
        self._view = dataclasses.replace(view, owner=self)
        self._gpuckpt_ready, self._gpuckpt_ticket, self._gpuckpt_done = ready, ticket, done
        self._source = view.owner  # the user's array stays alive while its values are still to be copied


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
        self._free_boards: list[_Board] = []
        self._lock = threading.Lock()
        self.timeout = timeout

    def capture(self, tensors: Mapping[str, object], fence: bool = True, *, checksum: bool = False) -> Capture:
        """Copy every value now (device values: queued on the device, fenced against their producers), or,
        for a device without spare memory, fence them for a chunked copy by the save's ring (module
        docstring; ``fence=False``: the caller waits on ``Capture.tickets`` before overwriting a value).

        With ``checksum``, each host numeric value's masked CRC32C is computed as it is copied, a
        piece at a time while the piece is still in cache (one pass over memory, not two), so the
        engine need not read the snapshot again for it (``Capture.crcs``)."""
        plan, total, device_values = _layout(tensors)
        out: dict[str, object] = {}
        on_host_device: dict[str, DeviceView] = {}  # device values that go through pinned host memory
        device_buffers = []
        tickets: dict[str, Ticket] = {}
        boards: list[_Board] = []
        try:
            for (runtime, ordinal), members in _by_device(device_values).items():
                need = sum(_rounded(v.nbytes, DEVICE_ALIGN) for _, v in members)
                with runtime.activate(ordinal):
                    if need + SPARE_BYTES <= runtime.free_device_bytes():
                        buffer = self._take_device(runtime, ordinal, need)
                        device_buffers.append((runtime, ordinal, buffer, need))
                        out.update(_snapshot_on_device(runtime, members, buffer))
                    elif _chunkable(runtime, members):
                        boards.append(self._take_board(runtime, ordinal))
                        chunked = _snapshot_in_ring(runtime, members, boards[-1], fence)
                        out.update(chunked)
                        tickets.update((k, v._gpuckpt_ticket) for k, v in chunked.items())
                    else:
                        on_host_device.update((k, v) for k, v in members)
        except BaseException:
            self._give_back_device(device_buffers)
            self._release_tickets(tickets.values(), boards)
            raise
        host_total = total + sum(_rounded(v.nbytes, ALIGN) for v in on_host_device.values())
        pending: tuple[PendingHostArray, ...] = ()
        pinned = bool(on_host_device)
        buffer = self._take(host_total, pinned=pinned) if host_total else None
        done = Capture({}, buffer, host_total, pinned, tuple(device_buffers), (), tickets, tuple(boards))
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
                       tickets, tuple(boards), crcs if crcs is not None else {})

    def release(self, capture: Capture) -> None:
        """Give a capture's buffers back once its save is committed (or has failed), after any copy
        into them has landed (a save that failed early may not have read every value)."""
        for value in capture.pending:
            value.wait()
        if capture.buffer is not None:
            with self._lock:
                self._free.append((capture.buffer, capture.pinned))
        self._give_back_device(capture.device_buffers)
        self._release_tickets(capture.tickets.values(), capture.boards)

    def _release_tickets(self, tickets, boards) -> None:
        """Let every producer still held by a chunked capture go (a save that never reached the ring, or
        failed in it), then take the boards back once their flags are written."""
        done = [t for board in boards for t in _done_tickets(board, tickets)]
        for board in boards:
            with board.runtime.activate(board.device):
                # the ring's releases (marked on its stream) land before the flags can serve another capture
                board.runtime.host_wait(board.written, self.timeout, "the ring's release of a chunked snapshot")
                for ticket in [t for t in tickets if t.board is board] + [t for t in done if t.board is board]:
                    ticket.release(board.stream)
                board.mark_written(board.stream)
                board.runtime.host_wait(board.written, self.timeout, "the release of a chunked snapshot")
        with self._lock:
            self._free_boards.extend(boards)

    def _take_board(self, runtime, device: int) -> _Board:
        with self._lock:
            for board in self._free_boards:
                if board.runtime is runtime and board.device == device:
                    self._free_boards.remove(board)
                    return board
        return _Board(runtime, device)

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


def _chunkable(runtime, members) -> bool:
    """Whether these values can be copied later through the ring: streams can wait on flags, and every
    producer is a stream (XLA's are private: JAX arrays are copied at once instead)."""
    return bool(getattr(runtime, "value_waits", False)) and not any(
        type(v.owner).__module__.startswith(("jax", "jaxlib")) for _, v in members)


def _done_tickets(board: _Board, tickets) -> list[Ticket]:
    """The "every value gathered" tickets of ``board`` among the values' ChunkedSnapshot owners."""
    return list({id(t.done): t.done for t in tickets if t.board is board and t.done is not None}.values())


def _snapshot_in_ring(runtime, members, board: _Board, fence: bool) -> dict[str, ChunkedSnapshot]:
    """No copy now: an event on each producer's stream (the ring's gathers wait on it) and a ticket per
    value; with ``fence`` each producer's stream waits until every value of this device is gathered."""
    from .cuda import producer_stream

    generation = board.next(len(members))
    done = Ticket(board, len(members), generation)
    producers: dict[int, tuple[object, object]] = {}
    out: dict[str, ChunkedSnapshot] = {}
    for index, (key, view) in enumerate(members):
        producer = producer_stream(runtime, view)
        assert producer is not None  # None only for JAX arrays, which _chunkable keeps out
        sid = runtime.stream_id(producer)
        if sid not in producers:
            event = runtime.event()
            runtime.record(event, producer)
            producers[sid] = (producer, event)
        ticket = Ticket(board, index, generation, done)
        out[key] = ChunkedSnapshot(view, producers[sid][1], ticket, done)
    if fence:
        for producer, _ in producers.values():
            done.wait_on(producer)
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
