"""gpuckpt's writer and reader agree on every dtype, shape and shard layout."""

from __future__ import annotations

import os

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import gpuckpt
from gpuckpt.format import dtypes
from gpuckpt.saver import write_tensors
from gpuckpt.storage import commit

NUMERIC = [d for d in dtypes.BY_ENUM.values() if d.numpy is not None and not d.name.startswith(("qint", "quint"))]


def sample(dtype: np.dtype, shape, seed: int = 0) -> np.ndarray:
    """Random bytes viewed as ``dtype``: every bit pattern must survive, NaN payloads included."""
    raw = np.random.default_rng(seed).integers(0, 256, size=int(np.prod(shape)) * dtype.itemsize, dtype=np.uint8)
    return raw.view(dtype).reshape(shape)


@pytest.mark.parametrize("dt", NUMERIC, ids=lambda d: d.name)
@pytest.mark.parametrize("shape", [(), (0,), (3, 0), (7,), (2, 3, 5)])
def test_every_dtype_and_shape_round_trips(tmp_path, dt, shape) -> None:
    value = sample(dt.numpy, shape)
    write_tensors(tmp_path / "ck", {"v": value})
    got = gpuckpt.load_checkpoint(tmp_path / "ck").get_tensor("v")
    assert got.dtype == dt.numpy and got.shape == shape and got.tobytes() == value.tobytes()


def test_strings_and_bytes(tmp_path) -> None:
    arr = np.array([[b"", b"\xff\x00bin"], [b"x" * 200, "ünï".encode()]], dtype=object)
    write_tensors(tmp_path / "ck", {"s": b"scalar", "e": b"", "t": arr, "z": np.array([], dtype=object), "u": "text"})
    r = gpuckpt.load_checkpoint(tmp_path / "ck")
    assert r.get_tensor("s") == b"scalar" and r.get_tensor("e") == b"" and r.get_tensor("u") == b"text"
    assert r.get_tensor("t").tolist() == arr.tolist() and r.get_tensor("z").shape == (0,)


def test_several_shards(tmp_path) -> None:
    values = {f"v{i}": np.full((100,), i, np.int64) for i in range(6)}  # 800 bytes each: two per shard
    write_tensors(tmp_path / "ck", values, max_shard_size=2000)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["ck.data-00000-of-00003", "ck.data-00001-of-00003", "ck.data-00002-of-00003", "ck.index"]
    r = gpuckpt.load_checkpoint(tmp_path / "ck")
    assert {k: r.get_tensor(k).tolist() for k in values} == {k: v.tolist() for k, v in values.items()}


def test_large_tensor_read_in_chunks_with_combined_crcs(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr("gpuckpt.storage.reader.READ_TASK_BYTES", 4096)
    monkeypatch.setattr("gpuckpt.engine.cpu.CHUNK_BYTES", 5000)
    value = np.random.default_rng(1).standard_normal(100_003).astype(np.float32)
    write_tensors(tmp_path / "ck", {"big": value, "small": np.arange(3)})
    assert np.array_equal(gpuckpt.load_checkpoint(tmp_path / "ck").get_tensor("big"), value)


def test_non_contiguous_and_big_endian_inputs(tmp_path) -> None:
    base = np.arange(24, dtype=">i4").reshape(4, 6)
    write_tensors(tmp_path / "ck", {"t": base.T, "b": base})
    r = gpuckpt.load_checkpoint(tmp_path / "ck")
    assert np.array_equal(r.get_tensor("t"), base.T) and np.array_equal(r.get_tensor("b"), base)


def test_read_into_and_aligned_results(tmp_path) -> None:
    write_tensors(tmp_path / "ck", {"v": np.arange(10, dtype=np.float64)})
    r = gpuckpt.load_checkpoint(tmp_path / "ck")
    assert r.get_tensor("v").ctypes.data % 4096 == 0
    out = np.empty(10, np.float64)
    r.read_into("v", out)
    assert out.tolist() == list(range(10))
    with pytest.raises(gpuckpt.InvalidArgumentError, match="'v'"):
        r.read_into("v", np.empty(10, np.float32))


def test_overwrite_replaces_and_leaves_no_temporaries(tmp_path) -> None:
    write_tensors(tmp_path / "ck", {"a": np.arange(5)}, max_shard_size=8)
    write_tensors(tmp_path / "ck", {"b": np.arange(3)})
    assert commit.settle(30)  # the replaced files are deleted in the background
    assert sorted(os.listdir(tmp_path)) == ["ck.data-00000-of-00001", "ck.index"]
    assert gpuckpt.load_checkpoint(tmp_path / "ck").keys() == ["b"]


def test_bfloat16_values(tmp_path) -> None:
    v = np.array([1.5, -0.0, np.inf, np.nan], dtype=ml_dtypes.bfloat16)
    write_tensors(tmp_path / "ck", {"v": v})
    assert gpuckpt.load_checkpoint(tmp_path / "ck").get_tensor("v").tobytes() == v.tobytes()


@given(
    st.dictionaries(
        st.text(min_size=1, max_size=12).filter(lambda k: not k.startswith("\x00")),
        hnp.arrays(st.sampled_from([np.float32, np.int8, np.uint16, np.complex64]), hnp.array_shapes(min_dims=0, max_side=4)),
        max_size=6,
    )
)
def test_property_round_trip(tmp_path_factory, tensors) -> None:
    prefix = tmp_path_factory.mktemp("h") / "ck"
    write_tensors(prefix, tensors)
    r = gpuckpt.load_checkpoint(prefix)
    assert sorted(r.keys()) == sorted(tensors, key=lambda k: k.encode())
    for k, v in tensors.items():
        assert r.get_tensor(k).tobytes() == v.tobytes()


def test_read_tensors_batches_adjacent_small_tensors(tmp_path, monkeypatch) -> None:
    values = {f"v{i:03d}": np.full((i % 7,), i, np.int32) for i in range(300)}
    values["big"] = np.arange(50_000, dtype=np.float64)
    write_tensors(tmp_path / "ck", values)
    reader = gpuckpt.load_checkpoint(tmp_path / "ck")
    calls = []
    real = os.preadv
    monkeypatch.setattr(os, "preadv", lambda fd, bufs, off: calls.append(len(bufs)) or real(fd, bufs, off))
    outs = {k: np.empty_like(v) for k, v in values.items()}
    reader.read_tensors(list(outs.items()))
    assert all(np.array_equal(outs[k], v) for k, v in values.items())
    assert len(calls) <= 3  # one vectored read for the 300 small tensors (under 8 MiB), one for the big one


def test_read_tensors_detects_corruption_in_a_batch(tmp_path) -> None:
    values = {f"v{i}": np.full((4,), i, np.int64) for i in range(10)}
    write_tensors(tmp_path / "ck", values)
    data = tmp_path / "ck.data-00000-of-00001"
    raw = bytearray(data.read_bytes())
    raw[5 * 32 + 3] ^= 1
    data.write_bytes(bytes(raw))
    outs = [(k, np.empty(4, np.int64)) for k in values]
    with pytest.raises(gpuckpt.DataLossError, match="'v5'"):
        gpuckpt.load_checkpoint(tmp_path / "ck").read_tensors(outs)


def test_saved_index_bytes_equal_build_index_of_the_same_entries() -> None:
    from gpuckpt.format.bundle import BundleEntry, build_index
    from gpuckpt.format.dtypes import BY_NAME
    from gpuckpt.plan import TensorSpec, build_save_plan
    from gpuckpt.saver import index_bytes

    rng = np.random.default_rng(5)
    specs = [TensorSpec(f"k/{i}", BY_NAME[["float32", "int8", "bool", "float64"][i % 4]],
                        tuple(int(d) for d in rng.integers(0, 5, i % 3)), int(rng.integers(0, 300)))
             for i in range(200)]
    plan = build_save_plan(specs, max_shard_size=2000)
    crcs = [0 if i % 7 == 0 else int(rng.integers(1, 2**32)) for i in range(len(specs))]
    entries = {it.key: BundleEntry(it.dtype, it.shape, it.shard, it.offset, it.nbytes, c)
               for it, c in zip(plan.items, crcs)}
    assert index_bytes(plan, crcs) == build_index(plan.num_shards, entries)
    assert index_bytes(plan, crcs) == build_index(plan.num_shards, entries)  # from the cached prefixes
