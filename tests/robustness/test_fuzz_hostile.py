"""Fuzzing forged indexes, object graphs and state files: only ``CheckpointError``s, memory bounded by the files.

Unlike ``tests/format/test_fuzz.py`` (byte edits of a real checkpoint), these build *well-formed*
tables whose values lie: entries with any dtype, shape (up to 2**62 per dimension), shard, offset,
size and slices, and headers with any shard count; object graphs with any edges, slot references
and lengths, or stored as the wrong kind of tensor; state files of random text or with random
edits. Each is read through the entry points users call. Anything but a ``CheckpointError`` is a
bug, and so is Python-traced memory (NumPy's buffers included) beyond a bound proportional to the
bytes on disk. ``GPUCKPT_HOSTILE_LONG=1`` runs twenty times as many examples.
"""

from __future__ import annotations

import logging
import os
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gpuckpt
from gpuckpt.format import bundle, crc, dtypes, objgraph, statefile
from gpuckpt.format.bundle import BundleEntry, Extent
from gpuckpt.format.slices import slice_key
from gpuckpt.saver import write_tensors

EXAMPLES = 800 if os.environ.get("GPUCKPT_HOSTILE_LONG") else 40
FUZZ = settings(max_examples=EXAMPLES, deadline=10_000,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
DTYPES = [dtypes.BY_NAME[n] for n in ("float32", "int8", "float64", "bool", "complex128")] + [dtypes.STRING]


@pytest.fixture(scope="module", autouse=True)
def warm(tmp_path_factory) -> None:
    """One real restore and read first: engines and caches made once per process are not the input's cost."""
    checkpoint = gpuckpt.Checkpoint(v=gpuckpt.Variable(np.ones(3, np.float32)))
    prefix = checkpoint.write(tmp_path_factory.mktemp("warm") / "ck")
    checkpoint.restore(prefix).expect_partial()
    read_everything(prefix)


def bounded_memory(directory: Path, action) -> None:
    """Run ``action``; fail if it raises anything but a CheckpointError or traces more memory than the
    files justify (64 bytes per byte on disk, plus 4 MiB)."""
    budget = 64 * sum(p.stat().st_size for p in directory.iterdir() if p.is_file()) + (4 << 20)
    tracemalloc.start()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            action()
    except gpuckpt.CheckpointError as exc:
        assert exc.path is not None or exc.key is not None, f"{type(exc).__name__} names nothing: {exc}"
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert peak <= budget, f"traced {peak} bytes for {budget // 64} bytes of files"


def read_everything(prefix: str) -> None:
    with gpuckpt.load_checkpoint(prefix) as reader:
        for key in reader.keys():
            reader.get_tensor(key)
        reader.debug_string()


dims = st.lists(st.sampled_from([0, 1, 2, 3, 7, 2**31, 2**62]) | st.integers(0, 64), max_size=4)
extent = st.tuples(st.integers(-2, 9), st.none() | st.integers(-2, 9)).map(lambda t: Extent(*t))
entry = st.builds(
    lambda dtype, shape, shard, offset, size, slices, crc32c: BundleEntry(
        dtype, tuple(shape), shard, offset, size, crc32c, tuple(tuple(s) for s in slices)),
    st.sampled_from(DTYPES), dims, st.integers(0, 3) | st.just(2**31 - 1), st.integers(0, 600) | st.just(2**62),
    st.integers(0, 600) | st.just(2**62), st.lists(st.lists(extent, max_size=3), max_size=3),
    st.integers(0, 2**32 - 1))


@FUZZ
@given(entries=st.dictionaries(st.text("abc", min_size=1, max_size=3), entry, max_size=5),
       pieces=st.lists(st.tuples(st.sampled_from("abc"), st.lists(extent, max_size=3), entry), max_size=4),
       num_shards=st.integers(1, 4) | st.just(2**31 - 1), data=st.binary(max_size=600))
def test_forged_index_entries(tmp_path_factory, entries, pieces, num_shards, data) -> None:
    directory = tmp_path_factory.mktemp("idx")
    prefix = str(directory / "ck")
    table = dict(entries)
    for key, extents, piece in pieces:
        table[slice_key(key, extents)] = piece
    Path(prefix + ".index").write_bytes(bundle.build_index(num_shards, table))
    for shard in range(min(num_shards, 4)):
        Path(bundle.data_file_name(prefix, shard, num_shards)).write_bytes(data)
    bounded_memory(directory, lambda: read_everything(prefix))


node_id = st.integers(-2, 12)
graph_node = st.builds(
    objgraph.GraphNode,
    children=st.lists(st.builds(objgraph.ChildRef, node_id, st.sampled_from(["v", "w", "a", ""])), max_size=3)
    .map(tuple),
    attributes=st.lists(st.builds(objgraph.AttributeRef, st.sampled_from(["VARIABLE_VALUE", "x"]), st.just(""),
                                  st.sampled_from(["v/.ATTRIBUTES/VARIABLE_VALUE", "w", "missing"])), max_size=2)
    .map(tuple),
    slot_variables=st.lists(st.builds(objgraph.SlotRef, node_id, st.sampled_from(["m", "v"]), node_id), max_size=2)
    .map(tuple),
)
stored_graph = (st.lists(graph_node, min_size=0, max_size=12)
                .map(lambda nodes: objgraph.encode(objgraph.ObjectGraph(tuple(nodes))))
                | st.binary(max_size=200)
                | st.sampled_from([np.arange(3, dtype=np.float32), np.array([b"a", b"b"], dtype=object),
                                   np.int64(4)]))


@FUZZ
@given(graph=stored_graph)
def test_forged_object_graph(tmp_path_factory, graph) -> None:
    directory = tmp_path_factory.mktemp("graph")
    prefix = str(write_tensors(directory / "ck", {"v/.ATTRIBUTES/VARIABLE_VALUE": np.zeros(3, np.float32),
                                                   "w": np.float64(2.0), objgraph.OBJECT_GRAPH_KEY: graph}))

    def restore() -> None:
        checkpoint = gpuckpt.Checkpoint(v=gpuckpt.Variable(np.ones(3, np.float32)))
        try:
            checkpoint.restore(prefix).expect_partial().assert_existing_objects_matched()
        except AssertionError:
            pass
        assert checkpoint.v.numpy().shape == (3,)

    bounded_memory(directory, restore)


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("state")
    checkpoint = gpuckpt.Checkpoint(v=gpuckpt.Variable(np.zeros(2, np.float32)))
    manager = gpuckpt.CheckpointManager(checkpoint, directory, max_to_keep=2)
    manager.save()
    manager.save()
    return directory


def edited(raw: bytes, edits: list[tuple[int, int]]) -> bytes:
    out = bytearray(raw)
    for pos, value in edits:
        if out:
            out[pos % len(out)] = value
    return bytes(out)


@FUZZ
@given(text=st.binary(max_size=300) | st.text(max_size=200).map(str.encode)
       | st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=4)
       .map(lambda edits: edits))
def test_forged_state_file(state_dir: Path, text) -> None:
    state_path = state_dir / "checkpoint"
    pristine = statefile.format(statefile.CheckpointState("ckpt-2", ("ckpt-1", "ckpt-2"), (1.0, 2.0), 0.5))
    raw = edited(pristine.encode(), text) if isinstance(text, list) else text
    state_path.write_bytes(raw)
    known = {None, str(state_dir / "ckpt-1"), str(state_dir / "ckpt-2")}
    logging.disable(logging.WARNING)
    try:
        def act() -> None:
            try:
                latest = gpuckpt.latest_checkpoint(state_dir)
                assert latest in known or not latest.startswith(str(state_dir)), latest
            except gpuckpt.CheckpointError:
                pass
            manager = gpuckpt.CheckpointManager(gpuckpt.Checkpoint(v=gpuckpt.Variable(np.zeros(2, np.float32))),
                                                state_dir, max_to_keep=2)
            assert manager.latest_checkpoint in known or manager.latest_checkpoint.startswith(str(state_dir))

        bounded_memory(state_dir, act)
    finally:
        logging.disable(logging.NOTSET)
        state_path.write_text(pristine)


def test_fuzz_harness_catches_an_escape(tmp_path: Path) -> None:
    """The harness itself: a non-gpuckpt error and an oversized allocation are both failures."""
    (tmp_path / "f").write_bytes(b"x" * 10)
    with pytest.raises(KeyError):
        bounded_memory(tmp_path, lambda: {}["missing"])
    with pytest.raises(AssertionError, match="traced"):
        bounded_memory(tmp_path, lambda: np.ones(1 << 21))
    assert crc.masked_crc32c(b"") == crc.mask(0)
