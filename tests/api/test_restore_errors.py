"""Bad input: mismatched dtypes or shapes and corrupt bytes raise named errors and change no variable."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import gpuckpt


@pytest.fixture
def path(tmp_path: Path) -> str:
    return gpuckpt.Checkpoint(a=gpuckpt.Variable([1.0, 2.0]), b=gpuckpt.Variable([3.0, 4.0]),
                              s=gpuckpt.Variable("text")).write(tmp_path / "ckpt")


def fresh(b: gpuckpt.Variable) -> gpuckpt.Checkpoint:
    return gpuckpt.Checkpoint(a=gpuckpt.Variable([0.0, 0.0]), b=b, s=gpuckpt.Variable(""))


def assert_untouched(ckpt: gpuckpt.Checkpoint) -> None:
    np.testing.assert_array_equal(ckpt.a.numpy(), [0.0, 0.0])
    assert ckpt.s.numpy() == b""


def test_dtype_mismatch_names_key_and_both_dtypes(path: str) -> None:
    ckpt = fresh(gpuckpt.Variable([0, 0]))
    with pytest.raises(gpuckpt.InvalidArgumentError,
                       match=r"key 'b/.ATTRIBUTES/VARIABLE_VALUE' \(\(root\).b\): expected dtype int32 does not "
                             r"equal original dtype float32") as info:
        ckpt.read(path)
    assert info.value.key == "b/.ATTRIBUTES/VARIABLE_VALUE"
    assert_untouched(ckpt)


def test_shape_mismatch_names_key_and_both_shapes(path: str) -> None:
    ckpt = fresh(gpuckpt.Variable([0.0, 0.0, 0.0]))
    with pytest.raises(ValueError, match=r"key 'b/.ATTRIBUTES/VARIABLE_VALUE' \(\(root\).b\): received incompatible "
                                         r"tensor with shape \(2,\) when attempting to restore variable with "
                                         r"shape \(3,\)"):
        ckpt.restore(path)
    assert_untouched(ckpt)
    np.testing.assert_array_equal(ckpt.b.numpy(), [0.0, 0.0, 0.0])


def test_every_mismatch_is_listed(path: str) -> None:
    ckpt = gpuckpt.Checkpoint(a=gpuckpt.Variable([0, 0]), b=gpuckpt.Variable(0.0))
    with pytest.raises(gpuckpt.InvalidArgumentError, match=r"\(root\).a.*; .*\(root\).b"):
        ckpt.read(path)


def _corrupt_b(path: str) -> None:
    data = Path(path + ".data-00000-of-00001")
    raw = bytearray(data.read_bytes())
    raw[8] ^= 0xFF  # inside b, the second payload; a comes first and is intact
    data.write_bytes(bytes(raw))


def test_corrupt_tensor_is_zeroed_and_named_the_rest_restored(path: str) -> None:
    """Default (in-place reads): what verified is assigned, what failed is zero-filled, both are named."""
    _corrupt_b(path)
    ckpt = fresh(gpuckpt.Variable([7.0, 7.0]))
    with pytest.raises(gpuckpt.PartialRestoreError, match="b/.ATTRIBUTES/VARIABLE_VALUE") as info:
        ckpt.read(path)
    assert isinstance(info.value, gpuckpt.DataLossError)
    assert info.value.failed == ("b/.ATTRIBUTES/VARIABLE_VALUE",)
    assert set(info.value.restored) == {"a/.ATTRIBUTES/VARIABLE_VALUE", "s/.ATTRIBUTES/VARIABLE_VALUE"}
    assert "computed" not in str(info.value)
    np.testing.assert_array_equal(ckpt.a.numpy(), [1.0, 2.0])
    np.testing.assert_array_equal(ckpt.b.numpy(), [0.0, 0.0])  # never the corrupt bytes
    assert ckpt.s.numpy() == b"text"


def test_corrupt_tensor_changes_no_variable_in_atomic_mode(path: str) -> None:
    _corrupt_b(path)
    ckpt = fresh(gpuckpt.Variable([7.0, 7.0]))
    with pytest.raises(gpuckpt.DataLossError, match="b/.ATTRIBUTES/VARIABLE_VALUE") as info:
        ckpt.read(path, options=gpuckpt.CheckpointOptions(atomic_restore=True))
    assert not isinstance(info.value, gpuckpt.PartialRestoreError)
    assert_untouched(ckpt)
    np.testing.assert_array_equal(ckpt.b.numpy(), [7.0, 7.0])


def test_deferred_mismatch_raises_on_attach_and_stays_pending(path: str) -> None:
    ckpt = gpuckpt.Checkpoint(a=gpuckpt.Variable([0.0, 0.0]), s=gpuckpt.Variable(""))
    status = ckpt.read(path)
    with pytest.raises(gpuckpt.InvalidArgumentError, match=r"\(root\).b.*shape \(2,\).*shape \(1,\)"):
        ckpt.b = gpuckpt.Variable([0.0])
    ckpt.b = gpuckpt.Variable([0.0, 0.0])
    np.testing.assert_array_equal(ckpt.b.numpy(), [3.0, 4.0])
    status.assert_consumed()


def test_graph_key_missing_from_the_index_is_data_loss(tmp_path: Path) -> None:
    from gpuckpt.format import objgraph
    from gpuckpt.graph import walk
    from gpuckpt.saver import write_tensors

    live = walk(gpuckpt.Checkpoint(v=gpuckpt.Variable(1.0)))
    write_tensors(tmp_path / "broken", {objgraph.OBJECT_GRAPH_KEY: objgraph.encode(live.graph)})
    with pytest.raises(gpuckpt.DataLossError, match="'v/.ATTRIBUTES/VARIABLE_VALUE'.*no such tensor"):
        gpuckpt.Checkpoint(v=gpuckpt.Variable(0.0)).read(tmp_path / "broken")
