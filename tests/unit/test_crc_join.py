"""crc.join, the one place pieces' CRCs become a whole range's CRC (reader, GPU engine, GPU ring)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gpuckpt.format import crc


def test_no_pieces_is_the_crc_of_nothing() -> None:
    assert crc.join([]) == crc.crc32c(b"") == 0


def test_one_piece_is_its_own_crc() -> None:
    assert crc.join([(3, crc.crc32c(b"abc"))]) == crc.crc32c(b"abc")


@given(st.lists(st.binary(max_size=64), max_size=8))
def test_pieces_join_to_the_crc_of_their_concatenation(pieces: list[bytes]) -> None:
    assert crc.join([(len(p), crc.crc32c(p)) for p in pieces]) == crc.crc32c(b"".join(pieces))
