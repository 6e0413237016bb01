"""The restore's per-tensor fast paths give what the general paths give: batched verified reads of
odd-sized ranges, the short decode of common index entries, inline varints, labels rendered late."""

from __future__ import annotations

import os

import numpy as np
import pytest

import gpuckpt
from gpuckpt.format import bundle, dtypes, objgraph, proto, sstable
from gpuckpt.format.bundle import BundleEntry, Extent
from gpuckpt.graph import pretty_names
from gpuckpt.storage.base import ReadTarget
from gpuckpt.storage.reader import FileSystemReader
from tests.conftest import flip_stored_bits

SIZES = [0, 1, 3, 7, 0, 4096, 1, 9999, 65537, 2]


def _saved(tmp_path):
    rng = np.random.default_rng(5)
    values = {f"v{i:02d}": rng.integers(0, 256, n, dtype=np.uint8) for i, n in enumerate(SIZES)}
    ckpt = gpuckpt.Checkpoint(**{k: gpuckpt.Variable(v) for k, v in values.items()})
    prefix = ckpt.write(str(tmp_path / "c"))
    return prefix, values


def _targets(reader, values):
    out, dests = [], []
    for name, value in values.items():
        key = f"{name}/.ATTRIBUTES/VARIABLE_VALUE"
        e = reader.index.entries[key]
        dest = np.full(value.shape, 0xAA, np.uint8)
        dests.append(dest)
        out.append(ReadTarget(key, e.shard_id, e.offset, e.size, e.crc32c, memoryview(dest).cast("B")
                              if dest.size else dest.reshape(-1).data))
    return out, dests


@pytest.mark.parametrize("task_bytes", [5, 4096, 1 << 20])
def test_batched_reads_of_odd_sizes_and_empty_tensors_verify(tmp_path, task_bytes) -> None:
    prefix, values = _saved(tmp_path)
    with FileSystemReader(prefix) as reader:
        targets, dests = _targets(reader, values)
        report = reader.read_verified(targets, task_bytes=task_bytes)
    assert report.ok
    for dest, value in zip(dests, values.values()):
        assert np.array_equal(dest, value)


def test_a_crc_mismatch_in_the_middle_of_a_batch_names_that_key_only(tmp_path) -> None:
    prefix, values = _saved(tmp_path)
    key = "v05/.ATTRIBUTES/VARIABLE_VALUE"
    path = flip_stored_bits(prefix, key, 100, 0xFF)
    with FileSystemReader(prefix) as reader:
        stored = reader.index.entries[key].crc32c
        targets, _ = _targets(reader, values)
        report = reader.read_verified(targets)
    assert [targets[i].key for i, _ in report.failed] == [key]
    error = report.failed[0][1]
    assert isinstance(error, gpuckpt.DataLossError) and error.key == key and key in str(error)
    assert path in str(error) and f"{stored:#010x}" in str(error)


def test_a_file_that_shrinks_after_open_fails_its_reads_as_data_loss(tmp_path) -> None:
    prefix, values = _saved(tmp_path)
    with FileSystemReader(prefix) as reader:
        targets, _ = _targets(reader, values)
        path = reader.shard_path(0)
        os.truncate(path, targets[7].offset + 10)  # cuts v07 and everything after it
        report = reader.read_verified(targets, task_bytes=1 << 20)
    failed = {targets[i].key for i, _ in report.failed}
    assert "v07/.ATTRIBUTES/VARIABLE_VALUE" in failed and "v09/.ATTRIBUTES/VARIABLE_VALUE" in failed
    assert all(isinstance(err, gpuckpt.DataLossError) and path in str(err) for _, err in report.failed)


def _raw(entry: BundleEntry) -> bytes:
    return bundle.encode_entry(entry)


F32, STR = dtypes.BY_NAME["float32"], dtypes.STRING


@pytest.mark.parametrize("entry", [
    BundleEntry(F32, (3, 4), 0, 128, 48, 0xDEADBEEF),
    BundleEntry(F32, (), 2, 1 << 40, 4, 1),
    BundleEntry(F32, (0, 5), 0, 0, 0, 0),
    BundleEntry(dtypes.BY_NAME["bfloat16"], (300, 200), 1, 77, 120000, 5),
    BundleEntry(STR, (2,), 0, 10, 9, 3),
    BundleEntry(F32, (4,), 0, 0, 0, 0, ((Extent(0, 2),), (Extent(2, None),))),
])
def test_the_short_decode_gives_the_full_decode(entry) -> None:
    raw = _raw(entry)
    assert bundle.decode_entry(raw) == entry
    assert bundle._decode_entry_full(proto.BundleEntryProto.FromString(raw), None, None) == entry


@pytest.mark.parametrize("fields, why", [
    ({"offset": -1}, "negative shard, offset or size"),
    ({"size": 47}, "size 47 does not match shape [3, 4] of float32"),
    ({"dims": [3, -4]}, "shape is unknown or negative"),
    ({"dims": [1] * 65, "size": 4}, "rank 65 exceeds 64"),
    ({"dims": [1 << 40, 1 << 40], "size": 4}, "larger than any array can be"),
])
def test_the_short_decode_refuses_what_the_full_one_refuses(fields, why) -> None:
    msg = proto.BundleEntryProto(dtype=1, shard_id=0, offset=fields.get("offset", 0), size=fields.get("size", 48))
    msg.shape.SetInParent()
    for d in fields.get("dims", [3, 4]):
        msg.shape.dim.add(size=d)
    with pytest.raises(gpuckpt.DataLossError, match="corrupt entry for key 'k' in 'p'") as info:
        bundle.decode_entry(msg.SerializeToString(), path="p", key="k")
    assert why in str(info.value)


def test_multibyte_varints_in_blocks_round_trip() -> None:
    rows = [(b"k" * n + bytes([i]), bytes([i]) * (n * 3)) for i, n in enumerate([1, 127, 128, 300, 20000])]
    rows.sort()
    assert sstable.read_table(sstable.build_table(rows)) == rows


def test_keys_out_of_order_inside_a_block_are_refused() -> None:
    block = sstable._BlockBuilder(16)
    block.add(b"b", b"1")
    block.add(b"a", b"2")  # the builder does not check; the reader must
    with pytest.raises(gpuckpt.DataLossError, match="keys out of order"):
        sstable._decode_block(memoryview(block.finish()), "p", [])


def test_node_names_are_found_only_when_a_message_needs_one() -> None:
    graph = objgraph.ObjectGraph((
        objgraph.GraphNode(children=(objgraph.ChildRef(1, "model"),)),
        objgraph.GraphNode(children=(objgraph.ChildRef(2, "kernel"),)),
        objgraph.GraphNode(attributes=(objgraph.AttributeRef("VARIABLE_VALUE", "k", "model/kernel/x"),)),
    ))
    names = pretty_names(graph)
    label = names.label(2)
    assert names._links is None
    assert f"for {label}" == "for (root).model.kernel" and label == "(root).model.kernel"
    assert names._links is not None


def test_a_graph_node_naming_a_missing_node_is_refused_by_index() -> None:
    message = proto.TrackableObjectGraph()
    message.nodes.add().children.add(node_id=0, local_name="a")
    node = message.nodes.add()
    node.slot_variables.add(original_variable_node_id=0, slot_name="m", slot_variable_node_id=7)
    with pytest.raises(gpuckpt.DataLossError, match="node 1 of the object graph .* refers to node 7, but the graph "
                                                     "has 2 nodes"):
        objgraph.decode(message.SerializeToString(), path="p")
