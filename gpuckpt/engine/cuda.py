"""The one place that talks to CUDA (through numba-cuda, and the frameworks' own stream APIs).

:class:`NumbaRuntime` is what the GPU engine runs on: streams, events, device and pinned
memory, copies and the kernels' launches, all asynchronous; the host waits only on events,
and every wait has a deadline (``DeadlineExceededError``). The engine is written against
this small interface so that ``gpuckpt.testing.fake_cuda.FakeRuntime`` can replace it in CI
and run queued work out of order. It also knows who *produces* a device array, so a
snapshot waits for the producer's stream (``producer_stream``): PyTorch's current stream,
CuPy's, the stream an array declared through ``__cuda_array_interface__`` v3, or, for JAX,
``block_until_ready``. numba, torch, cupy and jax are imported lazily, here only.
"""

from __future__ import annotations

import contextlib
import sys
import time

import numpy as np

from .._deps import import_optional
from ..errors import DeadlineExceededError, InvalidArgumentError

WAIT_TIMEOUT_S = 600.0


def _cuda():
    return import_optional("numba.cuda", extra="gpu")


def numba_cuda():
    """Numba's CUDA module (a real device or the simulator); ImportError naming the ``gpu`` extra if absent."""
    return _cuda()


def from_dlpack(value):
    """A CuPy array sharing the memory of a DLPack-only device value (CuPy is needed only for these)."""
    return import_optional("cupy", extra="gpu").from_dlpack(value)


def simulated() -> bool:
    """True when numba runs CUDA in its simulator (NUMBA_ENABLE_CUDASIM=1)."""
    from numba import config

    return bool(config.ENABLE_CUDASIM)  # type: ignore[attr-defined]  # numba sets its config at import


def usable() -> bool:
    """True when Numba's CUDA (a real device, or the simulator) is importable and available."""
    try:
        cuda = _cuda()
    except ImportError:
        return False
    try:
        return bool(cuda.is_available())
    except Exception:
        return False


def cupy_if_usable():
    """The CuPy module when it is installed and sees a GPU, else None (for code that picks an array library)."""
    try:
        cupy = import_optional("cupy", extra="gpu")
        return cupy if cupy.cuda.runtime.getDeviceCount() > 0 else None
    except Exception:  # not installed, or no driver or device
        return None


def device_of_pointer(address: int) -> int:
    """The CUDA ordinal a device pointer belongs to (0 in the simulator, or for a null pointer)."""
    if not address or simulated():
        return 0
    from numba.cuda.cudadrv import driver

    attr = driver.binding.CUpointer_attribute.CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL
    try:
        return int(driver.driver.cuPointerGetAttribute(attr, driver.binding.CUdeviceptr(address)))
    except Exception as exc:  # not device memory this process can see
        raise InvalidArgumentError(f"address {address:#x} is not CUDA device memory: {exc}") from exc


class _Bytes:
    """A flat uint8 ``__cuda_array_interface__`` over raw device memory (for numba's as_cuda_array)."""

    def __init__(self, address: int, nbytes: int, owner: object):
        self.owner = owner
        self.__cuda_array_interface__ = {"data": (address, False), "shape": (nbytes,), "typestr": "|u1",
                                         "version": 3, "strides": None, "stream": None}


def device_array_at(address: int, nbytes: int, owner: object):
    """A numba uint8 device array over ``nbytes`` at ``address`` (no copy; ``owner`` kept alive)."""
    return _cuda().as_cuda_array(_Bytes(address, nbytes, owner))


def flat_bytes(view):
    """C-order bytes of a DeviceView as a flat numba uint8 device array (packed on the device
    by one gather launch when the memory is not C-contiguous)."""
    cuda = _cuda()
    if view.contiguous:
        if simulated():  # simulated device memory is host memory
            from ..kernels.gather import _host_bytes

            return cuda.to_device(_host_bytes(view.address, view.nbytes).copy())
        return device_array_at(view.address, view.nbytes, view.owner)
    from ..kernels import gather

    runtime = NumbaRuntime()
    out = cuda.device_array(max(view.nbytes, 1), np.uint8)
    shape, strides = view.runs()
    table = gather.gather_table([(view.address, 0, 0, view.nbytes, view.itemsize, shape, strides)])
    stream = cuda.stream()
    fence_producers(runtime, [view], stream)
    gather.launch_gather(cuda.to_device(table, stream=stream), table.shape[0], out, stream)
    stream.synchronize()
    return out[: view.nbytes]


# ------------------------------------------------------------------ producers' streams


def producer_stream(runtime, view):
    """The stream whose queued work produces ``view``'s values, as a runtime stream, or None when
    the producer was waited for on the host (JAX) or declared none (legacy default stream)."""
    owner = view.owner
    declared = getattr(owner, "_gpuckpt_stream", None)  # a snapshot: produced by its capture stream
    if declared is not None:
        return declared
    if view.runtime is not None:
        return view.runtime.current_stream(view.device)
    module = type(owner).__module__ or ""
    if module.startswith("torch"):
        torch = sys.modules["torch"]
        return runtime.external_stream(torch.cuda.current_stream(view.device).cuda_stream)
    if module.startswith("cupy"):
        cupy = sys.modules["cupy"]
        return runtime.external_stream(cupy.cuda.get_current_stream().ptr)
    if module.startswith(("jax", "jaxlib")):
        owner.block_until_ready()  # XLA's streams are private: wait for the array's definition event
        return None
    if view.stream is not None:  # CAI v3: 1 is the legacy default stream, 2 the per-thread one
        return runtime.external_stream({1: 0}.get(view.stream, view.stream))
    stream = getattr(owner, "stream", 0)
    return stream if stream else runtime.external_stream(0)


def fence_producers(runtime, views, stream) -> list:
    """Make ``stream`` wait for every producer of ``views`` (an event on each producer's stream, or the
    event a chunked snapshot recorded there at its save call: ``_gpuckpt_ready``); returns the distinct
    producer streams (for :func:`release_producers`)."""
    seen: dict[int, object] = {}
    ready: dict[int, object] = {}
    for view in views:
        recorded = getattr(view.owner, "_gpuckpt_ready", None)
        if recorded is not None:  # its producer is held until the value is copied: never record there now
            ready.setdefault(id(recorded), recorded)
            continue
        producer = producer_stream(runtime, view)
        if producer is not None:
            seen.setdefault(runtime.stream_id(producer), producer)
    for producer in seen.values():
        event = runtime.event()
        runtime.record(event, producer)
        runtime.wait(stream, event)
    for event in ready.values():
        runtime.wait(stream, event)
    return list(seen.values())


def release_producers(runtime, producers, stream) -> None:
    """Make each producer stream wait until ``stream``'s work so far (the snapshot) is done,
    so training cannot overwrite a value before it is copied."""
    if not producers:
        return
    event = runtime.event()
    runtime.record(event, stream)
    for producer in producers:
        runtime.wait(producer, event)


# ------------------------------------------------------------------ the runtime


class NumbaRuntime:
    """CUDA through numba-cuda (or its simulator, where everything runs synchronously)."""

    name = "numba"
    poll_s = 50e-6

    def __init__(self) -> None:
        self.cuda = _cuda()
        self.simulated = simulated()
        self.launches = 0  # kernel launches queued through this runtime (tests count them per slot)

    def device_count(self) -> int:
        return len(self.cuda.gpus)

    def activate(self, device: int):
        """Context manager: make ``device``'s primary context current on this thread."""
        if self.simulated:
            if device != 0:
                raise InvalidArgumentError(f"CUDA device {device} does not exist in the simulator")
            return contextlib.nullcontext()
        return self.cuda.gpus[device]

    def stream(self):
        return self.cuda.stream()

    def external_stream(self, handle: int):
        """A numba stream for a CUstream another library made (0: the legacy default stream)."""
        if not handle or self.simulated:  # the simulator runs everything in order on one stream
            return self.cuda.default_stream()
        return self.cuda.external_stream(handle)

    @staticmethod
    def stream_id(stream) -> int:
        """A key telling streams apart (the CUstream handle; the object in the simulator)."""
        try:
            return int(stream)
        except (TypeError, ValueError):
            return id(stream)

    def event(self):
        return self.cuda.event() if self.simulated else self.cuda.event(timing=False)

    def record(self, event, stream) -> None:
        event.record(stream)

    def wait(self, stream, event) -> None:
        """``stream`` waits on ``event``'s last record (device side; the host goes on)."""
        event.wait(stream)

    def host_wait(self, event, timeout: float, what: str) -> None:
        """Wait on the host for ``event``; DeadlineExceededError after ``timeout`` seconds."""
        if self.simulated:
            event.synchronize()
            return
        deadline = time.monotonic() + timeout
        delay = self.poll_s
        while not event.query():
            if time.monotonic() > deadline:
                raise DeadlineExceededError(f"{what} did not finish on the GPU within {timeout} s")
            time.sleep(delay)
            delay = min(delay * 2, 1e-3)

    def device_buffer(self, nbytes: int):
        return self.cuda.device_array(max(nbytes, 1), np.uint8)

    def pinned(self, nbytes: int) -> np.ndarray:
        return self.cuda.pinned_array(nbytes, np.uint8)

    def upload(self, host: np.ndarray, dev, stream) -> None:
        """Host table -> device (pageable source: the driver copies it before returning)."""
        dev[: host.shape[0]].copy_to_device(np.ascontiguousarray(host), stream=stream)

    def gather(self, table_dev, nrows: int, slot, stream) -> None:
        from ..kernels import gather

        gather.launch_gather(table_dev, nrows, slot, stream)
        self.launches += 1 if nrows else 0

    def gather_crc(self, table_dev, nrows: int, slot, values, stream) -> None:
        """One launch: the table's rows copied into ``slot``, each row's share of its piece's raw CRC-32C
        into ``values`` (device uint32; ``kernels.gather_crc.piece_crcs`` joins them on the host)."""
        from ..kernels import gather_crc

        gather_crc.launch_gather_crc(table_dev, nrows, slot, values, stream)
        self.launches += 1 if nrows else 0

    def scatter(self, table_dev, nrows: int, slot, stream) -> None:
        """The gather's inverse (restores): slot bytes to the tensors the table names."""
        from ..kernels import gather

        gather.launch_scatter(table_dev, nrows, slot, stream)
        self.launches += 1 if nrows else 0

    def download(self, host: np.ndarray, dev, stream) -> None:
        """Device -> host into ``host`` (pinned for an asynchronous copy)."""
        dev[: host.size].copy_to_host(host, stream=stream)

    def copy(self, dst, src, stream) -> None:
        """Device -> device, ``src.size`` bytes into the start of ``dst``."""
        dst[: src.size].copy_to_device(src, stream=stream)

    def table_buffer(self, rows: int):
        from ..kernels import gather

        return self.cuda.device_array((max(rows, 1), gather.COLUMNS), np.int64)

    def free_device_bytes(self) -> int:
        free = self.cuda.current_context().get_memory_info()[0]
        return int(min(free, 1 << 62))

    # -- stream memory operations: a stream waits for a value that another stream writes later
    @property
    def value_waits(self) -> bool:
        """Whether streams can wait on flags written later (cuStreamWaitValue32); never in the simulator,
        which runs everything at once on one stream."""
        if self.simulated:
            return False
        try:
            from cuda.bindings import driver as drv

            return callable(drv.cuStreamWaitValue32) and callable(drv.cuStreamWriteValue32)
        except ImportError:
            return False

    def flags(self, count: int):
        """``count`` zeroed uint32 flags in device memory (for :meth:`write_value` and :meth:`wait_value`)."""
        return self.cuda.to_device(np.zeros(max(count, 1), np.uint32))

    def write_value(self, stream, flags, index: int, value: int) -> None:
        """Once ``stream`` gets here, ``flags[index] = value`` (after the stream's earlier work)."""
        from cuda.bindings import driver as drv

        address = drv.CUdeviceptr(self.address_of(flags) + 4 * index)
        _driver_ok(drv.cuStreamWriteValue32(_cu_stream(stream), address, value & 0xFFFFFFFF, 0), "cuStreamWriteValue32")

    def wait_value(self, stream, flags, index: int, value: int) -> None:
        """``stream``'s later work waits until ``(int32)(flags[index] - value) >= 0`` (cyclic: a generation
        counter may wrap)."""
        from cuda.bindings import driver as drv

        address = drv.CUdeviceptr(self.address_of(flags) + 4 * index)
        geq = drv.CUstreamWaitValue_flags.CU_STREAM_WAIT_VALUE_GEQ
        _driver_ok(drv.cuStreamWaitValue32(_cu_stream(stream), address, value & 0xFFFFFFFF, geq), "cuStreamWaitValue32")

    def release(self, host: np.ndarray) -> None:
        """The engine is done with ``host``'s bytes (the test double poisons them)."""

    def address_of(self, dev) -> int:
        """Device address of a buffer this runtime made."""
        if self.simulated:
            return int(dev._ary.ctypes.data)
        return int(dev.device_ctypes_pointer.value or 0)

    def view_of(self, dev, dtype: np.dtype, shape: tuple[int, ...]):
        """A typed device array over the first bytes of ``dev``."""
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        return dev[:nbytes].view(dtype).reshape(shape)


def _cu_stream(stream):
    """A numba stream's CUstream for cuda-bindings calls (numba keeps a binding object or a ctypes handle)."""
    from cuda.bindings import driver as drv

    handle = stream.handle
    if isinstance(handle, drv.CUstream):
        return handle
    return drv.CUstream(int(getattr(handle, "value", handle) or 0))


def _driver_ok(result, call: str) -> None:
    """Raise InvalidArgumentError when a cuda-bindings driver call did not return CUDA_SUCCESS."""
    code = result[0] if isinstance(result, tuple) else result
    if int(code) != 0:
        raise InvalidArgumentError(f"{call} failed on this GPU: {code!r}")


_DEFAULT: NumbaRuntime | None = None


def default_runtime() -> NumbaRuntime:
    """The process's NumbaRuntime (made on first use)."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = NumbaRuntime()
    return _DEFAULT


# ------------------------------------------------------------------ can the kernels load here?


def isa_of_cuda(version: tuple[int, int]) -> tuple[int, int]:
    """The newest PTX ISA a CUDA release (driver JIT or toolchain) accepts: 13.x -> 9.x, 12.x -> 8.x
    (12.9 accepts 8.8)."""
    major, minor = version[:2]
    if major >= 13:
        return (9 + major - 13, minor)
    if major == 12:
        return (8, min(minor, 8))
    return (7, minor)


def kernel_toolchain_problem(driver: tuple[int, int], ptx_isa: tuple[int, int],
                             nvjitlink: tuple[int, int] | None) -> str | None:
    """Why kernels compiled to ``ptx_isa`` would not load under ``driver``, or None when they will:
    the driver's JIT takes the PTX, or nvJitLink (new enough for that ISA) turns it into SASS first."""
    if ptx_isa <= isa_of_cuda(driver):
        return None
    if nvjitlink is not None and isa_of_cuda(nvjitlink) >= ptx_isa:
        return None
    linker = "no nvJitLink" if nvjitlink is None else f"nvJitLink {nvjitlink[0]}.{nvjitlink[1]}"
    return (f"gpuckpt's kernels compile to PTX ISA {ptx_isa[0]}.{ptx_isa[1]}, but this CUDA {driver[0]}.{driver[1]} "
            f"driver accepts at most {'.'.join(map(str, isa_of_cuda(driver)))} and {linker} is installed; "
            "install an nvJitLink at least as new as NVVM (pip install 'gpuckpt[gpu]', which pins "
            "nvidia-nvjitlink) or an NVVM no newer than the driver")


_TOOLCHAIN_CHECKED = False


def check_kernel_toolchain() -> None:
    """On a real GPU, once per process: InvalidArgumentError if the kernels could not be loaded."""
    global _TOOLCHAIN_CHECKED
    if _TOOLCHAIN_CHECKED or simulated():
        return
    import re

    from numba.cuda.cudadrv import driver

    cuda = _cuda()
    raw = driver.driver.get_version()
    try:
        ptx, _ = cuda.compile_ptx(lambda out: None, "void(int32[::1])", cc=(9, 0))
    except Exception as exc:  # no NVVM/NVRTC: the kernels could not be compiled either
        raise InvalidArgumentError(f"gpuckpt's CUDA kernels cannot be compiled here ({type(exc).__name__}: "
                                   f"{exc}); install gpuckpt[gpu]") from exc
    found = re.search(r"^\.version (\d+)\.(\d+)", ptx, re.M)
    isa = (int(found.group(1)), int(found.group(2))) if found else (0, 0)
    try:
        from cuda.bindings import nvjitlink

        linker = tuple(nvjitlink.version())[:2] if driver._have_nvjitlink() else None  # type: ignore[attr-defined]
    except Exception:
        linker = None
    problem = kernel_toolchain_problem(tuple(raw)[:2], isa, linker)
    if problem:
        raise InvalidArgumentError(problem)
    _TOOLCHAIN_CHECKED = True
