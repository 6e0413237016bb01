"""Gather + CRC-32C in one launch: every piece of a staging slot is copied from its tensor into the
slot and checksummed in the same kernel, driven by the gather's pointer table (``kernels.gather``).

Block b takes rows b, b + gridDim, ... (a row is at most ``gather.CHUNK_BYTES`` of one piece).
Its threads walk the row in interleaved ``CELL_BYTES`` cells, as the CRC kernel does
(``crc32c.thread_chunk_register``), and XOR their registers into a shared word:

* a contiguous row whose source and slot offset are congruent mod 8 (every row of a tensor that
  starts on an allocator boundary and lands on an 8-aligned slot offset) is read once, through its
  source address, a word at a time: each word is stored to the slot and folded into the CRC in the
  same pass;
* any other row (strided: channels_last, transposed views; or a source off the slot's word grid)
  is first copied into the slot by the gather's row copy (``gather.copy_row``: element order, or
  coalesced bytes), then, after a block barrier, checksummed from the slot (bytes the block just
  wrote: a second read of at most one row, 64 KiB, inside the same launch).

Thread 0 then shifts the row's register to the end of its piece (columns ``local`` and ``whole``
of the row) and writes it to ``out[row]``; the XOR of a piece's row values is the piece's raw
CRC-32C (``piece_crcs``). No cross-block combine, no atomics in global memory and no zeroed
output: one launch per slot. ``gather_crc_host`` is the NumPy reference (the fake runtime runs it).

The launch shape is module-level and read at each call, so tests can shrink it.
"""

from __future__ import annotations

from ._deps import require_numba

require_numba()

import functools  # noqa: E402

import numpy as np  # noqa: E402
from numba import cuda, uint32  # noqa: E402

from gpuckpt.format import crc as host_crc  # noqa: E402

from . import _launch  # noqa: E402
from . import gather as _gather  # noqa: E402
from .crc32c import (  # noqa: E402
    SLICING_TABLES,
    X2N,
    chunk_contribution,
    chunk_init,
    gf2_mul,
    mul_by_table,
    thread_chunk_register,
    update_byte,
    update_word,
    update_zeros,
)
from .gather import LOCAL, WHOLE, copy_row, load_u8, load_u64  # noqa: E402
from .pack import chunk_tables  # noqa: E402

THREADS_PER_BLOCK = 4 if _launch.simulated() else 256  # a power of two
CELL_BYTES = 32  # as the CRC kernel: four 8-byte words per thread per turn
MAX_BLOCKS = 16 if _launch.simulated() else 8192  # the simulator runs each block's threads in Python

_TABLE = SLICING_TABLES.size


@cuda.jit(device=True)
def copy_update_at(reg, base, dst, dst64, lo, hi, tab, words):
    """Register after the bytes at addresses base+lo .. base+hi, which are also stored to dst[lo:hi].

    With ``words`` (``base`` and dst64's start 8-aligned) the aligned middle goes a word at a time."""
    reg = uint32(reg)
    i = lo
    if words:
        head = min(hi, (lo + 7) & ~7)
        while i < head:
            b = load_u8(base + i)
            dst[i] = b
            reg = update_byte(reg, b, tab)
            i += 1
        while i + 8 <= hi:
            w = load_u64(base + i)
            dst64[i >> 3] = w
            reg = update_word(reg, w, tab)
            i += 8
    while i < hi:
        b = load_u8(base + i)
        dst[i] = b
        reg = update_byte(reg, b, tab)
        i += 1
    return reg


@cuda.jit(device=True)
def thread_register_at(base, dst, dst64, a, b, init, t, nthreads, cell, tab, gap_tab, xw, words):
    """``crc32c.thread_chunk_register`` for bytes read at base+a .. base+b and copied to dst[a:b]:
    the same cell walk (cells aligned to dst's start) and the same shifts, reading through an address."""
    tile = nthreads * cell
    start = (a // cell + t) * cell
    if start >= b:
        return uint32(0)
    reg = uint32(init) if t == 0 else uint32(0)
    end = min(start + cell, b)
    reg = copy_update_at(reg, base, dst, dst64, max(start, a), end, tab, words)
    start += tile
    while start < b:
        reg = mul_by_table(reg, gap_tab)
        end = min(start + cell, b)
        reg = copy_update_at(reg, base, dst, dst64, start, end, tab, words)
        start += tile
    rest = b - end
    whole = rest // cell
    reg = update_zeros(reg, rest - whole * cell, tab)
    if whole > 0:
        reg = gf2_mul(xw[whole], reg)
    return uint32(reg)


def _check_shape(nthreads: int, cell: int) -> None:
    if nthreads < 1 or nthreads & (nthreads - 1):
        raise ValueError(f"THREADS_PER_BLOCK must be a power of two, got {nthreads}")
    if cell < 8 or cell % 8:
        raise ValueError(f"CELL_BYTES must be a positive multiple of 8, got {cell}")


def gather_crc_kernel_source(nthreads: int, cell: int):
    """Python source of the fused kernel, with the block shape and tables baked in as constants."""
    _check_shape(nthreads, cell)
    tab_const = SLICING_TABLES
    gap_const, xw_const = chunk_tables(nthreads, cell)
    gap_size = gap_const.size

    def kernel(table, slot, slot64, words, out):
        tab = cuda.shared.array(_TABLE, uint32)
        gap = cuda.shared.array(gap_size, uint32)
        xw = cuda.shared.array(nthreads, uint32)
        acc = cuda.shared.array(2, uint32)
        t = cuda.threadIdx.x
        for i in range(t, _TABLE, nthreads):
            tab[i] = tab_const[i]
        for i in range(t, gap_size, nthreads):
            gap[i] = gap_const[i]
        xw[t] = xw_const[t]
        if t == 0:
            acc[0] = 0
        cuda.syncthreads()
        k = 0  # acc is double-buffered: one barrier per row (see pack.chunk_kernel_source)
        for r in range(cuda.blockIdx.x, table.shape[0], cuda.gridDim.x):
            d = table[r, 1]
            nbytes = table[r, 2]
            local = table[r, LOCAL]
            base = table[r, 0] + table[r, 3] - d  # the source byte of slot byte i is at base + i
            init = chunk_init(local)
            if table[r, 4] == 0 and words and base % 8 == 0:  # one pass: read, store, checksum
                reg = thread_register_at(base, slot, slot64, d, d + nbytes, init, t, nthreads, cell, tab, gap, xw,
                                         True)
            else:  # strided or off the word grid: copy the row, then checksum it from the slot
                copy_row(table, r, slot, slot64, words, t, nthreads)
                cuda.syncthreads()  # the row's value is block-uniform, so every thread gets here
                reg = thread_chunk_register(slot, slot64, slot, slot64, d, d + nbytes, init, t, nthreads, cell, tab,
                                            gap, xw, words, False)
            if reg != 0:
                cuda.atomic.xor(acc, k, reg)
            if t == 0:
                acc[1 - k] = 0
            cuda.syncthreads()
            if t == 0:
                out[r] = chunk_contribution(acc[k], local, nbytes, table[r, WHOLE], X2N)
            k = 1 - k

    return kernel


@functools.lru_cache(maxsize=None)
def gather_crc_kernel(nthreads: int, cell: int):
    """The fused kernel for a block shape."""
    return cuda.jit(gather_crc_kernel_source(nthreads, cell))


def launch_gather_crc(table_dev, nrows: int, slot, out, stream) -> None:
    """Enqueue one launch on ``stream``: the first ``nrows`` rows of ``table_dev`` are copied into
    ``slot`` and ``out[r]`` (device uint32, at least ``nrows``) gets row r's share of its piece's CRC."""
    if nrows == 0:
        return
    slot64, words = _launch.word_view(slot, stream)
    nthreads = int(THREADS_PER_BLOCK)
    on = _launch.launch_stream(stream)
    gather_crc_kernel(nthreads, int(CELL_BYTES))[min(nrows, int(MAX_BLOCKS)), nthreads, on](
        table_dev[:nrows], slot, slot64, words, out)


def piece_starts(table: np.ndarray) -> np.ndarray:
    """Index of each non-empty piece's first row (its rows follow each other in the table)."""
    return np.flatnonzero(np.asarray(table)[:, LOCAL] == 0)


def piece_crcs(values: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Raw CRC-32C of each non-empty piece: the XOR of its rows' values (``starts`` from ``piece_starts``)."""
    if not starts.size:
        return np.zeros(0, np.uint32)
    return np.bitwise_xor.reduceat(np.asarray(values, np.uint32), starts).astype(np.uint32)


def row_value_host(data, local: int, whole: int) -> int:
    """What the kernel writes for a row holding ``data`` at byte ``local`` of a ``whole``-byte piece."""
    init = 0xFFFFFFFF if local == 0 else 0
    reg = host_crc.crc32c(data, init ^ 0xFFFFFFFF) ^ 0xFFFFFFFF  # the CRC register after data, from init
    tail = whole - local - len(memoryview(data).cast("B"))
    value = host_crc.combine(reg, 0, tail)  # the register shifted past the piece's later bytes
    return value ^ 0xFFFFFFFF if local == 0 else value


def gather_crc_host(table: np.ndarray, slot: np.ndarray, out: np.ndarray) -> None:
    """What one fused launch does, with NumPy on host addresses (the reference executor)."""
    table = np.asarray(table, dtype=np.int64)
    _gather.gather_host(table, slot)
    for r, row in enumerate(table):
        d, nbytes = int(row[1]), int(row[2])
        out[r] = row_value_host(slot[d : d + nbytes], int(row[LOCAL]), int(row[WHOLE]))
