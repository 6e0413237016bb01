"""CRC-32C of many byte segments of one device buffer, in two launches.

1. ``_chunk_crcs``: every segment is cut into ``CHUNK_BYTES`` chunks; one thread block per
   chunk (grid-stride), each thread checksums a contiguous stripe of the chunk with
   slicing-by-4 tables in shared memory, and the stripes are joined in shared memory with the
   GF(2) shift (no warp shuffles, so Numba's CUDA simulator runs it).
2. ``_join_segments``: one thread per segment folds its chunk CRCs together, multiplying by
   x^(8·length) modulo the polynomial (multipliers precomputed on the host).

CRCs here are finalized standard CRC-32C values (the ``crc32c`` package's); TensorFlow's
mask is applied by the caller. Integer arithmetic is cast to uint32 to keep PTX 32-bit.
The helpers are ``register_jitable``: inlined into the kernels, callable from ``numba.njit``
on the CPU (tests use that for large inputs), and compilable to PTX without a driver.
"""

from __future__ import annotations

import numpy as np
from numba import config, cuda, uint32
from numba.extending import register_jitable

from gpuckpt.format import crc as host_crc

CHUNK_BYTES = 1 << 16
# Threads per block, fixed at compile time (shared arrays). The simulator runs every thread as
# a Python thread, so it gets few; a GPU gets enough stripes to keep loads in flight.
THREADS = 4 if config.ENABLE_CUDASIM else 128
POLY = np.uint32(host_crc.POLY)


def _make_tables() -> np.ndarray:
    """Slicing-by-4 tables, flattened: entry [k*256 + n] is the CRC step of byte n then k zero bytes."""
    t = np.zeros((4, 256), np.uint32)
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ host_crc.POLY if c & 1 else c >> 1
        t[0, n] = c
    for k in range(1, 4):
        t[k] = (t[k - 1] >> 8) ^ t[0][t[k - 1] & 0xFF]
    return t.reshape(-1)


TABLE = _make_tables()


@register_jitable
def gf2_mul(a, b):
    """a·b modulo the CRC polynomial, reflected bit order (x^0 is the top bit)."""
    p = uint32(0)
    a = uint32(a)
    b = uint32(b)
    for _ in range(32):
        if a & uint32(0x80000000):
            p ^= b
        a = uint32(a << uint32(1))
        b = uint32((b >> uint32(1)) ^ POLY) if b & uint32(1) else uint32(b >> uint32(1))
    return p


@register_jitable
def crc_bytes(buf, start, stop, table):
    """Finalized CRC-32C of ``buf[start:stop]``: four bytes per step (slicing-by-4), then single bytes."""
    c = uint32(0xFFFFFFFF)
    j = start
    while j + 4 <= stop:
        c ^= uint32(buf[j]) | uint32(buf[j + 1]) << uint32(8) | uint32(buf[j + 2]) << uint32(16) \
            | uint32(buf[j + 3]) << uint32(24)
        c = (table[768 + (c & uint32(0xFF))] ^ table[512 + ((c >> uint32(8)) & uint32(0xFF))]
             ^ table[256 + ((c >> uint32(16)) & uint32(0xFF))] ^ table[c >> uint32(24)])
        j += 4
    while j < stop:
        c = table[(c ^ uint32(buf[j])) & uint32(0xFF)] ^ uint32(c >> uint32(8))
        j += 1
    return c ^ uint32(0xFFFFFFFF)


@cuda.jit
def _chunk_crcs(buf, chunk_starts, chunk_lens, stripe_mults, tail_mults, table_in, out):
    table = cuda.shared.array(1024, dtype=uint32)
    part = cuda.shared.array(THREADS, dtype=uint32)
    tid = cuda.threadIdx.x
    for k in range(tid, 1024, cuda.blockDim.x):
        table[k] = table_in[k]
    cuda.syncthreads()
    chunk = cuda.blockIdx.x
    while chunk < chunk_starts.size:
        start = chunk_starts[chunk]
        n = chunk_lens[chunk]
        stripe = (n + THREADS - 1) // THREADS
        lo = min(start + tid * stripe, start + n)
        hi = min(lo + stripe, start + n)
        part[tid] = crc_bytes(buf, lo, hi, table)
        cuda.syncthreads()
        if tid == 0:
            c = part[0]
            for t in range(1, THREADS):
                t_lo = min(t * stripe, n)
                t_len = min(stripe, n - t_lo)
                if t_len > 0:  # shift c past t_len bytes: full stripes, or the chunk's last one
                    mult = stripe_mults[chunk] if t_len == stripe else tail_mults[chunk]
                    c = gf2_mul(mult, c) ^ part[t]
            out[chunk] = c
        cuda.syncthreads()
        chunk += cuda.gridDim.x


@cuda.jit
def _join_segments(chunk_crcs, first_chunk, num_chunks, mults, out):
    seg = cuda.grid(1)
    if seg < first_chunk.size:
        base = first_chunk[seg]
        c = uint32(0)  # CRC of zero bytes: combining into it yields the first chunk's CRC
        for k in range(num_chunks[seg]):
            c = gf2_mul(mults[base + k], c) ^ chunk_crcs[base + k]
        out[seg] = c


def _chunk_table(offsets: np.ndarray, sizes: np.ndarray):
    starts, lens, first, count = [], [], [], []
    for off, size in zip(offsets.tolist(), sizes.tolist()):
        first.append(len(starts))
        pieces = range(0, size, CHUNK_BYTES) if size else ()
        for s in pieces:
            starts.append(off + s)
            lens.append(min(CHUNK_BYTES, size - s))
        count.append(len(pieces))
    return (np.array(starts, np.int64), np.array(lens, np.int64), np.array(first, np.int64), np.array(count, np.int64))


def crc_segments(buf, seg_offsets, seg_sizes, stream=None) -> np.ndarray:
    """CRC-32C (finalized, unmasked) of ``buf[off:off+size]`` for each segment; ``buf`` is a device uint8 array."""
    seg_offsets = np.asarray(seg_offsets, np.int64)
    seg_sizes = np.asarray(seg_sizes, np.int64)
    out = np.zeros(seg_offsets.size, np.uint32)
    starts, lens, first, count = _chunk_table(seg_offsets, seg_sizes)
    if starts.size == 0:
        return out
    stripes = (lens + THREADS - 1) // THREADS
    tails = lens - (lens - 1) // stripes * stripes
    stripe_mults = np.array([host_crc.x8n(int(s)) for s in stripes], np.uint32)
    tail_mults = np.array([host_crc.x8n(int(t)) for t in tails], np.uint32)
    join_mults = np.array([host_crc.x8n(int(n)) for n in lens], np.uint32)
    kw = {"stream": stream} if stream is not None else {}
    d_chunk = cuda.device_array(starts.size, np.uint32, **kw)
    blocks = min(int(starts.size), 65535)
    _chunk_crcs[blocks, THREADS, stream or 0](
        buf, cuda.to_device(starts, **kw), cuda.to_device(lens, **kw), cuda.to_device(stripe_mults, **kw),
        cuda.to_device(tail_mults, **kw), cuda.to_device(TABLE, **kw), d_chunk,
    )
    d_out = cuda.device_array(seg_offsets.size, np.uint32, **kw)
    threads = 128
    _join_segments[(seg_offsets.size + threads - 1) // threads, threads, stream or 0](
        d_chunk, cuda.to_device(first, **kw), cuda.to_device(count, **kw), cuda.to_device(join_mults, **kw), d_out
    )
    d_out.copy_to_host(out, **kw)
    if stream is not None:
        stream.synchronize()
    out[seg_sizes == 0] = 0
    return out
