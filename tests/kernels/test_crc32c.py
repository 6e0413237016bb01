"""The CRC-32C device functions, run on the CPU: as plain Python and compiled with numba.njit."""

import crc32c as crc32c_pkg
import numpy as np
import pytest

pytest.importorskip("numba.cuda")

from numba import njit  # noqa: E402

from gpuckpt.format import crc as ref  # noqa: E402
from gpuckpt.kernels import crc32c as dev  # noqa: E402


@njit
def _shift_njit(reg, n, x2n):
    return dev.shift(reg, n, x2n)


@njit
def _crc_of_range_njit(buf, lo, hi, tab):
    return dev.crc_of_range(buf, lo, hi, tab)


@njit
def _crc_by_words_njit(buf, tab):
    words = buf[: buf.size // 8 * 8].view(np.uint64)
    reg = dev.update_range(np.uint32(0xFFFFFFFF), buf, words, buf, words, 0, buf.size, tab, True, False)
    return reg ^ np.uint32(0xFFFFFFFF)


HUGE_LENGTHS = [2**29 - 1, 2**29, 2**29 + 3, 2**30, 2**30 + 12345, 2**31 - 1, 2**31, 2**31 + 1, 2**33 + 5]


def test_x2n_table_has_period_31():
    x2n = dev.x2n_table()
    assert x2n[0] == 1 << 30  # x^1
    assert int(dev.gf2_mul_host(int(x2n[30]), np.array([x2n[30]]))[0]) == x2n[0]  # x^(2^31) = x


def test_gf2_mul_matches_reference_combine(rng):
    # combine(a, 0, n) is a * x^(8n) in the reference implementation
    for a, n in zip(rng.integers(0, 2**32, size=100, dtype=np.uint64), rng.integers(0, 2**40, size=100)):
        a, n = int(a), int(n)
        assert dev.gf2_mul(ref.x8n(n), a) == ref.combine(a, 0, n)
        assert dev.gf2_mul(a, ref.x8n(n)) == ref.combine(a, 0, n)
        assert dev.gf2_mul_host(ref.x8n(n), np.array([a]))[0] == ref.combine(a, 0, n)


@pytest.mark.parametrize("n", [0, 1, 7, 4096, 1_000_003] + HUGE_LENGTHS)
def test_x8n_matches_reference(n):
    assert dev.x8n(n, dev.X2N) == ref.x8n(n)


@pytest.mark.parametrize("n", [0, 1, 3, 4097] + HUGE_LENGTHS)
def test_shift_combines_like_reference(n, rng):
    a, b = (int(v) for v in rng.integers(0, 2**32, size=2, dtype=np.uint64))
    want = ref.combine(a, b, n)
    assert dev.shift(a, n, dev.X2N) ^ b == want
    assert _shift_njit(np.uint32(a), n, dev.X2N) ^ b == want


@pytest.mark.parametrize("n", [2**29 + 3, 2**31])
def test_shift_joins_real_crcs_past_half_a_gibibyte(n, rng):
    head = rng.integers(0, 256, 1000, dtype=np.uint8)
    zeros = np.zeros(n, dtype=np.uint8)
    crc_head = crc32c_pkg.crc32c(head)
    want = crc32c_pkg.crc32c(zeros, crc_head)
    assert _shift_njit(np.uint32(crc_head), n, dev.X2N) ^ crc32c_pkg.crc32c(zeros) == want


def test_slicing_tables_extend_the_byte_table():
    tab = dev.SLICING_TABLES
    for k in range(1, 8):
        for b in (0, 1, 0x80, 0xFF):
            prev = int(tab[(k - 1) * 256 + b])
            assert tab[k * 256 + b] == (prev >> 8) ^ tab[prev & 0xFF]


@pytest.mark.parametrize("n", [0, 1, 3, 8, 9, 4097])
def test_update_functions_match_crc32c(n, rng):
    buf = rng.integers(0, 256, n, dtype=np.uint8)
    want = crc32c_pkg.crc32c(buf)
    assert dev.crc_of_range(buf, 0, n, dev.SLICING_TABLES) == want
    assert _crc_of_range_njit(buf, 0, n, dev.SLICING_TABLES) == want
    assert _crc_by_words_njit(buf, dev.SLICING_TABLES) == want


def test_mul_table_multiplies_by_its_constant(rng):
    m = ref.x8n(12345)
    table = dev.mul_table(m)
    for reg in rng.integers(0, 2**32, size=50, dtype=np.uint64):
        assert dev.mul_by_table(int(reg), table) == ref.combine(int(reg), 0, 12345)


def test_update_zeros_is_a_shift(rng):
    reg = int(rng.integers(0, 2**32, dtype=np.uint64))
    for n in (0, 1, 7, 8, 31):
        assert dev.update_zeros(reg, n, dev.SLICING_TABLES) == dev.shift(reg, n, dev.X2N)
