"""The segment CRC32C kernel under Numba's CUDA simulator (and on a real GPU where there is one)."""

from __future__ import annotations

import os

import numpy as np
import pytest

import gpuckpt.format.crc as host_crc

cuda = pytest.importorskip("numba.cuda")
segments = pytest.importorskip("gpuckpt.kernels.segments")


def reference(data: np.ndarray, offsets, sizes) -> list[int]:
    return [host_crc.crc32c(data[o : o + n]) for o, n in zip(offsets, sizes)]


@pytest.fixture
def small_chunks(monkeypatch):
    monkeypatch.setattr(segments, "CHUNK_BYTES", 61)  # odd, so chunks and stripes end unevenly


@pytest.mark.parametrize("size", [0, 1, 3, 4097])
@pytest.mark.parametrize("offset", [0, 1, 7])
def test_odd_sizes_at_unaligned_offsets(monkeypatch, size: int, offset: int) -> None:
    monkeypatch.setattr(segments, "CHUNK_BYTES", 61 if size < 100 else 1021)  # odd: uneven chunks and stripes
    data = np.random.default_rng(size).integers(0, 256, offset + size + 5, dtype=np.uint8)
    got = segments.crc_segments(cuda.to_device(data), [offset], [size])
    assert got.tolist() == reference(data, [offset], [size])


def test_hundreds_of_segments_in_one_launch(small_chunks, monkeypatch) -> None:
    rng = np.random.default_rng(1)
    sizes = rng.integers(0, 40, 300)
    sizes[::37] = 0
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]) + 3
    data = rng.integers(0, 256, int(offsets[-1] + sizes[-1] + 3), dtype=np.uint8)
    launches = []
    kernel = segments._chunk_crcs
    monkeypatch.setattr(segments, "_chunk_crcs", _Counting(kernel, launches))
    got = segments.crc_segments(cuda.to_device(data), offsets, sizes)
    assert got.tolist() == reference(data, offsets, sizes)
    assert launches == [1]


class _Counting:
    def __init__(self, kernel, launches):
        self.kernel, self.launches = kernel, launches

    def __getitem__(self, config):
        self.launches.append(1)
        return self.kernel[config]


def test_one_million_and_three_bytes(monkeypatch) -> None:
    monkeypatch.setattr(segments, "CHUNK_BYTES", 1 << 20)  # few simulated blocks keep this to seconds
    data = np.random.default_rng(2).integers(0, 256, 1_000_003, dtype=np.uint8)
    assert segments.crc_segments(cuda.to_device(data), [0], [data.size]).tolist() == reference(data, [0], [data.size])


def test_slicing_by_4_on_the_cpu_matches_at_every_length() -> None:
    """The same ``register_jitable`` helper, compiled for the CPU with numba.njit."""
    from numba import njit

    crc_bytes = njit(segments.crc_bytes)
    data = np.random.default_rng(3).integers(0, 256, 5000, dtype=np.uint8)
    for start, stop in [(0, 0), (1, 2), (3, 8), (5, 4100), (0, 5000)]:
        assert crc_bytes(data, start, stop, segments.TABLE) == host_crc.crc32c(data[start:stop])


@pytest.mark.parametrize("n", [1, 3, 4096, 2**29, 2**31 - 1, 2**31 + 5])
def test_gf2_shift_matches_the_host_combine(n: int) -> None:
    from numba import njit

    mul = njit(segments.gf2_mul)
    a, b = 0x12345678, 0x9ABCDEF0
    assert mul(host_crc.x8n(n), a) ^ b == host_crc.combine(a, b, n)


def _real_gpu() -> bool:
    return os.environ.get("NUMBA_ENABLE_CUDASIM") == "0" and cuda.is_available()


@pytest.mark.gpu
@pytest.mark.skipif(not _real_gpu(), reason="needs a real CUDA GPU (run with NUMBA_ENABLE_CUDASIM=0)")
def test_full_size_on_a_gpu() -> None:
    rng = np.random.default_rng(4)
    data = rng.integers(0, 256, 256 << 20, dtype=np.uint8)
    sizes = np.array([1, 3, 4097, 1_000_003, (200 << 20) + 1, 5 << 20], np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]) + 1
    got = segments.crc_segments(cuda.to_device(data), offsets, sizes)
    assert got.tolist() == reference(data, offsets, sizes)
