"""Gather and scatter kernels: copy many tensors (any strides) into one staging slot, or back out
of it, in a single launch each.

The engine describes a slot with a *pointer table*, one int64 row per chunk of at most
``CHUNK_BYTES`` (built by ``gather_table``; the rows of one tensor follow each other):

    0 src     device address of the tensor's element 0
    1 dst     byte offset of the row's first byte in the slot
    2 nbytes  bytes the row copies
    3 start   the row's first byte within the tensor's C-order bytes
    4 item    0 for a contiguous tensor (a plain byte range), else its element size
    5 ndim    dims of the strided layout (at most MAX_DIMS), then shape[MAX_DIMS], strides[MAX_DIMS]
    18 local  the row's first byte within its entry (a piece: the bytes of one tensor in the slot)
    19 whole  the entry's bytes (with ``local``, what ``kernels.gather_crc`` needs to checksum pieces)

Sources are read through their addresses, so one launch serves thousands of tensors with no
per-tensor Python, any dtype (bfloat16 and float8 are just bytes here) and non-contiguous
layouts such as channels_last, which are written in C order. On a GPU the loads are LLVM
``inttoptr`` loads (generic address space); in numba's simulator they are ctypes reads of host
memory, where simulated device arrays live. ``gather_host`` is the NumPy reference that the
test double (gpuckpt.testing.fake_cuda) runs; tests check the kernel against it.
``scatter_kernel`` (reference ``scatter_host``) runs the same table the other way, slot to
tensors, for restores: bytes in C order land in destinations of any layout.
"""

from __future__ import annotations

from ._deps import require_numba

require_numba()

import ctypes  # noqa: E402

import numpy as np  # noqa: E402
from numba import cuda  # noqa: E402

from . import _launch  # noqa: E402

MAX_DIMS = 6
LOCAL = 6 + 2 * MAX_DIMS  # column: the row's first byte within its entry
WHOLE = LOCAL + 1  # column: the entry's bytes
COLUMNS = WHOLE + 1
CHUNK_BYTES = 64 * 1024  # one block per chunk row; small tensors are one row each
THREADS_PER_BLOCK = 4 if _launch.simulated() else 256
MAX_BLOCKS = 8192


if _launch.simulated():

    def load_u8(address):
        """The byte at a (host) address: the simulator's device memory is host memory."""
        return ctypes.c_uint8.from_address(int(address)).value

    def load_u64(address):
        return ctypes.c_uint64.from_address(int(address)).value

    def store_u8(address, value):
        """Write one byte at a (host) address."""
        ctypes.c_uint8.from_address(int(address)).value = int(value)

    def store_u64(address, value):
        ctypes.c_uint64.from_address(int(address)).value = int(value)

else:
    from llvmlite import ir  # noqa: E402
    from numba.cuda import types  # noqa: E402
    from numba.cuda.extending import intrinsic  # noqa: E402

    def _loader(width: int, result):
        def typer(typingctx, address):
            def codegen(context, builder, signature, args):
                pointer = builder.inttoptr(args[0], ir.IntType(width).as_pointer())
                return builder.load(pointer, align=width // 8)

            return result(types.int64), codegen

        return typer

    def _storer(width: int, value_type):
        def typer(typingctx, address, value):
            def codegen(context, builder, signature, args):
                pointer = builder.inttoptr(args[0], ir.IntType(width).as_pointer())
                builder.store(args[1], pointer, align=width // 8)
                return context.get_dummy_value()

            return types.void(types.int64, value_type), codegen

        return typer

    # numba.cuda.types defines its number types at import time, which mypy cannot see
    load_u8 = intrinsic(_loader(8, types.uint8))  # type: ignore[attr-defined]
    load_u64 = intrinsic(_loader(64, types.uint64))  # type: ignore[attr-defined]
    store_u8 = intrinsic(_storer(8, types.uint8))  # type: ignore[attr-defined]
    store_u64 = intrinsic(_storer(64, types.uint64))  # type: ignore[attr-defined]


@cuda.jit(device=True)
def element_offset(table, r, ndim, element):
    """Byte offset of C-order element ``element`` in row ``r``'s strided layout (shape and strides in the row)."""
    off = 0
    for k in range(ndim - 1, -1, -1):
        size = table[r, 6 + k]
        off += (element % size) * table[r, 6 + MAX_DIMS + k]
        element //= size
    return off


@cuda.jit(device=True)
def copy_row(table, r, dst, dst64, words, t, n):
    """Thread ``t`` of ``n``'s share of copying row ``r`` into ``dst``: 8-byte words where source and
    destination are both aligned (and ``words``: dst64 is a view of an 8-aligned dst), else bytes;
    strided rows element by element (C order)."""
    src = table[r, 0]
    d = table[r, 1]
    nbytes = table[r, 2]
    start = table[r, 3]
    item = table[r, 4]
    if item == 0:
        a = src + start
        head = 0
        if words and a % 8 == 0 and d % 8 == 0:
            head = nbytes // 8 * 8
            w0 = d // 8
            for w in range(t, nbytes // 8, n):
                dst64[w0 + w] = load_u64(a + 8 * w)
        for i in range(head + t, nbytes, n):
            dst[d + i] = load_u8(a + i)
    else:
        ndim = table[r, 5]
        first = start // item
        for e in range(t, nbytes // item, n):
            off = element_offset(table, r, ndim, first + e)
            o = d + e * item
            for b in range(item):
                dst[o + b] = load_u8(src + off + b)


def gather_kernel_source(table, dst, dst64):
    """Block b copies rows b, b + gridDim, ...; threads split a row by words (aligned) or elements."""
    t = cuda.threadIdx.x
    n = cuda.blockDim.x
    for r in range(cuda.blockIdx.x, table.shape[0], cuda.gridDim.x):
        copy_row(table, r, dst, dst64, True, t, n)


gather_kernel = cuda.jit(gather_kernel_source)


def scatter_kernel_source(table, src, src64):
    """The gather run backwards: each row's slot bytes are stored to its tensor's (strided) memory."""
    t = cuda.threadIdx.x
    n = cuda.blockDim.x
    for r in range(cuda.blockIdx.x, table.shape[0], cuda.gridDim.x):
        dst = table[r, 0]
        d = table[r, 1]
        nbytes = table[r, 2]
        start = table[r, 3]
        item = table[r, 4]
        if item == 0:
            a = dst + start
            head = 0
            if a % 8 == 0 and d % 8 == 0:
                head = nbytes // 8 * 8
                w0 = d // 8
                for w in range(t, nbytes // 8, n):
                    store_u64(a + 8 * w, src64[w0 + w])
            for i in range(head + t, nbytes, n):
                store_u8(a + i, src[d + i])
        else:
            ndim = table[r, 5]
            first = start // item
            for e in range(t, nbytes // item, n):
                off = element_offset(table, r, ndim, first + e)
                o = d + e * item
                for b in range(item):
                    store_u8(dst + off + b, src[o + b])


scatter_kernel = cuda.jit(scatter_kernel_source)


def gather_table(entries, chunk_bytes: int | None = None) -> np.ndarray:
    """Rows for ``entries``: (src address, dst offset in the slot, start byte, nbytes, itemsize,
    shape, strides) where shape/strides are the merged layout (``DeviceView.runs``) and a
    contiguous entry has one dim of stride itemsize. Chunks of strided entries end on elements."""
    chunk = int(chunk_bytes or CHUNK_BYTES)
    rows: list[list[int]] = []
    for src, dst, start, nbytes, itemsize, shape, strides in entries:
        contiguous = len(shape) == 1 and strides[0] == itemsize
        if not contiguous and len(shape) > MAX_DIMS:
            raise ValueError(f"a layout of {len(shape)} non-mergeable dims (at most {MAX_DIMS})")
        step = chunk if contiguous else max(itemsize, chunk // itemsize * itemsize)
        for off in range(0, nbytes, step):
            row = [src, dst + off, min(step, nbytes - off), start + off, 0 if contiguous else itemsize]
            row += [0 if contiguous else len(shape)]
            row += list(shape) + [1] * (MAX_DIMS - len(shape)) if not contiguous else [1] * MAX_DIMS
            row += list(strides) + [0] * (MAX_DIMS - len(strides)) if not contiguous else [0] * MAX_DIMS
            rows.append(row + [off, nbytes])
    return np.array(rows, dtype=np.int64).reshape(-1, COLUMNS)


def launch_gather(table_dev, nrows: int, dst, stream) -> None:
    """Enqueue one gather launch on ``stream`` for the first ``nrows`` rows of ``table_dev``."""
    if nrows == 0:
        return
    dst64 = dst[: dst.shape[0] // 8 * 8].view(np.uint64)
    on = _launch.launch_stream(stream)
    gather_kernel[min(nrows, int(MAX_BLOCKS)), int(THREADS_PER_BLOCK), on](table_dev[:nrows], dst, dst64)


def launch_scatter(table_dev, nrows: int, src, stream) -> None:
    """Enqueue one scatter launch on ``stream``: slot ``src`` to the tensors the rows name."""
    if nrows == 0:
        return
    src64 = src[: src.shape[0] // 8 * 8].view(np.uint64)
    on = _launch.launch_stream(stream)
    scatter_kernel[min(nrows, int(MAX_BLOCKS)), int(THREADS_PER_BLOCK), on](table_dev[:nrows], src, src64)


def _host_bytes(address: int, nbytes: int) -> np.ndarray:
    return np.ctypeslib.as_array((ctypes.c_uint8 * max(nbytes, 1)).from_address(address))[:nbytes]


def gather_host(table: np.ndarray, dst: np.ndarray) -> None:
    """What one gather launch does, with NumPy on host addresses (the reference executor)."""
    for row in np.asarray(table, dtype=np.int64):
        src, d, nbytes, start, item, ndim = (int(x) for x in row[:6])
        if item == 0:
            dst[d : d + nbytes] = _host_bytes(src + start, nbytes)
            continue
        shape = tuple(int(x) for x in row[6 : 6 + ndim])
        strides = tuple(int(x) for x in row[6 + MAX_DIMS : 6 + MAX_DIMS + ndim])
        span = sum((s - 1) * st for s, st in zip(shape, strides)) + item
        base = _host_bytes(src, span)
        elems = np.lib.stride_tricks.as_strided(base, shape + (item,), strides + (1,)).reshape(-1, item)
        first = start // item
        dst[d : d + nbytes] = elems[first : first + nbytes // item].reshape(-1)


def scatter_host(table: np.ndarray, src: np.ndarray) -> None:
    """What one scatter launch does, with NumPy on host addresses (the reference executor)."""
    for row in np.asarray(table, dtype=np.int64):
        dst, d, nbytes, start, item, ndim = (int(x) for x in row[:6])
        if item == 0:
            _host_bytes(dst + start, nbytes)[:] = src[d : d + nbytes]
            continue
        shape = tuple(int(x) for x in row[6 : 6 + ndim])
        strides = tuple(int(x) for x in row[6 + MAX_DIMS : 6 + MAX_DIMS + ndim])
        span = sum((s - 1) * st for s, st in zip(shape, strides)) + item
        elems = np.lib.stride_tricks.as_strided(_host_bytes(dst, span), shape + (item,), strides + (1,))
        first = start // item
        flat = elems.reshape(-1, item) if elems.flags.c_contiguous else None
        if flat is not None:
            flat[first : first + nbytes // item] = src[d : d + nbytes].reshape(-1, item)
            continue
        for e in range(nbytes // item):  # a strided destination: element by element
            index = np.unravel_index(first + e, shape)
            elems[index] = src[d + e * item : d + (e + 1) * item]
