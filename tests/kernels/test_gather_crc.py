"""The fused gather + CRC kernel (simulator unless a GPU is selected) against the ``crc32c`` package and
its NumPy reference: 1-byte pieces, odd slot offsets, pieces across row boundaries, empty and partial
pieces, strided layouts (channels_last, transposed, every other column), bf16/fp8 integer views."""

from __future__ import annotations

import crc32c as crc32c_pkg
import ml_dtypes
import numpy as np
import pytest

cuda = pytest.importorskip("numba.cuda")
gather = pytest.importorskip("gpuckpt.kernels.gather")
gather_crc = pytest.importorskip("gpuckpt.kernels.gather_crc")

from gpuckpt.kernels import _launch  # noqa: E402

from gpuckpt.arrays import device_view  # noqa: E402


@pytest.fixture
def shape(monkeypatch):
    def set_shape(threads: int = 4, cell: int = 8, max_blocks: int = 3):
        monkeypatch.setattr(gather_crc, "THREADS_PER_BLOCK", threads)
        monkeypatch.setattr(gather_crc, "CELL_BYTES", cell)
        monkeypatch.setattr(gather_crc, "MAX_BLOCKS", max_blocks)

    return set_shape


def plan(arrays, gaps, parts=None, chunk=40):
    """Table rows for ``arrays`` placed in a slot after the given gaps; ``parts[i]``: (start, nbytes) of
    array i to take (default: all of it). Returns the table, the slot size and each piece's C-order bytes."""
    entries, expected, offset = [], [], 0
    for i, a in enumerate(arrays):
        view = device_view(a)
        start, nbytes = parts[i] if parts and parts[i] else (0, view.nbytes)
        offset += gaps[i % len(gaps)]
        entries.append((view.address, offset, start, nbytes, view.itemsize, *view.runs()))
        host = np.ascontiguousarray(a.copy_to_host()).reshape(-1).view(np.uint8)
        expected.append(host[start : start + nbytes].tobytes())
        offset += nbytes
    return gather.gather_table(entries, chunk), offset, entries, expected


def run_fused(table, total, slot_offset=0):
    slot = cuda.to_device(np.full(total + slot_offset, 0xAB, np.uint8))[slot_offset:]
    out = cuda.to_device(np.zeros(max(table.shape[0], 1), np.uint32))
    gather_crc.launch_gather_crc(cuda.to_device(table), table.shape[0], slot, out, 0)
    return slot.copy_to_host(), out.copy_to_host()[: table.shape[0]]


def check(table, total, entries, expected, slot_offset=0):
    got_slot, values = run_fused(table, total, slot_offset)
    nonempty = [k for k, e in enumerate(entries) if e[3]]
    crcs = gather_crc.piece_crcs(values, gather_crc.piece_starts(table))
    assert crcs.tolist() == [crc32c_pkg.crc32c(expected[k]) for k in nonempty]
    for (_, d, _, nbytes, *_), want in zip(entries, expected):
        assert got_slot[d : d + nbytes].tobytes() == want
    if not _launch.simulated():
        return  # the NumPy reference reads sources at their addresses: host memory only
    ref_slot, ref_values = np.full(total, 0xAB, np.uint8), np.zeros(table.shape[0], np.uint32)
    gather_crc.gather_crc_host(table, ref_slot, ref_values)  # the fake runtime's executor agrees
    assert ref_values.tolist() == values.tolist() and ref_slot.tobytes() == got_slot.tobytes()


def test_contiguous_pieces_of_odd_sizes_at_odd_offsets(shape, rng):
    shape()
    sizes = [1, 1, 7, 8, 9, 0, 40, 41, 79, 80, 81, 3, 200, 0, 1]
    host = [rng.integers(0, 256, n, dtype=np.uint8) for n in sizes]
    arrays = [cuda.to_device(h) for h in host]
    table, total, entries, expected = plan(arrays, gaps=[0, 3, 1, 8, 5])
    assert table.shape[0] > gather_crc.MAX_BLOCKS  # blocks loop over rows; pieces cross row boundaries
    check(table, total, entries, expected)


def test_aligned_pieces_take_the_word_path_and_match(shape, rng):
    shape(threads=2, cell=16, max_blocks=2)
    host = [rng.integers(0, 256, n, dtype=np.uint8) for n in (64, 128, 24, 256)]
    arrays = [cuda.to_device(h) for h in host]
    table, total, entries, expected = plan(arrays, gaps=[0], chunk=96)
    assert all((e[0] + e[2] - e[1]) % 8 == 0 for e in entries)  # source and slot congruent mod 8
    check(table, total, entries, expected)


def test_a_slot_off_the_word_grid(shape, rng):
    shape()
    arrays = [cuda.to_device(rng.integers(0, 256, n, dtype=np.uint8)) for n in (33, 64, 5)]
    table, total, entries, expected = plan(arrays, gaps=[0])
    check(table, total, entries, expected, slot_offset=3)  # slot not 8-aligned: no word path anywhere


def test_partial_pieces_of_tensors(shape, rng):
    """A tensor cut over slots: each piece's CRC is of its own bytes (the engine joins them)."""
    shape()
    big = cuda.to_device(rng.integers(0, 256, 500, dtype=np.uint8))
    floats = cuda.to_device(rng.standard_normal(60).astype(np.float32))
    table, total, entries, expected = plan([big, floats, big], gaps=[1, 0, 2], parts=[(256, 200), (64, 96), (3, 1)])
    check(table, total, entries, expected)


def test_strided_layouts_and_narrow_float_views(shape, rng):
    shape(threads=4, cell=8, max_blocks=4)
    nhwc = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    cols = rng.integers(-9, 9, (5, 6)).astype(np.int64)
    bf16 = rng.standard_normal(37).astype(ml_dtypes.bfloat16).view(np.int16)
    fp8 = rng.integers(0, 256, 29, dtype=np.uint8).view(ml_dtypes.float8_e4m3fn).view(np.uint8)
    arrays = [
        cuda.to_device(nhwc).transpose((0, 3, 1, 2)),  # channels_last memory seen as NCHW
        cuda.to_device(cols)[:, ::2],  # every other column
        cuda.to_device(rng.standard_normal((7, 3)).astype(np.float16)).T,  # transposed
        cuda.to_device(bf16),
        cuda.to_device(fp8),
        cuda.to_device(np.zeros((0, 4), np.float32)),
    ]
    assert not device_view(arrays[0]).contiguous and not device_view(arrays[1]).contiguous
    table, total, entries, expected = plan(arrays, gaps=[1, 2, 0])
    assert any(row[4] for row in table)  # strided rows: copied, then checksummed from the slot
    check(table, total, entries, expected)


def test_strided_partial_piece(shape, rng):
    shape()
    t = cuda.to_device(rng.standard_normal((6, 10)).astype(np.float32)).T  # 240 bytes, transposed
    table, total, entries, expected = plan([t, t], gaps=[3, 1], parts=[(0, 120), (120, 120)])
    check(table, total, entries, expected)


def test_empty_tables_and_one_byte(shape):
    shape()
    slot = cuda.to_device(np.zeros(4, np.uint8))
    out = cuda.to_device(np.zeros(1, np.uint32))
    gather_crc.launch_gather_crc(cuda.to_device(np.zeros((1, gather.COLUMNS), np.int64)), 0, slot, out, 0)
    assert gather_crc.piece_crcs(np.zeros(0, np.uint32), np.zeros(0, np.int64)).tolist() == []
    one = cuda.to_device(np.array([0x5A], np.uint8))
    table, total, entries, expected = plan([one], gaps=[1])
    check(table, total, entries, expected)


def test_default_block_shape_and_64_kib_rows(rng):
    """The shipped shape (4 threads in the simulator, 32-byte cells) on rows of the default size."""
    host = rng.integers(0, 256, 70_001, dtype=np.uint8)
    arrays = [cuda.to_device(host), cuda.to_device(host[:13])]
    table, total, entries, expected = plan(arrays, gaps=[5], chunk=gather.CHUNK_BYTES)
    assert table.shape[0] == 3
    check(table, total, entries, expected)


@pytest.mark.gpu
@pytest.mark.slow
def test_full_size_on_a_real_gpu():
    """256 MiB of pieces (1 B to most of it, odd slot offsets, a transposed matrix) on a real GPU."""
    from tests.kernels.test_package import real_gpu_reason

    reason = real_gpu_reason()
    if reason:
        pytest.skip(reason)
    rng = np.random.default_rng(11)
    size = 256 << 20
    sizes = [size - 3_000_000, 1, 3, 1_000_003, 65_536, 65_537, 1_999_990]
    arrays = [cuda.to_device(rng.integers(0, 256, n, dtype=np.uint8)) for n in sizes]
    arrays.append(cuda.to_device(rng.standard_normal((777, 513)).astype(np.float32)).T)
    table, total, entries, expected = plan(arrays, gaps=[0, 1, 5, 8, 3], chunk=gather.CHUNK_BYTES)
    check(table, total, entries, expected)
