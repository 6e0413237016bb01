"""Faults in the calls that are not writes (unlink during retention, mkdir, the state file's publication),
and another process acting between two of retention's or a commit's calls.

Each must give a typed CheckpointError that names the file and carries the errno, and leave a
directory in which every checkpoint with an index verifies and the next save works.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest

import gpuckpt
from gpuckpt.errors import CommittedSaveError, StatePublishError
from gpuckpt.format import bundle
from gpuckpt.options import StorageConfig
from gpuckpt.storage import commit, filesystem
from gpuckpt.storage.posixio import PosixIO
from gpuckpt.testing import crashes, faults
from gpuckpt.testing.faults import FaultyIO


def model() -> tuple[gpuckpt.Checkpoint, gpuckpt.Variable]:
    v = gpuckpt.Variable(np.zeros(1000, np.float32))
    return gpuckpt.Checkpoint(v=v), v


def value(prefix: str) -> float:
    checkpoint, v = model()
    checkpoint.restore(prefix).assert_consumed()
    return float(v.numpy()[0])


@pytest.mark.parametrize("nth", [0, 1], ids=["index", "data"])
def test_an_unlink_that_fails_during_retention(tmp_path: Path, nth: int) -> None:
    checkpoint, v = model()
    manager = gpuckpt.CheckpointManager(checkpoint, tmp_path, max_to_keep=1)
    manager.save()
    v.assign(np.ones(1000, np.float32))
    with faults.injected(FaultyIO("unlink", nth, errno.EIO)), pytest.raises(CommittedSaveError) as info:
        manager.save()  # deleting ckpt-1 (its index, or then its data file) fails
    error = info.value
    assert error.errno == errno.EIO and error.path and error.path in str(error)
    assert os.path.basename(error.path).startswith("ckpt-1.")
    assert error.checkpoint == str(tmp_path / "ckpt-2") == manager.latest_checkpoint == gpuckpt.latest_checkpoint(
        tmp_path)
    assert value(error.checkpoint) == 1.0 and int(checkpoint.save_counter.numpy()) == 2  # the save stands
    crashes.check_all_indexed(str(tmp_path))
    v.assign(np.full(1000, 3, np.float32))
    assert manager.save() == str(tmp_path / "ckpt-3")  # retention catches up; the sweep takes orphans
    assert sorted(os.listdir(tmp_path)) == [".gpuckpt.lock", "checkpoint", "ckpt-3.data-00000-of-00001",
                                            "ckpt-3.index"]
    assert value(str(tmp_path / "ckpt-3")) == 3.0


def test_a_mkdir_that_fails(tmp_path: Path) -> None:
    checkpoint, _ = model()
    target = tmp_path / "runs" / "one"
    with faults.injected(FaultyIO("mkdir", 1, errno.EACCES)), pytest.raises(gpuckpt.CheckpointError) as info:
        checkpoint.save(target / "ckpt")
    assert info.value.errno == errno.EACCES and info.value.path == str(target) and str(target) in str(info.value)
    assert int(checkpoint.save_counter.numpy()) == 0
    assert os.listdir(tmp_path / "runs") == []  # the parent was made; nothing else
    assert checkpoint.save(target / "ckpt") == str(target / "ckpt-1")
    assert value(str(target / "ckpt-1")) == 0.0


def test_a_manager_whose_directory_cannot_be_made(tmp_path: Path) -> None:
    checkpoint, _ = model()
    manager = gpuckpt.CheckpointManager(checkpoint, tmp_path / "new", max_to_keep=2)
    with faults.injected(FaultyIO("mkdir", 0, errno.ENOSPC)), pytest.raises(gpuckpt.CheckpointError) as info:
        manager.save()
    assert info.value.errno == errno.ENOSPC and info.value.path == str(tmp_path / "new")
    assert os.listdir(tmp_path) == [] and manager.checkpoints == []
    assert manager.save() == str(tmp_path / "new" / "ckpt-1")


def test_a_state_file_that_cannot_be_published_withdraws_the_checkpoint(tmp_path: Path) -> None:
    checkpoint, v = model()
    first = checkpoint.save(tmp_path / "ckpt")
    before = sorted(os.listdir(tmp_path))
    v.assign(np.ones(1000, np.float32))
    # the state file's temporary file is the save's third open (data file, index marker, state file)
    with faults.injected(FaultyIO("open", 2, errno.ENOSPC)), pytest.raises(StatePublishError) as info:
        checkpoint.save(tmp_path / "ckpt")
    error = info.value
    assert error.errno == errno.ENOSPC and error.checkpoint == str(tmp_path / "ckpt-2")
    assert error.path == str(tmp_path / "checkpoint") and error.path in str(error)
    assert sorted(os.listdir(tmp_path)) == before and gpuckpt.latest_checkpoint(tmp_path) == first
    assert int(checkpoint.save_counter.numpy()) == 1
    assert checkpoint.save(tmp_path / "ckpt") == str(tmp_path / "ckpt-2")


def test_a_state_file_whose_directory_sync_fails_stays_committed(tmp_path: Path) -> None:
    checkpoint, v = model()
    v.assign(np.ones(1000, np.float32))
    # fsyncs: data file, directory, index, directory, state file, directory (the last)
    with faults.injected(FaultyIO("fsync", 5, errno.EIO)), pytest.raises(CommittedSaveError) as info:
        checkpoint.save(tmp_path / "ckpt")
    assert info.value.checkpoint == str(tmp_path / "ckpt-1") == gpuckpt.latest_checkpoint(tmp_path)
    assert info.value.errno == errno.EIO and info.value.path == str(tmp_path / "checkpoint")
    assert int(checkpoint.save_counter.numpy()) == 1 and value(info.value.checkpoint) == 1.0


class PlacesBeforeGrab(PosixIO):
    """Another writer renames its new data file into ``path`` just before retention grabs that name."""

    def __init__(self, path: str, new: bytes):
        self.path, self.new, self.done = path, new, False

    def replace(self, src, dst) -> None:  # type: ignore[override]
        if os.fspath(src) == self.path and ".tmp-" in os.fspath(dst) and not self.done:
            self.done = True
            Path(self.path + ".incoming").write_bytes(self.new)
            os.replace(self.path + ".incoming", self.path)
        os.replace(src, dst)


def test_retention_never_deletes_a_data_file_another_writer_just_placed(tmp_path: Path) -> None:
    checkpoint, _ = model()
    prefix = checkpoint.write(tmp_path / "ckpt-1")
    data = bundle.data_file_name(prefix, 0, 1)
    filesystem.remove_checkpoint(prefix, StorageConfig(io=PlacesBeforeGrab(data, b"the other writer's data")))
    assert not os.path.exists(prefix + ".index")
    assert Path(data).read_bytes() == b"the other writer's data"  # put back, not deleted
    assert sorted(os.listdir(tmp_path)) == [os.path.basename(data)]


class DeletesBeforeAside(PosixIO):
    """Another process's retention deletes the old data file just before the commit puts it aside."""

    def replace(self, src, dst) -> None:  # type: ignore[override]
        if ".data-" in os.fspath(src) and ".old-" in os.fspath(dst):
            os.unlink(src)
        os.replace(src, dst)


def test_an_overwrite_whose_old_data_vanishes_still_commits(tmp_path: Path) -> None:
    checkpoint, v = model()
    checkpoint.write(tmp_path / "ckpt-1")
    v.assign(np.full(1000, 2, np.float32))
    with faults.injected(DeletesBeforeAside()):
        prefix = checkpoint.write(tmp_path / "ckpt-1")
    with gpuckpt.load_checkpoint(prefix) as reader:
        assert (reader.get_tensor("v/.ATTRIBUTES/VARIABLE_VALUE") == 2).all()
    assert commit.settle(30)  # the replaced index is deleted in the background
    assert sorted(os.listdir(tmp_path)) == ["ckpt-1.data-00000-of-00001", "ckpt-1.index"]
