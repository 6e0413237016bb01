"""Every checkpoint TensorFlow wrote (tests/fixtures/tf, copied from TensorFlow 2.21 runs) is read bit-exactly,
and rewritten byte-identically."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

import gpuckpt
from gpuckpt.saver import write_tensors
from tests.conftest import FIXTURES, fixture_dirs, load_manifest

CASES = [(d, prefix) for d in fixture_dirs() for prefix in load_manifest(d)["checkpoints"]]


@pytest.mark.parametrize(("fixture", "prefix"), CASES)
def test_read_matches_manifest(fixture: str, prefix: str) -> None:
    record = load_manifest(fixture)["checkpoints"][prefix]
    reader = gpuckpt.load_checkpoint(FIXTURES / fixture / prefix)
    assert sorted(reader.keys()) == sorted(record["keys"])
    for key, want in record["keys"].items():
        entry = reader.entry(key)
        assert (entry.dtype.enum, entry.dtype.name, list(entry.shape)) == (want["dtype_enum"], want["dtype"], want["shape"])
        value = reader.get_tensor(key)
        if "sha256" in want:
            assert value.dtype == np.dtype(want["numpy_dtype"]) and list(value.shape) == want["shape"]
            assert hashlib.sha256(value.tobytes()).hexdigest() == want["sha256"], key
        else:
            elements = [value] if isinstance(value, bytes) else list(value.reshape(-1))
            assert [e.hex() for e in elements] == want["values_hex"], key
    if "debug_string_hex" in record:
        assert reader.debug_string() == bytes.fromhex(record["debug_string_hex"])


@pytest.mark.parametrize(("fixture", "prefix"), [c for c in CASES if c[0] != "sharded_slices"])
def test_rewrite_is_byte_identical(fixture: str, prefix: str, tmp_path) -> None:
    """Given TF's tensors in TF's payload order, gpuckpt writes TF's exact files."""
    src = FIXTURES / fixture / prefix
    reader = gpuckpt.load_checkpoint(src)
    order = sorted(reader.keys(), key=lambda k: (reader.entry(k).offset, reader.entry(k).size > 0))
    out = tmp_path / prefix
    write_tensors(out, {k: reader.get_tensor(k) for k in order})
    for suffix in (".index", ".data-00000-of-00001"):
        assert (tmp_path / (prefix + suffix)).read_bytes() == (FIXTURES / fixture / (prefix + suffix)).read_bytes()


def test_directory_resolves_through_state_file(fixtures_root) -> None:
    manifest = load_manifest("save_series")
    reader = gpuckpt.load_checkpoint(fixtures_root / "save_series")
    assert reader.prefix.endswith(manifest["latest_checkpoint"])
    assert gpuckpt.list_variables(fixtures_root / "save_series")[0][0] == "_CHECKPOINTABLE_OBJECT_GRAPH"


def test_sliced_tensor_is_assembled(fixtures_root) -> None:
    reader = gpuckpt.load_checkpoint(fixtures_root / "sharded_slices" / "ckpt")
    assert reader.index.num_shards == 3
    entry = reader.entry("n/.ATTRIBUTES/VARIABLE_VALUE")
    assert entry.is_sliced and len(entry.slices) > 1
    assert reader.get_tensor("n/.ATTRIBUTES/VARIABLE_VALUE").shape == (300,)
