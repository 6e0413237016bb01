"""bench/bench_io.py's ``plain+crc32c`` side (the floor a verifying restore is compared with) reads
every byte into its buffer and checks every CRC: odd sizes, empty tensors, batches cut by size and by
count, one thread or two, a flipped byte found and a file cut short refused (no endless loop)."""

from __future__ import annotations

import sys
from pathlib import Path

import crc32c
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
bench_io = pytest.importorskip("bench_io")


def _tensors() -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    sizes = [0, 1, 7, 4096, 0, 1023, 65537, 3, 200_000, 5] + [int(n) for n in rng.integers(1, 3000, 1100)]
    return [rng.integers(0, 256, n, dtype=np.uint8) for n in sizes]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("batch_bytes", [1, 4096, 512 << 10])
def test_every_byte_lands_and_every_crc_is_checked(tmp_path, threads, batch_bytes) -> None:
    values = _tensors()
    path = tmp_path / "plain"
    path.write_bytes(b"".join(v.tobytes() for v in values))
    dests = [np.zeros_like(v) for v in values]
    bench_io.plain_read_checked(str(path), dests, [crc32c.crc32c(v) for v in values], threads, batch_bytes)
    assert all(np.array_equal(d, v) for d, v in zip(dests, values))


def test_a_flipped_byte_fails(tmp_path) -> None:
    values = _tensors()
    data = bytearray(b"".join(v.tobytes() for v in values))
    data[len(data) // 2] ^= 1
    path = tmp_path / "plain"
    path.write_bytes(bytes(data))
    with pytest.raises(AssertionError, match="1 tensors failed"):
        bench_io.plain_read_checked(str(path), [np.zeros_like(v) for v in values], [crc32c.crc32c(v) for v in values])


@pytest.mark.parametrize("threads", [1, 2])
def test_a_file_cut_short_is_refused(tmp_path, threads) -> None:
    values = _tensors()
    path = tmp_path / "plain"
    path.write_bytes(b"".join(v.tobytes() for v in values)[:-10])
    with pytest.raises(EOFError, match="ended at byte"):
        bench_io.plain_read_checked(str(path), [np.zeros_like(v) for v in values], [crc32c.crc32c(v) for v in values],
                                    threads)
