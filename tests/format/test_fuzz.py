"""Fuzzing the reader: mutated and random files raise only gpuckpt's errors, never allocate more
than the files justify, and never hang (hypothesis deadlines)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gpuckpt
import gpuckpt.arrays
import gpuckpt.reader
from gpuckpt.saver import write_tensors

VALUES = {
    "a": np.arange(40, dtype=np.float32).reshape(8, 5),
    "b": np.array([b"x", b"yy"], dtype=object),
    "c": np.int64(7),
}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    prefix = tmp_path_factory.mktemp("fuzz") / "ck"
    write_tensors(prefix, VALUES, max_shard_size=64)
    return {p.name: p.read_bytes() for p in prefix.parent.iterdir()}


def _exercise(directory, monkeypatch) -> None:
    budget = sum(p.stat().st_size for p in directory.iterdir()) + 4096
    real = gpuckpt.arrays.aligned_empty

    def bounded(shape, dtype, alignment=4096):
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        assert nbytes <= budget, f"allocation of {nbytes} bytes from {budget} bytes of files"
        return real(shape, dtype, alignment)

    monkeypatch.setattr(gpuckpt.reader, "aligned_empty", bounded)
    try:
        reader = gpuckpt.load_checkpoint(directory / "ck")
        for key in reader.keys():
            reader.get_tensor(key)
        reader.debug_string()
        reader.close()
    except gpuckpt.CheckpointError:
        pass


mutation = st.tuples(st.integers(0, 10_000), st.integers(0, 255))


@settings(max_examples=150, deadline=10_000)
@given(
    target=st.sampled_from(["ck.index", "ck.data-00000-of-00003", "ck.data-00002-of-00003"]),
    edits=st.lists(mutation, min_size=1, max_size=6),
    cut=st.none() | st.integers(0, 400),
)
def test_mutated_files(tmp_path_factory, monkeypatch_session, pristine, target, edits, cut) -> None:
    directory = tmp_path_factory.mktemp("m")
    for name, data in pristine.items():
        raw = bytearray(data)
        if name == target:
            for pos, value in edits:
                if raw:
                    raw[pos % len(raw)] = value
            if cut is not None:
                raw = raw[:cut]
        (directory / name).write_bytes(bytes(raw))
    _exercise(directory, monkeypatch_session)


@settings(max_examples=100, deadline=10_000)
@given(st.binary(max_size=600), st.binary(max_size=300))
def test_random_bytes_posing_as_a_checkpoint(tmp_path_factory, monkeypatch_session, index, data) -> None:
    directory = tmp_path_factory.mktemp("r")
    (directory / "ck.index").write_bytes(index)
    (directory / "ck.data-00000-of-00001").write_bytes(data)
    _exercise(directory, monkeypatch_session)


@settings(max_examples=100, deadline=10_000)
@given(st.binary(min_size=1, max_size=200))
def test_random_entry_values_in_a_valid_table(tmp_path_factory, monkeypatch_session, value) -> None:
    """Valid SSTable, valid header, garbage BundleEntryProto: the proto layer must hold too."""
    from gpuckpt.format import bundle, sstable

    directory = tmp_path_factory.mktemp("e")
    table = [(b"", bundle.encode_header(1)), (b"k", value)]
    (directory / "ck.index").write_bytes(sstable.build_table(table))
    (directory / "ck.data-00000-of-00001").write_bytes(b"\x00" * 64)
    _exercise(directory, monkeypatch_session)


@pytest.fixture(scope="module")
def monkeypatch_session():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()
