"""The CRC launches of ``kernels.pack`` emulated with ``njit``, for inputs too large for the simulator.

Same device functions, chunking, cells and tables as the kernels, one thread at a time on the CPU.
"""

from __future__ import annotations

import numpy as np
from numba import njit, uint32

from gpuckpt.kernels import _launch, pack
from gpuckpt.kernels.crc32c import SLICING_TABLES, X2N, chunk_contribution, chunk_init, thread_chunk_register


@njit
def _emulate(buf, buf64, offsets, sizes, segs, starts, chunk_bytes, nthreads, cell, tab, gap, xw, x2n, words, out):
    """Both kernels' work, chunk by chunk and thread by thread, XOR-ing into ``out``."""
    for c in range(segs.shape[0]):
        seg = segs[c]
        local = starts[c]
        a = offsets[seg] + local
        length = min(chunk_bytes, sizes[seg] - local)
        value = uint32(0)
        for t in range(nthreads):
            reg = thread_chunk_register(
                buf, buf64, buf, buf64, a, a + length, chunk_init(local), t, nthreads, cell, tab, gap, xw, words, False
            )
            value = uint32(value ^ reg)
        out[seg] ^= chunk_contribution(value, local, length, sizes[seg], x2n)


def crc_segments_cpu(buf: np.ndarray, seg_offsets, seg_sizes) -> np.ndarray:
    """What ``crc_segments`` returns for the NumPy uint8 array ``buf``, under the current launch shape."""
    nthreads, cell, chunk_bytes = int(pack.THREADS_PER_BLOCK), int(pack.CELL_BYTES), int(pack.CHUNK_BYTES)
    pack._check_shape(nthreads, cell)
    offsets, sizes = _launch.segment_table(seg_offsets, seg_sizes, buf.size, "buf")
    segs, starts = _launch.chunk_table(sizes, chunk_bytes)
    gap, xw = pack.chunk_tables(nthreads, cell)
    words = buf.ctypes.data % 8 == 0 and buf.size >= 8
    buf64 = buf[: buf.size // 8 * 8].view(np.uint64) if words else np.zeros(1, np.uint64)
    out = np.zeros(sizes.size, dtype=np.uint32)
    _emulate(buf, buf64, offsets, sizes, segs, starts, chunk_bytes, nthreads, cell, SLICING_TABLES, gap, xw, X2N,
             words, out)
    return out
