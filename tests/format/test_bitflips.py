"""Single-bit flips across a checkpoint's index and data are detected; the rare misses carry no meaning.

Every bit of the index and a broad sample of the data are flipped one at a time. Each flip must
raise DataLossError when the checkpoint is opened and every tensor read. The only flips allowed
to pass are in the footer and leave its two block handles decoding to the same numbers: a bit in
the zero padding, or the continuation bit of a handle's last varint byte (which then absorbs a
padding zero). The test checks that property for each miss, and that every value read is unchanged.
"""

from __future__ import annotations

import numpy as np
import pytest

import gpuckpt
from gpuckpt.format import sstable, varint
from gpuckpt.saver import write_tensors


def _values() -> dict:
    rng = np.random.default_rng(3)
    return {
        "a/.ATTRIBUTES/VARIABLE_VALUE": rng.standard_normal((17, 5)).astype(np.float32),
        "b/.ATTRIBUTES/VARIABLE_VALUE": rng.integers(0, 9, 33).astype(np.int64),
        "s/.ATTRIBUTES/VARIABLE_VALUE": np.array([b"one", b"", b"three"], dtype=object),
        "_CHECKPOINTABLE_OBJECT_GRAPH": b"graph bytes",
        "z/.ATTRIBUTES/VARIABLE_VALUE": np.zeros((0, 3), np.float16),
    }


def _read_everything(prefix) -> dict:
    reader = gpuckpt.load_checkpoint(prefix)
    out = {}
    for key in reader.keys():
        value = reader.get_tensor(key)
        out[key] = value.tolist() if isinstance(value, np.ndarray) else value
    return out


def _handles(index: bytes) -> list[int]:
    pos, out = len(index) - sstable.FOOTER_SIZE, []
    for _ in range(4):
        value, pos = varint.decode(index, pos, len(index))
        out.append(value)
    return out


def _meaningless(index: bytes, pos: int) -> bool:
    """True if flipping any bit at ``pos`` cannot change what a reader decodes from the footer."""
    if pos < len(index) - sstable.FOOTER_SIZE or pos >= len(index) - 8:
        return False
    flipped = [bytearray(index) for _ in range(8)]
    for bit, raw in enumerate(flipped):
        raw[pos] ^= 1 << bit
    return any(_handles(bytes(raw)) == _handles(index) for raw in flipped)


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    prefix = tmp_path_factory.mktemp("flips") / "ck"
    write_tensors(prefix, _values())
    files = {s: (prefix.parent / (prefix.name + s)).read_bytes() for s in (".index", ".data-00000-of-00001")}
    return prefix, files, _read_everything(prefix)


def _sweep(original, suffix: str, positions) -> tuple[int, list[int]]:
    prefix, files, truth = original
    path = prefix.parent / (prefix.name + suffix)
    detected, missed = 0, []
    for pos in positions:
        for bit in (0, 3, 7):
            raw = bytearray(files[suffix])
            raw[pos] ^= 1 << bit
            path.write_bytes(bytes(raw))
            try:
                values = _read_everything(prefix)
            except gpuckpt.DataLossError:
                detected += 1
                continue
            assert values == truth, f"flip at {suffix}[{pos}] bit {bit} returned wrong values"
            missed.append(pos)
    path.write_bytes(files[suffix])
    return detected, missed


def test_every_index_bit_flip_is_detected_or_meaningless(original) -> None:
    index = original[1][".index"]
    detected, missed = _sweep(original, ".index", range(len(index)))
    assert all(_meaningless(index, pos) for pos in missed), sorted(set(missed))
    assert missed, "expected the footer padding to be the (harmless) exception"
    assert detected / (3 * len(index)) > 0.85


def test_data_bit_flips_are_all_detected(original) -> None:
    data = original[1][".data-00000-of-00001"]
    positions = sorted(set(range(0, len(data), 7)) | {0, len(data) - 1})
    detected, missed = _sweep(original, ".data-00000-of-00001", positions)
    assert missed == [] and detected == 3 * len(positions)


def test_truncation_at_every_block_boundary(original) -> None:
    prefix, files, _ = original
    index = files[".index"]
    cuts = {0, 8, 13, len(index) - 48, len(index) - 1}
    cuts |= {c for c in range(len(index)) if c % 64 == 0}
    path = prefix.parent / (prefix.name + ".index")
    for cut in sorted(cuts):
        path.write_bytes(index[:cut])
        with pytest.raises(gpuckpt.DataLossError):
            _read_everything(prefix)
    path.write_bytes(index)
    data_path = prefix.parent / (prefix.name + ".data-00000-of-00001")
    data = files[".data-00000-of-00001"]
    for cut in (0, 1, len(data) // 2, len(data) - 1):
        data_path.write_bytes(data[:cut])
        with pytest.raises(gpuckpt.DataLossError):
            _read_everything(prefix)
    data_path.write_bytes(data)


def _block_boundaries(index: bytes) -> set[int]:
    """Every offset where a block or its 5-byte trailer starts or ends, and the footer's start."""
    table = memoryview(index)
    footer = len(index) - sstable.FOOTER_SIZE
    meta_offset, meta_size, pos = sstable._read_handle(table, footer, len(index) - 8, None)
    index_offset, index_size, _ = sstable._read_handle(table, pos, len(index) - 8, None)
    handles = [(meta_offset, meta_size), (index_offset, index_size)]
    for _, value in sstable._iter_block(sstable.read_block(table, index_offset, index_size, None), None):
        handles.append(sstable._read_handle(value, 0, len(value), None)[:2])
    cuts = {footer}
    for offset, size in handles:
        cuts |= {offset, offset + size, offset + size + sstable.TRAILER_SIZE}
    return cuts


def test_truncation_at_every_block_boundary_of_a_multi_block_checkpoint(tmp_path) -> None:
    values = {f"layer_{i:04d}/kernel/.ATTRIBUTES/VARIABLE_VALUE": np.full((i % 7 + 1,), i, np.float32)
              for i in range(12_000)}  # an index of ~700 KB: several of TF's 256 KiB blocks
    prefix = tmp_path / "big"
    write_tensors(prefix, values)
    index_path, data_path = tmp_path / "big.index", tmp_path / "big.data-00000-of-00001"
    index, data = index_path.read_bytes(), data_path.read_bytes()
    cuts = _block_boundaries(index)
    assert len(cuts) >= 10, "the index should span several blocks"
    for cut in sorted(c for c in cuts if c < len(index)):
        index_path.write_bytes(index[:cut])
        with pytest.raises(gpuckpt.DataLossError):
            _read_everything(prefix)
    index_path.write_bytes(index)
    ends = np.cumsum([v.nbytes for v in values.values()])
    for cut in [0, *ends[:-1:1999], int(ends[-1]) - 1]:  # at tensor boundaries across the file
        data_path.write_bytes(data[:cut])
        with pytest.raises(gpuckpt.DataLossError):
            _read_everything(prefix)
