"""Save-side kernels: copy an arena's segments to a staging buffer and CRC-32C each segment.

Work is cut into chunks of ``CHUNK_BYTES`` across all segments; one launch covers them all.
Each thread block takes a chunk (grid-stride, at most ``MAX_BLOCKS`` blocks): its threads
read interleaved ``CELL_BYTES`` cells (8-byte words where aligned), copy them, CRC them with
slicing-by-8 tables held in shared memory (see crc32c.thread_chunk_register), and XOR their
registers into a shared word with atomics: one barrier per chunk, no warp shuffles (the
CUDA simulator has none). A second, small kernel shifts every chunk's register to
its segment's end and XORs it into the segment's CRC with an atomic (one thread per chunk).

What is combined are CRC registers (crc32c module): a segment's first chunk starts from
0xFFFFFFFF, the others from 0, and the final xor is folded into the first chunk's share, so
the XOR of the shifted chunk registers is the segment's finalized CRC-32C.

Layout: ``dst`` mirrors ``src`` (segment i occupies dst[off_i : off_i + size_i] too), so a
word read from src is written to the same word of dst. The engine gathers tensors into the
arena in file order, so a staging buffer of the arena's size is the shard's bytes.

The sizes are module-level and read at each call, so tests can shrink them.
"""

from __future__ import annotations

from ._deps import require_numba

require_numba()

import functools  # noqa: E402

import numpy as np  # noqa: E402
from numba import cuda, njit, uint32  # noqa: E402

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
def chunk_kernel(nthreads: int, cell: int, copy: bool):
    """The chunk kernel for a block shape; ``copy`` False makes it CRC-only."""
    return cuda.jit(chunk_kernel_source(nthreads, cell, copy))


def chunk_kernel_source(nthreads: int, cell: int, copy: bool):
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
                src, src64, dst, dst64, a, b, chunk_init(local), t, nthreads, cell, tab, gap, xw, words, copy
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


def _run(src, dst, seg_offsets, seg_sizes, stream, copy: bool, src_name: str = "src") -> np.ndarray:
    src = _launch.device_bytes(src, src_name)
    dst = _launch.device_bytes(dst, "dst") if copy else src
    offsets, sizes = _launch.segment_table(seg_offsets, seg_sizes, src.shape[0], src_name)
    if copy:
        _launch.segment_table(offsets, sizes, dst.shape[0], "dst")
    chunk_bytes = int(CHUNK_BYTES)
    segs, starts = _launch.chunk_table(sizes, chunk_bytes)
    if segs.size == 0:
        return np.zeros(sizes.size, dtype=np.uint32)
    crcs = _launch_kernels(src, dst, offsets, sizes, segs, starts, chunk_bytes, copy, stream)
    result = crcs.copy_to_host(stream=_launch.launch_stream(stream))
    _launch.synchronize(stream)
    return result


def _launch_kernels(src, dst, offsets, sizes, segs, starts, chunk_bytes: int, copy: bool, stream):
    """Enqueue the chunk and combine kernels on ``stream``; returns the device array of CRCs."""
    src64, src_words = _launch.word_view(src, stream)
    dst64, dst_words = _launch.word_view(dst, stream) if copy else (src64, src_words)
    put = functools.partial(_launch.to_device, stream=stream)
    d_offsets, d_sizes, d_segs, d_starts = put(offsets), put(sizes), put(segs), put(starts)
    on = _launch.launch_stream(stream)
    values = cuda.device_array(segs.size, dtype=np.uint32, stream=on)
    crcs = put(np.zeros(sizes.size, dtype=np.uint32))
    nthreads = int(THREADS_PER_BLOCK)
    chunk_kernel(nthreads, int(CELL_BYTES), copy)[min(segs.size, int(MAX_BLOCKS)), nthreads, on](
        src, src64, dst, dst64, d_offsets, d_sizes, d_segs, d_starts, chunk_bytes, src_words and dst_words, values
    )
    combine_kernel[-(-segs.size // COMBINE_THREADS), COMBINE_THREADS, on](
        values, d_segs, d_starts, d_sizes, chunk_bytes, crcs
    )
    return crcs


class CrcArgs:
    """The CRC launches' device tables for one fixed segment layout, uploaded once and reused
    (the engine's cached pointer tables keep one per staging batch): no allocation per launch."""

    def __init__(self, offsets, sizes, length: int, stream=None):
        self.offsets, self.sizes = _launch.segment_table(offsets, sizes, length, "segments")
        self.chunk_bytes = int(CHUNK_BYTES)
        self.segs, self.starts = _launch.chunk_table(self.sizes, self.chunk_bytes)
        put = functools.partial(_launch.to_device, stream=stream)
        self.d_offsets, self.d_sizes = put(self.offsets), put(self.sizes)
        self.d_segs, self.d_starts = put(self.segs), put(self.starts)
        self.values = cuda.device_array(max(self.segs.size, 1), dtype=np.uint32, stream=_launch.launch_stream(stream))
        self.zeros = np.zeros(max(self.sizes.size, 1), dtype=np.uint32)
        self.crcs = put(self.zeros)


def launch_crc(buf, args: CrcArgs, stream) -> object:
    """Enqueue the CRC of ``args``' segments of ``buf`` on ``stream``; returns the device uint32 CRCs
    (raw, unmasked), valid once the stream gets there."""
    src64, words = _launch.word_view(buf, stream)
    on = _launch.launch_stream(stream)
    args.crcs.copy_to_device(args.zeros, stream=on)  # the combine kernel XORs into zeros
    if args.segs.size == 0:
        return args.crcs
    nthreads = int(THREADS_PER_BLOCK)
    chunk_kernel(nthreads, int(CELL_BYTES), False)[min(args.segs.size, int(MAX_BLOCKS)), nthreads, on](
        buf, src64, buf, src64, args.d_offsets, args.d_sizes, args.d_segs, args.d_starts, args.chunk_bytes, words,
        args.values
    )
    combine_kernel[-(-args.segs.size // COMBINE_THREADS), COMBINE_THREADS, on](
        args.values, args.d_segs, args.d_starts, args.d_sizes, args.chunk_bytes, args.crcs
    )
    return args.crcs


def pack_crc(src, dst, seg_offsets, seg_sizes, stream=None) -> np.ndarray:
    """Copy each segment src[off:off+size] to dst[off:off+size] and return its raw CRC-32C.

    ``src``/``dst``: 1-D uint8 arrays the device can address (numba device arrays, CuPy,
    ``cuda.mapped_array`` host memory; a plain or merely pinned NumPy array is refused on a
    GPU). ``seg_offsets``/``seg_sizes``: host int64 sequences. Returns uint32[n_segments],
    unmasked (crc32c of b"" is 0). Launches on ``stream`` and waits for it before returning.
    """
    return _run(src, dst, seg_offsets, seg_sizes, stream, copy=True)


def crc_segments(buf, seg_offsets, seg_sizes, stream=None) -> np.ndarray:
    """Raw CRC-32C (uint32, unmasked) of each segment buf[off:off+size], copying nothing."""
    return _run(buf, None, seg_offsets, seg_sizes, stream, copy=False, src_name="buf")


@njit
def _emulate(
    src, src64, dst, dst64, offsets, sizes, segs, starts, chunk_bytes, nthreads, cell, tab, gap, xw, x2n, words, copy,
    out,
):
    """Both kernels' work, chunk by chunk and thread by thread, XOR-ing into ``out``."""
    for c in range(segs.shape[0]):
        seg = segs[c]
        local = starts[c]
        a = offsets[seg] + local
        length = min(chunk_bytes, sizes[seg] - local)
        value = uint32(0)
        for t in range(nthreads):
            reg = thread_chunk_register(
                src, src64, dst, dst64, a, a + length, chunk_init(local), t, nthreads, cell, tab, gap, xw, words, copy
            )
            value = uint32(value ^ reg)
        out[seg] ^= chunk_contribution(value, local, length, sizes[seg], x2n)


def pack_crc_cpu(src: np.ndarray, dst: np.ndarray | None, seg_offsets, seg_sizes) -> np.ndarray:
    """The launches of pack_crc (or of crc_segments when ``dst`` is None) emulated with ``njit``.

    Same device functions, chunking, cells and tables, one thread at a time on the CPU: how
    large inputs are tested without a GPU. ``src``/``dst`` are NumPy uint8 arrays.
    """
    copy = dst is not None
    dst = src if dst is None else dst
    nthreads, cell, chunk_bytes = int(THREADS_PER_BLOCK), int(CELL_BYTES), int(CHUNK_BYTES)
    _check_shape(nthreads, cell)
    offsets, sizes = _launch.segment_table(seg_offsets, seg_sizes, min(src.size, dst.size), "src/dst")
    segs, starts = _launch.chunk_table(sizes, chunk_bytes)
    gap, xw = chunk_tables(nthreads, cell)
    words = src.ctypes.data % 8 == 0 and dst.ctypes.data % 8 == 0 and src.size >= 8 and dst.size >= 8
    src64 = src[: src.size // 8 * 8].view(np.uint64) if words else np.zeros(1, np.uint64)
    dst64 = dst[: dst.size // 8 * 8].view(np.uint64) if words else src64
    out = np.zeros(sizes.size, dtype=np.uint32)
    _emulate(
        src, src64, dst, dst64, offsets, sizes, segs, starts, chunk_bytes, nthreads, cell,
        SLICING_TABLES, gap, xw, X2N, words, copy, out,
    )
    return out
