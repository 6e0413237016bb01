"""Keys of the pieces of a partitioned tensor, in TensorFlow's OrderedCode encoding (docs/format.md §7.6)."""

from __future__ import annotations

from collections.abc import Sequence

from .bundle import Extent

_FIRST_BYTE_XOR = [0x80, 0xC0, 0xE0, 0xF0, 0xF8, 0xFC, 0xFE, 0xFF, 0xFF, 0xFF]


def _unsigned(x: int) -> bytes:
    body = x.to_bytes((x.bit_length() + 7) // 8, "big") if x else b""
    return bytes([len(body)]) + body


_ESCAPES = {0x00: b"\x00\xff", 0xFF: b"\xff\x00"}


def _string(s: bytes) -> bytes:
    return b"".join(_ESCAPES.get(b, bytes([b])) for b in s) + b"\x00\x01"


def _signed(v: int) -> bytes:
    if -64 <= v < 64:
        return bytes([(v & 0xFF) ^ 0x80])
    n = next(n for n in range(2, 11) if -(1 << (7 * n - 1)) <= v < (1 << (7 * n - 1)))
    raw = bytearray((v & ((1 << (8 * n)) - 1)).to_bytes(n, "big"))
    raw[0] ^= _FIRST_BYTE_XOR[n - 1]
    if n == 9:
        raw[1] ^= 0x80
    elif n == 10:
        raw[1] ^= 0xC0
    return bytes(raw)


def slice_key(full_key: str, extents: Sequence[Extent]) -> bytes:
    """The binary key under which one slice of ``full_key`` is stored."""
    out = _unsigned(0) + _string(full_key.encode("utf-8")) + _unsigned(len(extents))
    for ext in extents:
        out += _signed(ext.start) + _signed(-1 if ext.length is None else ext.length)
    return out
