"""Every TF-written fixture restores into a gpuckpt structure of the same shape, and rewrites byte for byte."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

import gpuckpt
from gpuckpt.format import dtypes
from gpuckpt.graph import walk
from tests.conftest import fixture_dirs, load_manifest

REWRITABLE = ["single_float32", "dtypes", "scalars_and_empty", "save_series", "manager", "nested_module"]


def blank(dtype_name: str, shape: list[int], name: str) -> gpuckpt.Variable:
    """A variable of the given dtype and shape holding zeros (or empty strings)."""
    dtype = dtypes.as_dtype(dtype_name)
    if dtype.is_string:
        return gpuckpt.Variable(np.full(shape, b"", dtype=object), dtype="string", name=name)
    return gpuckpt.Variable(np.zeros(shape, dtype.numpy), name=name)


def flat_checkpoint(record: dict) -> gpuckpt.Checkpoint:
    """``Checkpoint(name=Variable, ...)`` mirroring a fixture whose root holds only variables."""
    nodes = record["object_graph"]["nodes"]
    kwargs = {}
    for child in nodes[0]["children"]:
        if child["local_name"] == "save_counter":
            continue  # restore() creates it
        attr = nodes[child["node_id"]]["attributes"][0]
        entry = record["keys"][attr["checkpoint_key"]]
        kwargs[child["local_name"]] = blank(entry["dtype"], entry["shape"], attr["full_name"])
    return gpuckpt.Checkpoint(**kwargs)


def nested_module_checkpoint() -> gpuckpt.Checkpoint:
    """The structure of fixture ``nested_module`` (spec 9.5), with zeros."""
    def head(n: int) -> gpuckpt.Module:
        h = gpuckpt.Module()
        h.kernel, h.bias = blank("float32", [n, n], "Variable"), blank("float32", [n], "Variable")
        return h

    m = gpuckpt.Module()
    m.embed = blank("float32", [5, 4], "Variable")
    m.blocks = [head(3) for _ in range(3)]
    m.heads = {"cls": head(2), "reg": head(2), "extra": [blank("float32", [], "Variable") for _ in range(2)]}
    m.pair = (blank("int32", [3], "Variable"), {"inner": blank("string", [], "Variable")})
    m.step = blank("int64", [], "Variable")
    m.alias = m.embed
    m.empty_list = []
    m.empty_dict = {}
    return gpuckpt.Checkpoint(model=m, step=m.step)


def structure_for(fixture: str, record: dict) -> gpuckpt.Checkpoint:
    return nested_module_checkpoint() if fixture == "nested_module" else flat_checkpoint(record)


def load(ckpt: gpuckpt.Checkpoint, path: Path, api: str):
    """``restore`` what ``save()`` wrote (it holds save_counter); ``read`` what ``write()`` wrote.

    The other way round ``assert_consumed`` fails, in TF as in gpuckpt (spec 11.1).
    """
    return ckpt.restore(path) if api in ("save", "manager") else ckpt.read(path)


def assert_values_match_manifest(ckpt: gpuckpt.Checkpoint, record: dict) -> None:
    values = walk(ckpt).tensors_by_key()
    expected_keys = set(record["keys"]) - {"_CHECKPOINTABLE_OBJECT_GRAPH"}
    assert set(values) == expected_keys
    for key, value in values.items():
        entry = record["keys"][key]
        if entry["dtype"] == "string":
            flat = [bytes(x) for x in np.asarray(value, dtype=object).ravel()]
            assert [x.hex() for x in flat] == entry["values_hex"], key
        else:
            raw = np.ascontiguousarray(value).tobytes()
            assert hashlib.sha256(raw).hexdigest() == entry["sha256"], key


CASES = [(d, p) for d in fixture_dirs() for p in load_manifest(d)["checkpoints"]]


@pytest.mark.parametrize(("fixture", "prefix"), CASES)
def test_restore_tf_fixture_consumes_everything(fixtures_root: Path, fixture: str, prefix: str) -> None:
    manifest = load_manifest(fixture)
    record = manifest["checkpoints"][prefix]
    ckpt = structure_for(fixture, record)
    load(ckpt, fixtures_root / fixture / prefix, manifest["api"]).assert_consumed()
    assert_values_match_manifest(ckpt, record)


@pytest.mark.parametrize(("fixture", "prefix"), [c for c in CASES if c[0] in REWRITABLE])
def test_rewrite_is_byte_identical(fixtures_root: Path, tmp_path: Path, fixture: str, prefix: str) -> None:
    manifest = load_manifest(fixture)
    record = manifest["checkpoints"][prefix]
    ckpt = structure_for(fixture, record)
    load(ckpt, fixtures_root / fixture / prefix, manifest["api"]).assert_consumed()
    out = ckpt.write(tmp_path / "ckpt")
    original = fixtures_root / fixture / prefix
    assert Path(out + ".index").read_bytes() == Path(f"{original}.index").read_bytes()
    assert Path(out + ".data-00000-of-00001").read_bytes() == Path(f"{original}.data-00000-of-00001").read_bytes()


def test_restore_from_directory_uses_its_state_file(fixtures_root: Path) -> None:
    ckpt = flat_checkpoint(load_manifest("save_series")["checkpoints"]["ckpt-3"])
    ckpt.restore(fixtures_root / "save_series").assert_consumed()
    assert int(ckpt.save_counter.numpy()) == 3
    np.testing.assert_array_equal(ckpt.v.numpy(), np.array([31.0, 62.0], np.float32))
