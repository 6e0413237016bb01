"""Shared fixtures: the TF-written golden checkpoints and hypothesis profiles."""

from __future__ import annotations

import json
import os
from pathlib import Path

# GPU code runs on Numba's CUDA simulator unless NUMBA_ENABLE_CUDASIM=0 (on a machine with a GPU).
os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile("ci", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=200, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

REPO = Path(__file__).resolve().parents[1]
# Checkpoints written by real TensorFlow, copied from TensorFlow 2.21 runs (their README
# says how they were made); GPUCKPT_TF_FIXTURES points at another set.
FIXTURES = Path(os.environ.get("GPUCKPT_TF_FIXTURES", REPO / "tests" / "fixtures" / "tf"))


def fixture_dirs() -> list[str]:
    if not FIXTURES.is_dir():
        return []
    return sorted(p.name for p in FIXTURES.iterdir() if (p / "manifest.json").exists())


@pytest.fixture(scope="session")
def fixtures_root() -> Path:
    if not FIXTURES.is_dir():
        pytest.skip(f"TF golden fixtures not found at {FIXTURES} (set GPUCKPT_TF_FIXTURES)")
    return FIXTURES


def load_manifest(name: str) -> dict:
    return json.loads((FIXTURES / name / "manifest.json").read_text())


def flip_stored_bits(prefix: str, key: str, at: int, bits: int) -> str:
    """XOR ``bits`` into byte ``at`` of tensor ``key``'s stored bytes, in place; return the data file's path."""
    from gpuckpt.storage.reader import FileSystemReader

    with FileSystemReader(prefix) as reader:
        entry = reader.index.entries[key]
        path = reader.shard_path(entry.shard_id)
    with open(path, "r+b") as f:
        f.seek(entry.offset + at)
        byte = f.read(1)
        f.seek(entry.offset + at)
        f.write(bytes([byte[0] ^ bits]))
    return path
