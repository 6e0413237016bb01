"""The one batching helper of the save and restore rings: every byte of every item once, in order."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpuckpt.engine.batches import slot_batches


@given(st.lists(st.integers(0, 300), max_size=30), st.integers(1, 128))
def test_pieces_cover_every_item_in_order_within_slots(sizes, slot_bytes) -> None:
    batches = slot_batches(sizes, slot_bytes)
    pieces = [p for b in batches for p in b]
    assert all(b for b in batches)
    for batch in batches:
        used = 0
        for p in batch:  # packed from the slot's start, no gaps, never past its end
            assert p.slot_offset == used and 0 <= p.nbytes <= slot_bytes
            used += p.nbytes
        assert used <= slot_bytes
    for index, nbytes in enumerate(sizes):
        mine = [p for p in pieces if p.index == index]
        assert len(mine) == max(1, -(-nbytes // slot_bytes))  # an empty item still has one (empty) piece
        assert [p.start for p in mine] == [k * slot_bytes for k in range(len(mine))]
        assert sum(p.nbytes for p in mine) == nbytes
    assert [p.index for p in pieces] == sorted(p.index for p in pieces)


def test_a_slot_of_no_bytes_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one byte"):
        slot_batches([3], 0)
