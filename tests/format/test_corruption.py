"""Bad bytes and bad paths give gpuckpt's own errors naming the file and key; never a wrong value."""

from __future__ import annotations

import os

import numpy as np
import pytest

import gpuckpt
from gpuckpt.format import bundle, dtypes
from gpuckpt.format.bundle import BundleEntry
from gpuckpt.saver import write_tensors


@pytest.fixture
def ckpt(tmp_path):
    prefix = tmp_path / "ck"
    write_tensors(prefix, {"a": np.arange(1000, dtype=np.float32), "b": np.arange(10, dtype=np.int64), "s": b"hello"})
    return prefix


def read_all(prefix) -> None:
    reader = gpuckpt.load_checkpoint(prefix)
    for key in reader.keys():
        reader.get_tensor(key)


def test_flipped_bit_in_tensor_names_the_key(ckpt) -> None:
    data = ckpt.with_name("ck.data-00000-of-00001")
    raw = bytearray(data.read_bytes())
    raw[100] ^= 0x10  # inside "a" (written first)
    data.write_bytes(bytes(raw))
    reader = gpuckpt.load_checkpoint(ckpt)
    assert reader.get_tensor("b").tolist() == list(range(10))
    with pytest.raises(gpuckpt.DataLossError, match="checksum mismatch for key 'a'.*data-00000-of-00001") as info:
        reader.get_tensor("a")
    assert info.value.key == "a" and info.value.path.endswith("ck.data-00000-of-00001")


def test_flipped_bit_in_string_tensor(ckpt) -> None:
    data = ckpt.with_name("ck.data-00000-of-00001")
    raw = bytearray(data.read_bytes())
    raw[-1] ^= 1  # the object-graph-like last payload: "s"
    data.write_bytes(bytes(raw))
    with pytest.raises(gpuckpt.DataLossError, match="'s'"):
        gpuckpt.load_checkpoint(ckpt).get_tensor("s")


@pytest.mark.parametrize("position", [0, 9, 30, -60, -48, -5])  # block bytes, trailers, handles, magic
def test_flipped_bit_in_index(ckpt, position) -> None:
    index = ckpt.with_name("ck.index")
    raw = bytearray(index.read_bytes())
    raw[position] ^= 0x04
    index.write_bytes(bytes(raw))
    with pytest.raises(gpuckpt.DataLossError, match="ck.index"):
        read_all(ckpt)


@pytest.mark.parametrize("keep", [0, 10, 47, 100])
def test_truncated_index(ckpt, keep) -> None:
    index = ckpt.with_name("ck.index")
    index.write_bytes(index.read_bytes()[:keep])
    with pytest.raises(gpuckpt.DataLossError, match="ck.index"):
        gpuckpt.load_checkpoint(ckpt)


def test_truncated_data_file(ckpt) -> None:
    data = ckpt.with_name("ck.data-00000-of-00001")
    data.write_bytes(data.read_bytes()[:2000])
    with pytest.raises(gpuckpt.DataLossError, match="key 'a'.*past the end of data file"):
        gpuckpt.load_checkpoint(ckpt)  # the whole index is checked against the files when they are opened


def test_missing_shard(ckpt) -> None:
    os.unlink(ckpt.with_name("ck.data-00000-of-00001"))
    reader = gpuckpt.load_checkpoint(ckpt)
    with pytest.raises(gpuckpt.NotFoundError, match="data-00000-of-00001.*missing"):
        reader.get_tensor("a")


def test_file_that_is_not_a_checkpoint(tmp_path) -> None:
    (tmp_path / "x.index").write_bytes(os.urandom(4096))
    with pytest.raises(gpuckpt.DataLossError, match="x.index"):
        gpuckpt.load_checkpoint(tmp_path / "x")


def test_missing_prefix_and_empty_directory(tmp_path) -> None:
    with pytest.raises(gpuckpt.NotFoundError, match="nothing-here"):
        gpuckpt.load_checkpoint(tmp_path / "nothing-here")
    with pytest.raises(gpuckpt.NotFoundError, match="Couldn't find 'checkpoint' file"):
        gpuckpt.load_checkpoint(tmp_path)
    with pytest.raises(gpuckpt.CheckpointError):
        gpuckpt.CheckpointReader(tmp_path)  # a directory given as a prefix


def _forge_index(prefix, entries: dict, num_shards: int = 1) -> None:
    prefix.with_name(prefix.name + ".index").write_bytes(bundle.build_index(num_shards, entries))


def test_offset_past_end_of_file(ckpt) -> None:
    f32 = dtypes.BY_NAME["float32"]
    _forge_index(ckpt, {"a": BundleEntry(f32, (10,), 0, 10**6, 40, 0)})
    with pytest.raises(gpuckpt.DataLossError, match="key 'a'.*past the end"):
        gpuckpt.load_checkpoint(ckpt).get_tensor("a")


def test_huge_declared_size_is_refused_before_allocating(ckpt) -> None:
    f32 = dtypes.BY_NAME["float32"]
    huge = (1 << 40,)
    _forge_index(ckpt, {"a": BundleEntry(f32, huge, 0, 0, 4 << 40, 0), "s": BundleEntry(dtypes.STRING, (), 0, 4 << 40, 1 << 45, 0)})
    with pytest.raises(gpuckpt.DataLossError, match="key 'a'.*past the end"):
        gpuckpt.load_checkpoint(ckpt)  # refused when the shard is opened, before any tensor is read


def test_size_inconsistent_with_shape(ckpt) -> None:
    _forge_index(ckpt, {"a": BundleEntry(dtypes.BY_NAME["float32"], (10,), 0, 0, 41, 0)})
    with pytest.raises(gpuckpt.DataLossError, match="'a'.*size 41 does not match"):
        gpuckpt.load_checkpoint(ckpt)


def test_shard_id_beyond_header(ckpt) -> None:
    _forge_index(ckpt, {"a": BundleEntry(dtypes.BY_NAME["float32"], (1,), 3, 0, 4, 0)})
    with pytest.raises(gpuckpt.DataLossError, match="shard 3 of 1"):
        gpuckpt.load_checkpoint(ckpt)


def test_big_endian_and_newer_bundles_refused(ckpt) -> None:
    from gpuckpt.format import proto, sstable

    for header in (proto.BundleHeaderProto(num_shards=1, endianness=1), proto.BundleHeaderProto(num_shards=1)):
        header.version.min_consumer = 0 if header.endianness else 7
        ckpt.with_name("ck.index").write_bytes(sstable.build_table([(b"", header.SerializeToString())]))
        with pytest.raises(gpuckpt.DataLossError, match="big-endian|newer reader"):
            gpuckpt.load_checkpoint(ckpt)


def test_unknown_key(ckpt) -> None:
    with pytest.raises(gpuckpt.NotFoundError, match="Key nope not found"):
        gpuckpt.load_checkpoint(ckpt).get_tensor("nope")


def test_unsupported_dtype_enum(ckpt) -> None:
    from gpuckpt.format import proto, sstable

    entry = proto.BundleEntryProto(dtype=21)
    entry.shape.SetInParent()
    table = [(b"", bundle.encode_header(1)), (b"v", entry.SerializeToString())]
    ckpt.with_name("ck.index").write_bytes(sstable.build_table(table))
    with pytest.raises(gpuckpt.DataLossError, match="variant tensors are not supported"):
        gpuckpt.load_checkpoint(ckpt)
