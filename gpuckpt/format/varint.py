"""Unsigned LEB128 varints, the integer encoding of SSTable records."""

from __future__ import annotations

from ..errors import DataLossError


def encode(value: int) -> bytes:
    """Encode a non-negative integer as a varint (7 bits per byte, low group first)."""
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def decode(buf, pos: int, limit: int, *, path: str | None = None, what: str = "varint") -> tuple[int, int]:
    """Decode a varint at ``buf[pos:limit]``; return (value, next position). Bounded to 10 bytes."""
    result = 0
    shift = 0
    while pos < limit and shift <= 63:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
    raise DataLossError(f"malformed {what} in {path!r}: runs past its block or exceeds 64 bits", path=path)
