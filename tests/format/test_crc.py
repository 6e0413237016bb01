"""Masked CRC32C and the GF(2) combine that parallel checksums rely on."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpuckpt.format import crc


def test_check_value_and_mask_of_nothing() -> None:
    assert crc.crc32c(b"123456789") == 0xE3069283
    assert crc.masked_crc32c(b"") == 0xA282EAD8


@given(st.integers(0, 2**32 - 1))
def test_unmask_inverts_mask(value: int) -> None:
    assert crc.unmask(crc.mask(value)) == value


@given(st.binary(max_size=300), st.binary(max_size=300))
def test_combine_equals_crc_of_concatenation(a: bytes, b: bytes) -> None:
    assert crc.combine(crc.crc32c(a), crc.crc32c(b), len(b)) == crc.crc32c(a + b)


@pytest.mark.parametrize("n", [2**29, 2**31 - 1, 2**31 + 5])
def test_combine_across_huge_lengths(n: int) -> None:
    """The x^(2^k) table has period 31 for CRC-32C; a zlib-style period of 32 breaks at >= 512 MiB."""
    zeros = np.zeros(n, np.uint8)  # calloc'd: reading maps the shared zero page, no RSS growth
    head = b"gpuckpt"
    assert crc.combine(crc.crc32c(head), crc.crc32c(zeros), n) == crc.crc32c(zeros, crc.crc32c(head))
