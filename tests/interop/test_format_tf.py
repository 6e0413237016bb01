"""Real TensorFlow reads what gpuckpt writes: every dtype, scalars, empty tensors, strings, shards."""

from __future__ import annotations

import numpy as np
import pytest

from gpuckpt.format import dtypes
from gpuckpt.saver import write_tensors

pytestmark = pytest.mark.tf
tf = pytest.importorskip("tensorflow")

NUMERIC = [d for d in dtypes.BY_ENUM.values() if d.numpy is not None and not d.name.startswith(("qint", "quint"))]


def random_bytes_as(dtype: np.dtype, shape) -> np.ndarray:
    raw = np.random.default_rng(7).integers(0, 256, size=int(np.prod(shape)) * dtype.itemsize, dtype=np.uint8)
    if dtype == np.bool_:
        raw &= 1  # TF normalises other bool bytes to 0x01 when it reads them
    return raw.view(dtype).reshape(shape)


def test_tf_reads_every_dtype_and_shape(tmp_path) -> None:
    tensors = {}
    for d in NUMERIC:
        for shape in [(), (0,), (2, 0, 3), (3, 5)]:
            tensors[f"{d.name}/{len(shape)}/{sum(shape)}"] = random_bytes_as(d.numpy, shape)
    write_tensors(tmp_path / "ck", tensors)
    reader = tf.train.load_checkpoint(str(tmp_path / "ck"))
    assert reader.get_variable_to_shape_map() == {k: list(v.shape) for k, v in tensors.items()}
    for key, value in tensors.items():
        got = np.asarray(reader.get_tensor(key))
        assert reader.get_variable_to_dtype_map()[key].name == dtypes.from_numpy(value.dtype).name
        assert got.shape == value.shape and got.tobytes() == value.tobytes(), key


def test_tf_reads_strings(tmp_path) -> None:
    vector = np.array([b"", b"\xff\xfe not utf-8", b"y" * 300], dtype=object)
    write_tensors(tmp_path / "ck", {"s": b"scalar", "empty": b"", "v": vector, "none": np.array([], dtype=object)})
    reader = tf.train.load_checkpoint(str(tmp_path / "ck"))
    assert reader.get_tensor("s") == b"scalar" and reader.get_tensor("empty") == b""
    assert list(reader.get_tensor("v")) == list(vector)
    assert reader.get_tensor("none").shape == (0,)


def test_tf_reads_several_shards(tmp_path) -> None:
    tensors = {f"w{i}": np.arange(i * 100, (i + 1) * 100, dtype=np.float64) for i in range(5)}
    write_tensors(tmp_path / "ck", tensors, max_shard_size=1000)
    assert len(list(tmp_path.glob("ck.data-*-of-00005"))) == 5
    reader = tf.train.load_checkpoint(str(tmp_path / "ck"))
    for key, value in tensors.items():
        assert np.array_equal(reader.get_tensor(key), value)


def test_gpuckpt_reads_what_tf_writes_now(tmp_path) -> None:
    """Beyond the frozen fixtures: whatever TF version is installed writes bytes gpuckpt reads."""
    import gpuckpt

    v = tf.Variable(np.arange(12, dtype=np.float32).reshape(3, 4))
    s = tf.Variable(b"text")
    tf.train.Checkpoint(v=v, s=s).write(str(tmp_path / "ck"))
    reader = gpuckpt.load_checkpoint(tmp_path / "ck")
    assert np.array_equal(reader.get_tensor("v/.ATTRIBUTES/VARIABLE_VALUE"), v.numpy())
    assert reader.get_tensor("s/.ATTRIBUTES/VARIABLE_VALUE") == b"text"
