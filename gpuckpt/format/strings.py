"""String tensors (dtype 7): varint lengths, a masked length checksum, then the bytes (docs/format.md §7.2)."""

from __future__ import annotations

import struct
from collections.abc import Sequence

from ..errors import DataLossError
from . import crc, varint


def _length_crc(lengths: Sequence[int]) -> int:
    value = 0
    for n in lengths:
        value = crc.crc32c(struct.pack("<I", n) if n <= 0xFFFFFFFF else struct.pack("<Q", n), value)
    return value


def encode(elements: Sequence[bytes]) -> tuple[bytes, int]:
    """The payload of a string tensor and the masked entry CRC TensorFlow stores for it."""
    lengths = [len(e) for e in elements]
    length_crc = _length_crc(lengths)
    stored = struct.pack("<I", crc.mask(length_crc))
    body = b"".join(elements)
    payload = b"".join(varint.encode(n) for n in lengths) + stored + body
    entry_crc = crc.crc32c(body, crc.crc32c(stored, length_crc))
    return payload, crc.mask(entry_crc)


def decode(
    payload: bytes, count: int, expected_crc: int, *, path: str | None = None, key: str | None = None
) -> list[bytes]:
    """Split a string tensor's payload into ``count`` elements, verifying both checksums."""
    if count == 0 and len(payload) in (0, 4):
        return []
    pos, lengths = 0, []
    for _ in range(count):
        n, pos = varint.decode(payload, pos, len(payload), path=path, what=f"string length of {key!r}")
        lengths.append(n)
    if pos + 4 + sum(lengths) != len(payload):
        raise DataLossError(
            f"string tensor {key!r} in {path!r}: lengths do not add up to its {len(payload)} bytes",
            path=path,
            key=key,
        )
    length_crc = _length_crc(lengths)
    (stored,) = struct.unpack_from("<I", payload, pos)
    if stored != crc.mask(length_crc):
        raise DataLossError(f"string tensor {key!r} in {path!r}: length checksum mismatch", path=path, key=key)
    body = memoryview(payload)[pos + 4 :]
    actual = crc.mask(crc.crc32c(body, crc.crc32c(payload[pos : pos + 4], length_crc)))
    if actual != expected_crc:
        raise DataLossError(
            f"checksum mismatch for string tensor {key!r} in {path!r}: stored {expected_crc:#010x}, "
            f"computed {actual:#010x}",
            path=path,
            key=key,
        )
    out, start = [], 0
    for n in lengths:
        out.append(bytes(body[start : start + n]))
        start += n
    return out
