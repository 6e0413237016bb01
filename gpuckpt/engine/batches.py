"""How the GPU rings cut tensors into slot-sized batches: one helper for save and restore."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Piece:
    """Bytes ``[start, start + nbytes)`` of item ``index`` (a tensor or a read), at ``slot_offset`` in its slot."""

    index: int
    start: int
    nbytes: int
    slot_offset: int


def slot_batches(sizes: Sequence[int], slot_bytes: int) -> list[list[Piece]]:
    """Cut items of the given sizes into pieces of at most ``slot_bytes``, packed in order into slot-sized
    batches. An empty item gets one empty piece, so every item appears in some batch."""
    if slot_bytes < 1:
        raise ValueError(f"a staging slot must hold at least one byte, got {slot_bytes}")
    batches: list[list[Piece]] = [[]]
    used = 0
    for index, nbytes in enumerate(sizes):
        for start in range(0, max(nbytes, 1), slot_bytes):
            n = min(slot_bytes, nbytes - start)
            if used + n > slot_bytes:
                batches.append([])
                used = 0
            batches[-1].append(Piece(index, start, n, used))
            used += n
    return [b for b in batches if b]
