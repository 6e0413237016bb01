"""CRC-32C device functions that run in CUDA kernels and, unchanged, in ``numba.njit`` code.

Every function below is ``register_jitable``: one Python source serves ``cuda.jit`` kernels,
``njit`` CPU code (so large inputs are testable quickly) and, in the CUDA simulator, plain
Python. Host-side builders of the lookup tables use NumPy.

Conventions, shared by the kernels:

* A *register* is CRC-32C's internal state before the final xor:
  ``crc32c(M) == update(0xFFFFFFFF, M) ^ 0xFFFFFFFF``.
* Registers are linear: ``update(r, A + B) == shift(update(r, A), len(B)) ^ update(0, B)``.
  So pieces are CRC'd independently from register 0 and XOR-ed after each is shifted past the
  bytes that follow it. The identical XOR-of-shifts also combines finalized CRCs, which is
  ``gpuckpt.format.crc.combine``.
* GF(2) polynomials are reflected like the CRC: bit 31 is x^0, bit 0 is x^31.
* Values are cast to ``uint32``/``uint64`` explicitly: numba widens narrower integers to 64 bits.
"""

from __future__ import annotations

from ._deps import require_numba

require_numba()

import numpy as np  # noqa: E402
from numba import uint32, uint64  # noqa: E402
from numba.extending import register_jitable  # noqa: E402

from gpuckpt.format.crc import POLY  # noqa: E402
from gpuckpt.format.crc import x8n as host_x8n  # noqa: E402

ONE = 0x80000000  # the polynomial 1 (x^0) in reflected order
FINAL_XOR = 0xFFFFFFFF
X2N_PERIOD = 31  # x^(2^31) = x mod P for Castagnoli: the square table repeats every 31

_POLY = np.uint32(POLY)
_BYTE = np.uint32(0xFF)
_LOW32 = np.uint64(0xFFFFFFFF)
_S8 = np.uint32(8)
_S16 = np.uint32(16)
_S24 = np.uint32(24)
_S32 = np.uint64(32)


# ---------------------------------------------------------------- host-side tables (NumPy)


def slicing_tables() -> np.ndarray:
    """Slicing-by-8 tables, flat uint32[8 * 256]: entry k*256 + b is table T_k."""
    t0 = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        t0 = np.where(t0 & 1, (t0 >> 1) ^ _POLY, t0 >> 1).astype(np.uint32)
    tables = [t0]
    for _ in range(7):
        prev = tables[-1]
        tables.append(((prev >> 8) ^ t0[prev & 0xFF]).astype(np.uint32))
    return np.concatenate(tables)


def gf2_mul_host(a: int, b: np.ndarray) -> np.ndarray:
    """a * b mod P for one polynomial ``a`` and an array ``b`` (vectorised, host side)."""
    b = np.asarray(b, dtype=np.uint32).copy()
    p = np.zeros_like(b)
    for bit in range(31, -1, -1):
        if (a >> bit) & 1:
            p ^= b
        b = np.where(b & 1, (b >> 1) ^ _POLY, b >> 1).astype(np.uint32)
    return p


def x2n_table() -> np.ndarray:
    """uint32[31]: entry k is x^(2^k) mod P (period 31, see X2N_PERIOD)."""
    table = [1 << 30]  # x^1
    for _ in range(1, X2N_PERIOD):
        table.append(int(gf2_mul_host(table[-1], np.array([table[-1]]))[0]))
    return np.array(table, dtype=np.uint32)


def mul_table(m: int) -> np.ndarray:
    """uint32[4 * 256] for multiplying by the constant ``m`` with four lookups (mul_by_table)."""
    v = np.arange(256, dtype=np.uint32)
    return np.concatenate([gf2_mul_host(m, v << np.uint32(8 * j)) for j in range(4)])


def shift_table(nbytes: int) -> np.ndarray:
    """mul_table that shifts a register past ``nbytes`` zero bytes."""
    return mul_table(host_x8n(nbytes))


def x8n_multiples(step: int, count: int) -> np.ndarray:
    """uint32[count]: entry m is x^(8 * m * step), the shift past m * step bytes."""
    return np.array([host_x8n(m * step) for m in range(count)], dtype=np.uint32)


SLICING_TABLES = slicing_tables()
X2N = x2n_table()


# ---------------------------------------------------------------- device functions


@register_jitable
def gf2_mul(a, b):
    """a * b mod P, both reflected uint32 polynomials."""
    a = uint32(a)
    b = uint32(b)
    p = uint32(0)
    for _ in range(32):
        if a & uint32(ONE):
            p = uint32(p ^ b)
        a = uint32(a << uint32(1))
        if b & uint32(1):
            b = uint32((b >> uint32(1)) ^ _POLY)
        else:
            b = uint32(b >> uint32(1))
    return p


@register_jitable
def x8n(n, x2n):
    """x^(8n) mod P: the multiplier that shifts a register past ``n`` zero bytes (n >= 0)."""
    p = uint32(ONE)
    k = 3  # 8n = n * 2^3
    while n > 0:
        if n & 1:
            p = gf2_mul(x2n[k], p)
        n >>= 1
        k += 1
        if k == X2N_PERIOD:
            k = 0
    return p


@register_jitable
def shift(reg, n, x2n):
    """``reg`` advanced past ``n`` zero bytes; also joins CRCs: crc(A+B) = shift(crc(A), |B|) ^ crc(B)."""
    return gf2_mul(x8n(n, x2n), reg)


@register_jitable
def mul_by_table(reg, table):
    """reg times the constant that ``table`` (from mul_table) was built for."""
    reg = uint32(reg)
    return uint32(
        table[reg & _BYTE]
        ^ table[256 + ((reg >> _S8) & _BYTE)]
        ^ table[512 + ((reg >> _S16) & _BYTE)]
        ^ table[768 + (reg >> _S24)]
    )


@register_jitable
def update_byte(reg, byte, tab):
    """Register after one more byte."""
    reg = uint32(reg)
    return uint32(tab[(reg ^ uint32(byte)) & _BYTE] ^ (reg >> _S8))


@register_jitable
def update_word(reg, word, tab):
    """Register after eight more bytes, given as one little-endian uint64 (slicing-by-8)."""
    lo = uint32(uint32(word & _LOW32) ^ uint32(reg))
    hi = uint32(uint64(word) >> _S32)
    return uint32(
        tab[1792 + (lo & _BYTE)]
        ^ tab[1536 + ((lo >> _S8) & _BYTE)]
        ^ tab[1280 + ((lo >> _S16) & _BYTE)]
        ^ tab[1024 + (lo >> _S24)]
        ^ tab[768 + (hi & _BYTE)]
        ^ tab[512 + ((hi >> _S8) & _BYTE)]
        ^ tab[256 + ((hi >> _S16) & _BYTE)]
        ^ tab[hi >> _S24]
    )


@register_jitable
def update_zeros(reg, n, tab):
    """Register after ``n`` zero bytes, for small ``n`` (a word step per 8 bytes)."""
    while n >= 8:
        reg = update_word(reg, uint64(0), tab)
        n -= 8
    while n > 0:
        reg = update_byte(reg, 0, tab)
        n -= 1
    return uint32(reg)


@register_jitable
def update_range(reg, src, src64, dst, dst64, lo, hi, tab, words, copy):
    """Register after src[lo:hi]; when ``copy``, those bytes also go to dst[lo:hi].

    With ``words`` (src64/dst64 are uint64 views of 8-aligned src/dst), the 8-aligned middle
    is read and written a word at a time; the ragged edges go byte by byte.
    """
    reg = uint32(reg)
    i = lo
    if words:
        head = min(hi, (lo + 7) & ~7)
        reg = update_bytes(reg, src, dst, i, head, tab, copy)
        i = head
        while i + 8 <= hi:
            w = src64[i >> 3]
            if copy:
                dst64[i >> 3] = w
            reg = update_word(reg, w, tab)
            i += 8
    return update_bytes(reg, src, dst, i, hi, tab, copy)


@register_jitable
def update_bytes(reg, src, dst, lo, hi, tab, copy):
    """Register after src[lo:hi] a byte at a time; when ``copy``, those bytes also go to dst."""
    reg = uint32(reg)
    for i in range(lo, hi):
        b = src[i]
        if copy:
            dst[i] = b
        reg = update_byte(reg, b, tab)
    return reg


@register_jitable
def crc_of_range(buf, lo, hi, tab):
    """Finalized CRC-32C of buf[lo:hi], a byte at a time (the reference for one range)."""
    reg = uint32(FINAL_XOR)
    for i in range(lo, hi):
        reg = update_byte(reg, buf[i], tab)
    return uint32(reg ^ uint32(FINAL_XOR))


@register_jitable
def thread_chunk_register(src, src64, dst, dst64, a, b, init, t, nthreads, cell, tab, gap_tab, xw, words, copy):
    """Thread ``t``'s share of the register of src[a:b] started from ``init``; XOR all shares.

    The buffer is cut into ``cell``-byte cells aligned to the buffer's start; thread t takes
    cells a//cell + t, + nthreads, + 2*nthreads, ... so a warp reads adjacent memory. Between
    its cells a thread shifts its register past the (nthreads - 1) * cell bytes of the other
    threads with ``gap_tab``; at the end it shifts past the bytes after its last cell, using
    ``xw[m]`` = x^(8 * m * cell) for whole cells. Thread 0 owns byte ``a`` and starts from init.
    """
    tile = nthreads * cell
    start = (a // cell + t) * cell
    if start >= b:
        return uint32(0)
    reg = uint32(init) if t == 0 else uint32(0)
    end = min(start + cell, b)
    reg = update_range(reg, src, src64, dst, dst64, max(start, a), end, tab, words, copy)
    start += tile
    while start < b:
        reg = mul_by_table(reg, gap_tab)
        end = min(start + cell, b)
        reg = update_range(reg, src, src64, dst, dst64, start, end, tab, words, copy)
        start += tile
    rest = b - end
    whole = rest // cell
    reg = update_zeros(reg, rest - whole * cell, tab)
    if whole > 0:
        reg = gf2_mul(xw[whole], reg)
    return uint32(reg)


@register_jitable
def chunk_contribution(value, chunk_start, chunk_len, seg_size, x2n):
    """A chunk's value shifted to its segment's end, with the final xor folded into chunk 0.

    XOR-ing the contributions of a segment's chunks gives the segment's finalized CRC-32C.
    """
    reg = shift(value, seg_size - chunk_start - chunk_len, x2n)
    if chunk_start == 0:
        reg = uint32(reg ^ uint32(FINAL_XOR))
    return uint32(reg)


@register_jitable
def chunk_init(chunk_start):
    """Starting register of a chunk: the CRC's initial value for a segment's first chunk."""
    return uint32(FINAL_XOR) if chunk_start == 0 else uint32(0)
