"""CRC-32C as TensorFlow stores it: masked, little-endian, extendable and combinable.

The raw CRC comes from the ``crc32c`` package (hardware-accelerated, zero-copy on any
buffer, releases the GIL). ``combine`` joins the CRCs of two adjacent byte ranges without
rereading them, which is how parallel (GPU or multi-thread) checksums are assembled.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import crc32c as _crc32c

MASK_DELTA = 0xA282EAD8
POLY = 0x82F63B78  # reflected Castagnoli polynomial
_U32 = 0xFFFFFFFF


# crc32c(data, value=0): the CRC-32C of any buffer, continuing from the CRC ``value`` of earlier bytes
crc32c: Callable[..., int] = _crc32c.crc32c


def mask(crc: int) -> int:
    """TensorFlow's masking of a stored CRC: rotate right by 15, add a constant."""
    crc &= _U32
    return ((((crc >> 15) | (crc << 17)) & _U32) + MASK_DELTA) & _U32


def unmask(masked: int) -> int:
    """Inverse of :func:`mask`."""
    rot = (masked - MASK_DELTA) & _U32
    return ((rot >> 17) | (rot << 15)) & _U32


def masked_crc32c(data) -> int:
    """``mask(crc32c(data))``: what TensorFlow writes beside a block or a tensor (inlined: one call per tensor)."""
    value = _crc32c.crc32c(data)
    return ((((value >> 15) | (value << 17)) & _U32) + MASK_DELTA) & _U32


def _gf2_times(a: int, b: int) -> int:
    """a * b modulo the CRC polynomial, both in the reflected bit order of CRC-32C."""
    m = 1 << 31
    p = 0
    while True:
        if a & m:
            p ^= b
            if (a & (m - 1)) == 0:
                return p
        m >>= 1
        b = (b >> 1) ^ POLY if b & 1 else b >> 1


def _x8n_tables() -> list[int]:
    # _X2N[k] = x^(2^k) mod P. For the Castagnoli polynomial x^(2^31) = x, so the
    # sequence repeats with period 31 (zlib's CRC-32 has period 32: do not port its index).
    table = [1 << 30]  # x^1 in reflected order
    for _ in range(1, 31):
        table.append(_gf2_times(table[-1], table[-1]))
    return table


_X2N = _x8n_tables()


@functools.lru_cache(maxsize=64)
def x8n(n: int) -> int:
    """x^(8n) modulo the polynomial: the multiplier that shifts a CRC past ``n`` zero bytes."""
    p = 1 << 31  # x^0
    k = 3
    while n:
        if n & 1:
            p = _gf2_times(_X2N[k % 31], p)
        n >>= 1
        k += 1
    return p


def combine(crc_a: int, crc_b: int, len_b: int) -> int:
    """CRC of A+B from crc(A), crc(B) and len(B), without touching the bytes."""
    return _gf2_times(x8n(len_b), crc_a) ^ crc_b


def join(pieces: Sequence[tuple[int, int]]) -> int:
    """CRC of consecutive pieces from each one's ``(length, crc)``, in order (0 for none)."""
    if len(pieces) == 1:
        return pieces[0][1]
    value = 0
    for length, part in pieces:
        value = combine(value, part, length)
    return value
