"""A CUDA runtime double that runs queued work out of order, for CI without a GPU.

Numba's simulator runs every copy and kernel at once, in call order, so it cannot show a
missing stream wait. :class:`FakeRuntime` implements the interface of
``gpuckpt.engine.cuda.NumbaRuntime`` over host memory, but work queued on a stream only
*runs* later, in an order drawn from a seeded RNG that respects nothing except each stream's
own order and event waits (what CUDA guarantees). Buffers the engine releases are poisoned,
every stream belongs to one device and refuses work queued from another device's context,
and kernels refuse memory of another device. Streams can wait on flags that other streams write
later (``wait_value``/``write_value``, CUDA's stream memory operations) unless
``value_waits=False``. Host waits step the queues until their event completes, with a
deadline. :class:`FakeDeviceArray` is a device array of this runtime (any dtype, any strides);
``launch`` queues a "training kernel" on any stream.

    rt = FakeRuntime(seed=3, devices=2)
    w = rt.array(np.arange(8, dtype=np.float32), device=1)
    rt.launch(rt.current_stream(1), lambda: w.host.__setitem__(slice(None), 0))  # queued, not run
    rt.drain()                                                                  # now it has run
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections import deque
from collections.abc import Callable

import numpy as np

from ..arrays import DeviceView
from ..errors import DeadlineExceededError

POISON = 0xDB


class WrongDeviceError(RuntimeError):
    """Work queued from the wrong device's context, or a kernel given another device's memory."""


class _Signal:
    """One record of an event: done once the stream reaches it."""

    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = False


class FakeEvent:
    def __init__(self) -> None:
        self.last: _Signal | None = None


class FakeStream:
    def __init__(self, runtime: "FakeRuntime", device: int, name: str):
        self.runtime, self.device, self.name = runtime, device, name
        self.queue: deque = deque()

    def __repr__(self) -> str:
        return f"<FakeStream {self.name} on device {self.device}>"


class FakeBuffer:
    """Device memory: a NumPy array on one device (slicing keeps the device)."""

    def __init__(self, array: np.ndarray, device: int):
        self.array, self.device = array, device

    @property
    def shape(self) -> tuple[int, ...]:
        return self.array.shape

    @property
    def size(self) -> int:
        return self.array.size

    def __getitem__(self, index) -> "FakeBuffer":
        return FakeBuffer(self.array[index], self.device)

    def view(self, dtype) -> "FakeBuffer":
        return FakeBuffer(self.array.view(dtype), self.device)

    def reshape(self, *shape) -> "FakeBuffer":
        return FakeBuffer(self.array.reshape(*shape), self.device)

    def copy_to_host(self) -> np.ndarray:
        return self.array.copy()


class FakeDeviceArray:
    """A device array of a FakeRuntime: ``host`` is its memory (read and write it only in
    launched work, as a kernel would)."""

    def __init__(self, runtime: "FakeRuntime", host: np.ndarray, device: int):
        self.runtime, self.host, self.device = runtime, host, device

    @property
    def dtype(self) -> np.dtype:
        return self.host.dtype

    @property
    def shape(self) -> tuple[int, ...]:
        return self.host.shape

    def __gpuckpt_device_view__(self) -> DeviceView:
        h = self.host
        return DeviceView(int(h.__array_interface__["data"][0]), h.dtype, tuple(h.shape), tuple(h.strides),
                          self.device, self, None, self.runtime)

    def copy_to_host(self) -> np.ndarray:
        self.runtime.drain()
        return np.ascontiguousarray(self.host).copy()


class FakeRuntime:
    """Out-of-order CUDA double (see the module docstring); ``eager`` is the chance that queuing work
    also runs some queued work at once, so host code and device work interleave."""

    name = "fake"
    simulated = True

    def __init__(self, seed: int = 0, devices: int = 1, free_bytes: int = 1 << 30, eager: float = 0.5,
                 value_waits: bool = True):
        self.rng = random.Random(seed)
        self.devices, self.free_bytes, self.eager = devices, free_bytes, eager
        self.value_waits = value_waits  # False: a device without stream memory operations
        self._cond = threading.Condition(threading.RLock())
        self._streams: list[FakeStream] = []
        self._local = threading.local()
        self._regions: list[tuple[int, int, int]] = []  # (start, end, device) of every allocation
        self._current = {d: self._new_stream(d, f"producer{d}") for d in range(devices)}
        self.ops_run = 0
        self.launches = 0  # kernels queued by the engine (gather, gather_crc, scatter), as NumbaRuntime counts

    # -- contexts and streams ------------------------------------------------------------
    @contextlib.contextmanager
    def activate(self, device: int):
        if not 0 <= device < self.devices:
            raise WrongDeviceError(f"no fake device {device}")
        previous = getattr(self._local, "device", 0)
        self._local.device = device
        try:
            yield
        finally:
            self._local.device = previous

    def current_device(self) -> int:
        return getattr(self._local, "device", 0)

    def _new_stream(self, device: int, name: str) -> FakeStream:
        stream = FakeStream(self, device, name)
        with self._cond:
            self._streams.append(stream)
        return stream

    def stream(self) -> FakeStream:
        return self._new_stream(self.current_device(), f"s{len(self._streams)}")

    def current_stream(self, device: int) -> FakeStream:
        """The stream the "framework" queues training work on for ``device`` (see ``set_current_stream``)."""
        return self._current[device]

    def set_current_stream(self, device: int, stream: FakeStream) -> None:
        self._current[device] = stream

    @staticmethod
    def stream_id(stream) -> int:
        return id(stream)

    def event(self) -> FakeEvent:
        return FakeEvent()

    # -- queuing and running -------------------------------------------------------------
    def _enqueue(self, stream: FakeStream, kind: str, payload) -> None:
        if stream.device != self.current_device():
            raise WrongDeviceError(f"work for {stream} queued while device {self.current_device()} is current")
        with self._cond:
            stream.queue.append((kind, payload))
            self._cond.notify_all()
            if self.rng.random() < self.eager:
                for _ in range(self.rng.randint(1, 4)):
                    if not self._step():
                        break

    def launch(self, stream: FakeStream, fn: Callable[[], None]) -> None:
        """Queue ``fn`` as a kernel on ``stream`` (from the stream's device)."""
        with self.activate(stream.device):
            self._enqueue(stream, "run", fn)

    def record(self, event: FakeEvent, stream: FakeStream) -> None:
        signal = _Signal()
        event.last = signal
        self._enqueue(stream, "record", signal)

    def wait(self, stream: FakeStream, event: FakeEvent) -> None:
        if event.last is not None:  # as in CUDA, waiting on a never-recorded event waits for nothing
            self._enqueue(stream, "wait", event.last)

    def write_value(self, stream: FakeStream, flags: FakeBuffer, index: int, value: int) -> None:
        """Once ``stream`` gets here, ``flags[index] = value`` (cuStreamWriteValue32)."""
        self._check(stream, flags)
        self._enqueue(stream, "run", lambda: flags.array.__setitem__(index, value & 0xFFFFFFFF))

    def wait_value(self, stream: FakeStream, flags: FakeBuffer, index: int, value: int) -> None:
        """``stream`` waits until ``(int32)(flags[index] - value) >= 0`` (cuStreamWaitValue32, GEQ)."""
        self._check(stream, flags)
        self._enqueue(stream, "value", (flags.array, index, value & 0xFFFFFFFF))

    def flags(self, count: int) -> FakeBuffer:
        return FakeBuffer(np.zeros(max(count, 1), np.uint32), self.current_device())

    @staticmethod
    def _reached(payload) -> bool:
        array, index, value = payload
        return ((int(array[index]) - value) & 0xFFFFFFFF) < 0x80000000

    def _runnable(self) -> list[FakeStream]:
        out = []
        for s in self._streams:
            if s.queue:
                kind, payload = s.queue[0]
                if kind == "wait" and not payload.done or kind == "value" and not self._reached(payload):
                    continue
                out.append(s)
        return out

    def _step(self) -> bool:
        with self._cond:
            ready = self._runnable()
            if not ready:
                return False
            stream = self.rng.choice(ready)
            kind, payload = stream.queue.popleft()
            if kind == "record":
                payload.done = True
            elif kind == "run":
                payload()
            self.ops_run += 1
            self._cond.notify_all()
            return True

    def host_wait(self, event: FakeEvent, timeout: float, what: str) -> None:
        signal = event.last
        if signal is None:
            return
        deadline = time.monotonic() + timeout
        with self._cond:
            while not signal.done:
                if not self._step():
                    if time.monotonic() > deadline:
                        raise DeadlineExceededError(f"{what} did not finish on the fake GPU within {timeout} s")
                    self._cond.wait(0.005)

    def drain(self) -> None:
        """Run everything that can run (what a device synchronize would wait for)."""
        with self._cond:
            while self._step():
                pass

    def pending(self) -> int:
        with self._cond:
            return sum(len(s.queue) for s in self._streams)

    # -- memory ----------------------------------------------------------------------------
    def _register(self, array: np.ndarray, device: int) -> None:
        start = int(array.__array_interface__["data"][0])
        with self._cond:
            self._regions.append((start, start + max(array.nbytes, 1), device))

    def device_of(self, address: int) -> int | None:
        for start, end, device in self._regions:
            if start <= address < end:
                return device
        return None

    def array(self, value: np.ndarray, device: int = 0, layout: tuple[int, ...] | None = None) -> FakeDeviceArray:
        """A device array holding ``value``; ``layout`` stores it in that axis order (e.g. channels_last:
        (0, 2, 3, 1)) and presents it as ``value``'s shape with permuted strides."""
        value = np.asarray(value)
        if layout is None:
            host = value.copy()
        else:
            inverse = np.argsort(layout)
            host = np.ascontiguousarray(value.transpose(layout)).transpose(inverse)
        self._register(host.base if host.base is not None else host, device)
        return FakeDeviceArray(self, host, device)

    def device_buffer(self, nbytes: int) -> FakeBuffer:
        array = np.full(max(nbytes, 1), POISON, np.uint8)
        self._register(array, self.current_device())
        return FakeBuffer(array, self.current_device())

    def table_buffer(self, rows: int) -> FakeBuffer:
        from ..kernels import gather

        array = np.zeros((max(rows, 1), gather.COLUMNS), np.int64)
        return FakeBuffer(array, self.current_device())

    def pinned(self, nbytes: int) -> np.ndarray:
        return np.full(nbytes, POISON, np.uint8)

    def release(self, host: np.ndarray) -> None:
        host[...] = POISON

    def free_device_bytes(self) -> int:
        return self.free_bytes

    def view_of(self, dev: FakeBuffer, dtype, shape) -> FakeDeviceArray:
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        return FakeDeviceArray(self, dev.array[:nbytes].view(dtype).reshape(shape), dev.device)

    def address_of(self, dev: FakeBuffer) -> int:
        return int(dev.array.__array_interface__["data"][0])

    def bytes_of(self, view: DeviceView) -> FakeBuffer:
        """The contiguous memory of ``view`` as a flat uint8 buffer (no copy)."""
        from ..kernels.gather import _host_bytes

        return FakeBuffer(_host_bytes(view.address, view.nbytes), view.device)

    def flat_bytes(self, view: DeviceView) -> FakeBuffer:
        self.drain()
        from ..kernels import gather

        shape, strides = view.runs()
        out = np.zeros(view.nbytes, np.uint8)
        gather.gather_host(gather.gather_table([(view.address, 0, 0, view.nbytes, view.itemsize, shape, strides)]), out)
        return FakeBuffer(out, view.device)

    # -- copies and kernels ----------------------------------------------------------------
    def _check(self, stream: FakeStream, *buffers: FakeBuffer) -> None:
        for b in buffers:
            if b.device != stream.device:
                raise WrongDeviceError(f"memory of device {b.device} used on {stream}")

    def _check_rows(self, table: np.ndarray, stream: FakeStream, kernel: str, access: str) -> None:
        """WrongDeviceError if a row of a pointer table addresses memory of another device than the stream's."""
        for address in table[:, 0]:
            owner = self.device_of(int(address))
            if owner is not None and owner != stream.device:
                raise WrongDeviceError(f"{kernel} on {stream} {access} memory of device {owner}")

    def upload(self, host: np.ndarray, dev: FakeBuffer, stream: FakeStream) -> None:
        self._check(stream, dev)
        staged = np.array(host, copy=True)  # pageable: the driver copies it before returning
        self._enqueue(stream, "run", lambda: dev.array[: staged.shape[0]].__setitem__(Ellipsis, staged))

    def gather(self, table_dev: FakeBuffer, nrows: int, slot: FakeBuffer, stream: FakeStream) -> None:
        from ..kernels import gather

        self._check(stream, table_dev, slot)

        def run() -> None:
            table = table_dev.array[:nrows]
            self._check_rows(table, stream, "gather", "reads")
            gather.gather_host(table, slot.array)

        self._enqueue(stream, "run", run)
        self.launches += 1

    def gather_crc(self, table_dev: FakeBuffer, nrows: int, slot: FakeBuffer, values: FakeBuffer,
                   stream: FakeStream) -> None:
        """The fused gather + CRC launch (``kernels.gather_crc``), run by its NumPy reference."""
        from ..kernels import gather_crc

        self._check(stream, table_dev, slot, values)

        def run() -> None:
            table = table_dev.array[:nrows]
            self._check_rows(table, stream, "gather", "reads")
            gather_crc.gather_crc_host(table, slot.array, values.array)

        self._enqueue(stream, "run", run)
        self.launches += 1

    def scatter(self, table_dev: FakeBuffer, nrows: int, slot: FakeBuffer, stream: FakeStream) -> None:
        from ..kernels import gather

        self._check(stream, table_dev, slot)

        def run() -> None:
            table = table_dev.array[:nrows]
            self._check_rows(table, stream, "scatter", "writes")
            gather.scatter_host(table, slot.array)

        self._enqueue(stream, "run", run)
        self.launches += 1

    def download(self, host: np.ndarray, dev: FakeBuffer, stream: FakeStream) -> None:
        self._check(stream, dev)
        self._enqueue(stream, "run", lambda: host.__setitem__(Ellipsis, dev.array.reshape(-1)[: host.size]))

    def copy(self, dst: FakeBuffer, src: FakeBuffer, stream: FakeStream) -> None:
        self._check(stream, dst, src)
        self._enqueue(stream, "run", lambda: dst.array.__setitem__(slice(0, src.size), src.array))
