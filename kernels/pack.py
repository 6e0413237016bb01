"""CRC-32C kernels: the raw CRC-32C of many segments of one device buffer, in one launch.

Work is cut into chunks of ``CHUNK_BYTES`` across all segments; one launch covers them all.
Each thread block takes a chunk (grid-stride, at most ``MAX_BLOCKS`` blocks): its threads
read interleaved ``CELL_BYTES`` cells (8-byte words where aligned), CRC them with
slicing-by-8 tables held in shared memory (see crc32c.thread_chunk_register), and XOR their
registers into a shared word with atomics: one barrier per chunk, no warp shuffles (the
CUDA simulator has none). A second, small kernel shifts every chunk's register to
its segment's end and XORs it into the segment's CRC with an atomic (one thread per chunk).

What is combined are CRC registers (crc32c module): a segment's first chunk starts from
0xFFFFFFFF, the others from 0, and the final xor is folded into the first chunk's share, so
the XOR of the shifted chunk registers is the segment's finalized CRC-32C.

The GPU save path does not use these kernels: it gathers and checksums each staging slot in one
launch (``kernels.gather_crc``). ``crc_segments`` serves restores (bytes verified on the device
before they reach a variable), the benchmarks and one-off calls. The device functions also take a
destination to copy to (``copy``); these kernels pass the source as destination and never copy.

The sizes are module-level and read at each call, so tests can shrink them.
"""

from __future__ import annotations

from ._deps import require_numba

require_numba()

import functools  # noqa: E402

import numpy as np  # noqa: E402
from numba import cuda, uint32  # noqa: E402

from . import _launch  # noqa: E402
from .crc32c import (  # noqa: E402
    SLICING_TABLES,
    X2N,
    chunk_contribution,
    chunk_init,
    shift_table,
    thread_chunk_register,
    x8n_multiples,
)

CHUNK_BYTES = 256 * 1024  # 1 GiB -> 4096 chunks: enough to fill 132 SMs many times over
# A power of two. The simulator runs each thread as a Python thread, so it gets a few.
THREADS_PER_BLOCK = 4 if _launch.simulated() else 256
CELL_BYTES = 32  # bytes a thread reads per turn: four 8-byte words, a 32-byte sector
MAX_BLOCKS = 8192  # grid cap; blocks loop over the remaining chunks
COMBINE_THREADS = 128

_TABLE = SLICING_TABLES.size


@functools.lru_cache(maxsize=None)
def chunk_tables(nthreads: int, cell: int) -> tuple[np.ndarray, np.ndarray]:
    """(gap_tab, xw) for a block shape: the shift past other threads' cells, x^(8*m*cell)."""
    return shift_table((nthreads - 1) * cell), x8n_multiples(cell, nthreads)


def _check_shape(nthreads: int, cell: int) -> None:
    if nthreads < 1 or nthreads & (nthreads - 1):
        raise ValueError(f"THREADS_PER_BLOCK must be a power of two, got {nthreads}")
    if cell < 8 or cell % 8:
        raise ValueError(f"CELL_BYTES must be a positive multiple of 8, got {cell}")


@functools.lru_cache(maxsize=None)
def chunk_kernel(nthreads: int, cell: int):
    """The chunk kernel for a block shape."""
    return cuda.jit(chunk_kernel_source(nthreads, cell))


def chunk_kernel_source(nthreads: int, cell: int):
    """Python source of the chunk kernel, with the block shape and tables baked in as constants."""
    _check_shape(nthreads, cell)
    tab_const = SLICING_TABLES
    gap_const, xw_const = chunk_tables(nthreads, cell)
    gap_size = gap_const.size

    def kernel(src, src64, dst, dst64, seg_offsets, seg_sizes, chunk_seg, chunk_start, chunk_bytes, words, out):
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
        # acc is double-buffered so one barrier per chunk suffices: chunk k XORs into
        # acc[k % 2], which thread 0 cleared before the barrier that ended chunk k - 1.
        k = 0
        for c in range(cuda.blockIdx.x, chunk_seg.shape[0], cuda.gridDim.x):
            seg = chunk_seg[c]
            local = chunk_start[c]
            a = seg_offsets[seg] + local
            b = a + min(chunk_bytes, seg_sizes[seg] - local)
            reg = thread_chunk_register(
                src, src64, dst, dst64, a, b, chunk_init(local), t, nthreads, cell, tab, gap, xw, words, False
            )
            if reg != 0:
                cuda.atomic.xor(acc, k, reg)
            if t == 0:
                acc[1 - k] = 0
            cuda.syncthreads()
            if t == 0:
                out[c] = acc[k]
            k = 1 - k

    return kernel


def combine_kernel_source(chunk_values, chunk_seg, chunk_start, seg_sizes, chunk_bytes, out):
    """One thread per chunk: XOR the chunk's contribution into its segment's CRC (out starts at 0)."""
    c = cuda.grid(1)
    if c < chunk_values.shape[0]:
        seg = chunk_seg[c]
        local = chunk_start[c]
        length = min(chunk_bytes, seg_sizes[seg] - local)
        cuda.atomic.xor(out, seg, chunk_contribution(chunk_values[c], local, length, seg_sizes[seg], X2N))


combine_kernel = cuda.jit(combine_kernel_source)


def _run(buf, seg_offsets, seg_sizes, stream) -> np.ndarray:
    buf = _launch.device_bytes(buf, "buf")
    offsets, sizes = _launch.segment_table(seg_offsets, seg_sizes, buf.shape[0], "buf")
    chunk_bytes = int(CHUNK_BYTES)
    segs, starts = _launch.chunk_table(sizes, chunk_bytes)
    if segs.size == 0:
        return np.zeros(sizes.size, dtype=np.uint32)
    crcs = _launch_kernels(buf, offsets, sizes, segs, starts, chunk_bytes, stream)
    result = crcs.copy_to_host(stream=_launch.launch_stream(stream))
    _launch.synchronize(stream)
    return result


def _launch_kernels(buf, offsets, sizes, segs, starts, chunk_bytes: int, stream):
    """Enqueue the chunk and combine kernels on ``stream``; returns the device array of CRCs."""
    buf64, words = _launch.word_view(buf, stream)
    put = functools.partial(_launch.to_device, stream=stream)
    d_offsets, d_sizes, d_segs, d_starts = put(offsets), put(sizes), put(segs), put(starts)
    on = _launch.launch_stream(stream)
    values = cuda.device_array(segs.size, dtype=np.uint32, stream=on)
    crcs = put(np.zeros(sizes.size, dtype=np.uint32))
    nthreads = int(THREADS_PER_BLOCK)
    chunk_kernel(nthreads, int(CELL_BYTES))[min(segs.size, int(MAX_BLOCKS)), nthreads, on](
        buf, buf64, buf, buf64, d_offsets, d_sizes, d_segs, d_starts, chunk_bytes, words, values
    )
    combine_kernel[-(-segs.size // COMBINE_THREADS), COMBINE_THREADS, on](
        values, d_segs, d_starts, d_sizes, chunk_bytes, crcs
    )
    return crcs


def crc_segments(buf, seg_offsets, seg_sizes, stream=None) -> np.ndarray:
    """Raw CRC-32C (uint32, unmasked; 0 for an empty segment) of each segment buf[off:off+size].

    ``buf``: a 1-D uint8 array the device can address (numba device arrays, CuPy,
    ``cuda.mapped_array`` host memory; a plain or merely pinned NumPy array is refused on a
    GPU). ``seg_offsets``/``seg_sizes``: host int64 sequences. Launches on ``stream`` and waits
    for it before returning.
    """
    return _run(buf, seg_offsets, seg_sizes, stream)
