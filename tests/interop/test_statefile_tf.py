"""Real TensorFlow reads gpuckpt's state file, checksum comment and all, and manages on from it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import gpuckpt
from gpuckpt.format import statefile

pytestmark = pytest.mark.tf


@pytest.fixture(scope="module")
def tf():
    return pytest.importorskip("tensorflow")


def test_tensorflow_reads_a_state_file_with_its_checksum_line(tf, tmp_path: Path) -> None:
    checkpoint = gpuckpt.Checkpoint(v=gpuckpt.Variable(np.full(3, 2.5, np.float32)))
    manager = gpuckpt.CheckpointManager(checkpoint, tmp_path, max_to_keep=2)
    for _ in range(3):
        manager.save()
    raw = (tmp_path / "checkpoint").read_bytes()
    assert statefile.CHECKSUM_TAG in raw

    state = tf.train.get_checkpoint_state(str(tmp_path))
    assert state.model_checkpoint_path == str(tmp_path / "ckpt-3")
    assert list(state.all_model_checkpoint_paths) == [str(tmp_path / "ckpt-2"), str(tmp_path / "ckpt-3")]
    assert tf.train.latest_checkpoint(str(tmp_path)) == str(tmp_path / "ckpt-3")

    v = tf.Variable(np.zeros(3, np.float32))
    tf_checkpoint = tf.train.Checkpoint(v=v)
    tf_manager = tf.train.CheckpointManager(tf_checkpoint, str(tmp_path), max_to_keep=2)
    assert tf_manager.checkpoints == [str(tmp_path / "ckpt-2"), str(tmp_path / "ckpt-3")]
    tf_manager.restore_or_initialize()
    assert v.numpy().tolist() == [2.5] * 3
    tf_manager.save()  # TF rewrites the file without the line: gpuckpt reads that unverified, as before

    assert gpuckpt.latest_checkpoint(tmp_path) == str(tmp_path / "ckpt-4")
    ours = gpuckpt.CheckpointManager(gpuckpt.Checkpoint(v=gpuckpt.Variable(np.zeros(3, np.float32))), tmp_path,
                                     max_to_keep=2)
    assert ours.checkpoints == [str(tmp_path / "ckpt-3"), str(tmp_path / "ckpt-4")]


@pytest.mark.parametrize("content", [b"", b"garbage{", b'model_checkpoint_path: "ckpt-1"\n\xff'])
def test_a_damaged_state_file_is_an_error_where_tensorflow_raises_or_ignores_it(tf, tmp_path: Path, content) -> None:
    """TF raises for an empty file (ValueError) or bad UTF-8 (UnicodeDecodeError), and for one that does not
    parse only logs "Checkpoint ignored" and returns None. gpuckpt raises DataLossError for all three
    (with nothing to fall back to), so a damaged file is never read as "no checkpoint"."""
    (tmp_path / "checkpoint").write_bytes(content)
    try:
        tf_answer = tf.train.latest_checkpoint(str(tmp_path))
    except (ValueError, UnicodeDecodeError):
        tf_answer = "raised"
    assert tf_answer == ("raised" if content != b"garbage{" else None)
    with pytest.raises(gpuckpt.DataLossError, match="checkpoint state file") as caught:
        gpuckpt.latest_checkpoint(tmp_path)
    assert caught.value.path == str(tmp_path / "checkpoint")
