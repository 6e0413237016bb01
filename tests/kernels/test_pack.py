"""crc_segments launches (CUDA simulator unless a GPU is selected) and, for large inputs, their CPU twin."""

import crc32c as crc32c_pkg
import numpy as np
import pytest

pytest.importorskip("numba.cuda")

from numba import cuda  # noqa: E402

from gpuckpt.errors import InvalidArgumentError  # noqa: E402
from gpuckpt.kernels import _launch, crc_segments, pack  # noqa: E402
from tests.kernels.cpu_twin import crc_segments_cpu  # noqa: E402


def expected(buf: np.ndarray, offsets, sizes) -> list[int]:
    return [crc32c_pkg.crc32c(buf[o : o + s]) for o, s in zip(offsets, sizes)]


def layout(sizes, rng, start: int = 0, max_gap: int = 9) -> tuple[list[int], int]:
    """Back-to-back offsets with random gaps (so most segments start at odd offsets)."""
    offsets, pos = [], start
    for size in sizes:
        pos += int(rng.integers(0, max_gap + 1))
        offsets.append(pos)
        pos += size
    return offsets, pos + int(rng.integers(0, max_gap + 1))


def assert_crcs(buf: np.ndarray, offsets, sizes) -> None:
    """crc_segments on a device copy of buf matches the reference, and leaves buf as it was."""
    dev = cuda.to_device(buf)
    crcs = crc_segments(dev, offsets, sizes)
    assert crcs.dtype == np.uint32
    assert crcs.tolist() == expected(buf, offsets, sizes)
    np.testing.assert_array_equal(dev.copy_to_host(), buf)


@pytest.mark.parametrize("size", [0, 1, 3, 4097])
def test_single_segment_sizes(size, rng, launch_shape):
    launch_shape(chunk=1024, threads=4, cell=16)
    buf = rng.integers(0, 256, size + 16, dtype=np.uint8)
    assert_crcs(buf, [5], [size])


def test_every_itemsize_at_unaligned_offsets(rng, launch_shape):
    launch_shape(chunk=40, threads=4, cell=8)
    sizes = [itemsize * count for itemsize in (1, 2, 4, 8, 16) for count in (1, 3, 7)]
    offsets, total = layout(sizes, rng, start=1)
    assert_crcs(rng.integers(0, 256, total, dtype=np.uint8), offsets, sizes)


def test_hundreds_of_segments_in_one_launch(rng, launch_shape):
    launch_shape(chunk=48, threads=2, cell=8, max_blocks=8)
    sizes = rng.integers(0, 40, 300).tolist()
    offsets, total = layout(sizes, rng, max_gap=3)
    assert_crcs(rng.integers(0, 256, total, dtype=np.uint8), offsets, sizes)


@pytest.mark.parametrize("threads,cell,chunk", [(1, 8, 13), (8, 8, 100), (4, 32, 1000), (16, 16, 7)])
def test_block_shapes_and_ragged_chunks(threads, cell, chunk, rng, launch_shape):
    launch_shape(chunk=chunk, threads=threads, cell=cell, max_blocks=3)
    sizes = [0, 1, 2, 9, 33, 250]
    offsets, total = layout(sizes, rng)
    assert_crcs(rng.integers(0, 256, total, dtype=np.uint8), offsets, sizes)


def test_unaligned_buffers_fall_back_to_bytes(rng, launch_shape):
    launch_shape(chunk=64, threads=4, cell=8)
    buf = rng.integers(0, 256, 300, dtype=np.uint8)
    whole = cuda.to_device(np.concatenate([[0], buf]).astype(np.uint8))
    src = whole[1:]  # starts off an 8-byte boundary
    assert not _launch.word_view(src, None)[1]
    offsets, sizes = [0, 17, 100], [17, 50, 200]
    assert crc_segments(src, offsets, sizes).tolist() == expected(buf, offsets, sizes)


def test_no_segments_and_only_empty_segments(launch_shape):
    launch_shape()
    buf = cuda.to_device(np.arange(10, dtype=np.uint8))
    assert crc_segments(buf, [], []).tolist() == []
    assert crc_segments(buf, [0, 10, 3], [0, 0, 0]).tolist() == [0, 0, 0]


def test_rejects_bad_arguments(launch_shape):
    launch_shape()
    buf = cuda.to_device(np.zeros(16, dtype=np.uint8))
    with pytest.raises(InvalidArgumentError, match="outside"):
        crc_segments(buf, [10], [7])
    with pytest.raises(InvalidArgumentError, match="2 offsets but 1 sizes"):
        crc_segments(buf, [0, 1], [1])
    with pytest.raises(InvalidArgumentError, match="uint8"):
        crc_segments(cuda.to_device(np.zeros(4, dtype=np.uint32)), [0], [4])
    with pytest.raises(ValueError, match="power of two"):
        pack.chunk_kernel_source(3, 8)


# ---------------------------------------------------------------- CPU twin: large sizes


def test_cpu_twin_one_million_and_three_bytes(rng):
    size = 1_000_003
    buf = rng.integers(0, 256, size + 40, dtype=np.uint8)
    offsets, sizes = [0, 7, 11], [size, 0, size + 40 - 11]
    assert crc_segments_cpu(buf, offsets, sizes).tolist() == expected(buf, offsets, sizes)


@pytest.mark.parametrize("threads,cell,chunk", [(256, 32, 65536), (8, 16, 4099), (32, 8, 1 << 20), (1, 8, 300001)])
def test_cpu_twin_shapes_on_a_large_unaligned_segment(threads, cell, chunk, rng, launch_shape):
    launch_shape(chunk=chunk, threads=threads, cell=cell)
    buf = rng.integers(0, 256, 1_000_003 + 13, dtype=np.uint8)
    offsets, sizes = [13, 5, 1], [1_000_003, 1, 3]
    assert crc_segments_cpu(buf, offsets, sizes).tolist() == expected(buf, offsets, sizes)


def test_cpu_twin_many_dtype_segments(rng):
    sizes = [itemsize * int(count) for itemsize in (1, 2, 4, 8, 16) for count in rng.integers(0, 5000, 40)]
    offsets, total = layout(sizes, rng, start=3)
    buf = rng.integers(0, 256, total, dtype=np.uint8)
    view = buf[1:]  # an odd base address: the byte-only path
    offsets = [o - 1 for o in offsets]
    assert crc_segments_cpu(view, offsets, sizes).tolist() == expected(view, offsets, sizes)
