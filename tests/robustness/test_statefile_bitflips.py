"""Every single bit flip of a ``checkpoint`` state file: detected, or harmless; never a silent loss.

A manager's state file after three saves names ``ckpt-3``. Each bit is flipped alone, and the
file is read (``read_state``): it either raises ``DataLossError`` (detected), or returns exactly
the original state (the flip changed nothing a reader decodes, e.g. inside the checksum comment's
words), and never a different state. For the detected ones, ``latest_checkpoint`` and a new
``CheckpointManager`` must still find ``ckpt-3``, by the fallback to the newest checkpoint that
verifies. A sample in CI; every flip with ``GPUCKPT_HOSTILE_LONG=1`` (docs/durability.md quotes it).
The same flips of the file without its checksum line (as TensorFlow writes it) are counted too.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

import gpuckpt
from gpuckpt.format import statefile
from gpuckpt.storage import filesystem
from gpuckpt.storage.fallback import StateFileWarning

LONG = bool(os.environ.get("GPUCKPT_HOSTILE_LONG"))
BIT_STRIDE = 1 if LONG else 5  # CI flips every 5th bit
FALLBACK_STRIDE = 1 if LONG else 10  # detected flips also checked through latest_checkpoint and a manager


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("flips")
    checkpoint = gpuckpt.Checkpoint(v=gpuckpt.Variable(np.zeros(8, np.float32)))
    manager = gpuckpt.CheckpointManager(checkpoint, directory, max_to_keep=3)
    for step in range(3):
        checkpoint.v.assign(np.full(8, step + 1, np.float32))
        manager.save()
    return directory


def flips(raw: bytes):
    for bit in range(0, len(raw) * 8, BIT_STRIDE):
        flipped = bytearray(raw)
        flipped[bit // 8] ^= 1 << (bit % 8)
        yield bit, bytes(flipped)


def classify(directory: Path, original: statefile.CheckpointState) -> str:
    try:
        state = filesystem.read_state(directory)
    except gpuckpt.DataLossError:
        return "detected"
    return "unchanged" if state == original else "silently changed"


def test_every_flip_is_detected_or_harmless_and_the_run_is_found(run_dir: Path) -> None:
    state_path = run_dir / "checkpoint"
    raw = state_path.read_bytes()
    original = filesystem.read_state(run_dir)
    assert raw.rstrip(b"\n").rsplit(b"\n", 1)[-1].startswith(statefile.CHECKSUM_TAG)
    counts: Counter = Counter()
    newest = str(run_dir / "ckpt-3")
    try:
        for bit, flipped in flips(raw):
            state_path.write_bytes(flipped)
            outcome = classify(run_dir, original)
            counts[outcome] += 1
            assert outcome != "silently changed", f"bit {bit} changed the state without detection"
            if outcome == "detected" and (counts["detected"] - 1) % FALLBACK_STRIDE == 0:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    assert gpuckpt.latest_checkpoint(run_dir) == newest, f"bit {bit}"
                    logging.disable(logging.WARNING)
                    manager = gpuckpt.CheckpointManager(gpuckpt.Checkpoint(v=gpuckpt.Variable(np.zeros(8, np.float32))),
                                                        run_dir, max_to_keep=3)
                    logging.disable(logging.NOTSET)
                    assert manager.latest_checkpoint == newest, f"bit {bit}"
                assert any(issubclass(w.category, StateFileWarning) for w in caught)
                counts["recovered"] += 1
    finally:
        state_path.write_bytes(raw)
    total = len(range(0, len(raw) * 8, BIT_STRIDE))
    print(f"state file: {total} flips: {counts['detected']} detected, {counts['unchanged']} change nothing, "
          f"{counts['recovered']} detected ones checked through the fallback, all found ckpt-3")
    assert counts["detected"] + counts["unchanged"] == total
    assert counts["detected"] > 0.9 * total


def test_flips_of_a_state_file_without_checksum_are_counted(run_dir: Path) -> None:
    """TensorFlow's own state files carry no checksum: flips there can silently change the state. The
    figure is for docs/durability.md; what gpuckpt promises is only that a file that does not parse is
    never taken for "no checkpoint" (it raises, or falls back)."""
    state_path = run_dir / "checkpoint"
    raw = state_path.read_bytes()
    original = filesystem.read_state(run_dir)
    bare = raw[: raw.rindex(statefile.CHECKSUM_TAG)]
    counts: Counter = Counter()
    try:
        for _, flipped in flips(bare):
            state_path.write_bytes(flipped)
            counts[classify(run_dir, original)] += 1
    finally:
        state_path.write_bytes(raw)
    print(f"state file without checksum: {sum(counts.values())} flips: {dict(counts)}")
    assert counts["silently changed"] > 0 and counts["detected"] > 0  # so the checksum is what makes the difference
