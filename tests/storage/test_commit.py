"""The atomic-commit object's seam: the order of its renames and fsyncs, its names, its rollback.

Every call goes through the ``StorageConfig``'s PosixIO, so a recording or failing one sees
(and can break) each step: the commit must leave the old checkpoint as it was, or the new one
whole, and what a failed rollback leaves must be settled by a sweep in the same process.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest

import gpuckpt
from gpuckpt.errors import CheckpointError
from gpuckpt.format import crc
from gpuckpt.format.bundle import BundleEntry, build_index
from gpuckpt.format.dtypes import BY_NAME
from gpuckpt.options import StorageConfig
from gpuckpt.storage import commit, recovery
from gpuckpt.storage.commit import LEFTOVER, AtomicCommit
from gpuckpt.storage.filesystem import FileSystemWriter
from gpuckpt.testing.faults import FaultyIO

UINT8 = BY_NAME["uint8"]


class ScriptedIO(FaultyIO):
    """Records every call, and fails the calls listed as ``(op, nth)`` (0-based, per op)."""

    def __init__(self, failing: set[tuple[str, int]] = frozenset(), err: int = errno.EIO, *, persist: str = ""):
        super().__init__("any", None, err)
        self.failing, self.persist, self.seen = set(failing), persist, dict.fromkeys(("open", "pwrite", "fsync",
                                                                                     "replace", "unlink", "mkdir"), 0)

    def _maybe_fail(self, op: str, target: str) -> None:
        self.log.append((op, target))
        nth, self.seen[op] = self.seen[op], self.seen[op] + 1
        if (op, nth) in self.failing or (self.persist == op and any(o == op and n <= nth for o, n in self.failing)):
            self.fail(op, target)


def write(prefix: Path, values: dict[str, bytes], io: FaultyIO | None = None, num_shards: int = 2) -> None:
    """Commit ``{key: bytes}`` at ``prefix`` over ``num_shards`` data files through ``io``."""
    writer = FileSystemWriter(prefix, num_shards, StorageConfig(io=io) if io else StorageConfig())
    ends = [0] * num_shards
    entries: dict[str | bytes, BundleEntry] = {}
    for i, (key, data) in enumerate(values.items()):
        shard = i % num_shards
        writer.write(shard, ends[shard], np.frombuffer(data, np.uint8))
        entries[key] = BundleEntry(UINT8, (len(data),), shard, ends[shard], len(data), crc.masked_crc32c(data))
        ends[shard] += len(data)
    writer.commit(build_index(num_shards, entries))


def read(prefix: Path) -> dict[str, bytes]:
    """Every value of the checkpoint, each verified against its CRC."""
    with gpuckpt.load_checkpoint(prefix) as reader:
        return {key: reader.get_tensor(key).tobytes() for key in reader.keys()}


def files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


OLD = {"a": b"old-a" * 100, "b": b"old-b" * 50}
NEW = {"a": b"new-a" * 120, "b": b"new-b" * 30}


def shape(log: list[tuple[str, str]]) -> list[str]:
    """The calls of a commit, with names reduced to what kind of file they are."""
    out = []
    for op, target in log:
        name = os.path.basename(target)
        kind = "dir" if target == "<directory>" else (
            "marker" if ".index.tmp-" in name else "aside-index" if ".index.old-" in name else
            "aside-data" if ".old-" in name else "temp-data" if ".tmp-" in name else
            "index" if name.endswith(".index") else "data")
        out.append(f"{op} {kind}")
    return out


def test_names_carry_the_token(tmp_path: Path) -> None:
    c = AtomicCommit(tmp_path / "ck", StorageConfig())
    names = [c.temporary(str(tmp_path / "ck.data-00000-of-00001")), c.aside(str(tmp_path / "ck.index")), c.marker]
    assert all(commit.token_of(n) == c.token and LEFTOVER.fullmatch(os.path.basename(n)) for n in names)
    assert c.marker == str(tmp_path / "ck.index") + f".tmp-{c.token}"
    assert commit.token_of(str(tmp_path / "ck.index")) is None


def test_a_fresh_commit_places_data_then_the_index_each_behind_a_directory_fsync(tmp_path: Path) -> None:
    io = ScriptedIO()
    write(tmp_path / "ck", NEW, io)
    commit_calls = shape(io.log)[4:]  # after the two data files' open and write
    assert commit_calls == ["fsync temp-data", "fsync temp-data", "open marker", "replace data", "replace data",
                            "fsync dir", "pwrite marker", "fsync marker", "replace index", "fsync dir"]
    assert read(tmp_path / "ck") == NEW


def test_an_overwrite_puts_the_old_files_aside_index_first_and_deletes_them_last(tmp_path: Path) -> None:
    write(tmp_path / "ck", OLD)
    io = ScriptedIO()
    write(tmp_path / "ck", NEW, io)
    assert commit.settle(30)  # the unlinks run on the background deleter, after write returned
    calls = shape(io.log)
    start = calls.index("open marker")
    assert calls[start:] == ["open marker", "replace aside-index", "replace aside-data", "replace aside-data",
                             "fsync dir", "replace data", "replace data", "fsync dir", "pwrite marker",
                             "fsync marker", "replace index", "fsync dir",
                             "unlink aside-index", "unlink aside-data", "unlink aside-data"]
    assert read(tmp_path / "ck") == NEW
    assert sorted(files(tmp_path)) == ["ck.data-00000-of-00002", "ck.data-00001-of-00002", "ck.index"]


def test_without_fsync_nothing_is_synced(tmp_path: Path) -> None:
    write(tmp_path / "ck", OLD)
    io = ScriptedIO()
    writer = FileSystemWriter(tmp_path / "ck", 1, StorageConfig(fsync=False, io=io))
    writer.write(0, 0, np.frombuffer(b"xyz", np.uint8))
    writer.commit(build_index(1, {"k": BundleEntry(UINT8, (3,), 0, 0, 3, crc.masked_crc32c(b"xyz"))}))
    assert "fsync" not in {op for op, _ in io.log}
    assert read(tmp_path / "ck") == {"k": b"xyz"}


def overwrite_calls(tmp_path: Path) -> list[tuple[str, int]]:
    """``(op, nth)`` of every call of an overwrite's commit step (from the marker's open on)."""
    write(tmp_path / "rec", OLD)
    io = ScriptedIO()
    write(tmp_path / "rec", NEW, io)
    start = shape(io.log).index("open marker")
    counts: dict[str, int] = {}
    out = []
    for op, _ in io.log:
        out.append((op, counts.get(op, 0)))
        counts[op] = counts.get(op, 0) + 1
    return [call for call in out[start:] if call[0] != "unlink"]  # the unlinks come after the commit


def test_a_failure_at_each_step_of_an_overwrite_rolls_back_to_the_old_checkpoint(tmp_path: Path) -> None:
    for op, nth in overwrite_calls(tmp_path):
        directory = tmp_path / f"{op}-{nth}"
        directory.mkdir()
        write(directory / "ck", OLD)
        before = files(directory)
        with pytest.raises(CheckpointError) as info:
            write(directory / "ck", NEW, ScriptedIO({(op, nth)}))
        assert info.value.errno == errno.EIO and info.value.path == str(directory / "ck.index"), (op, nth)
        assert files(directory) == before, (op, nth)  # the writer's abort removed its temporary files too
        assert read(directory / "ck") == OLD, (op, nth)


def test_a_rollback_rename_that_fails_leaves_the_old_files_aside_for_a_sweep(tmp_path: Path) -> None:
    write(tmp_path / "ck", OLD)
    before = files(tmp_path)
    # renames 0-2 put the old index and data aside; 3 places the first new data file and fails, and so
    # does every rename after it, including the rollback's putting back
    with pytest.raises(CheckpointError, match="the rollback left") as info:
        write(tmp_path / "ck", NEW, ScriptedIO({("replace", 3)}, persist="replace"))
    assert info.value.errno == errno.EIO and "not put back" in str(info.value)
    aside = [n for n in os.listdir(tmp_path) if ".old-" in n]
    assert len(aside) == 3 and not (tmp_path / "ck.index").exists()  # invisible, never half old, half new
    token = commit.token_of(aside[0])
    assert token is not None and commit.abandoned(token)
    assert sorted(recovery.clean_leftovers(tmp_path)) == sorted(str(tmp_path / n) for n in before)
    assert files(tmp_path) == before and read(tmp_path / "ck") == OLD


def test_an_index_that_cannot_be_removed_again_stays_whole_and_the_old_files_go(tmp_path: Path) -> None:
    write(tmp_path / "ck", OLD)
    # fsync 5, the last directory fsync, fails with the new index in place; removing that index
    # (unlink 1; unlink 0 is the marker, already renamed) fails as well
    with pytest.raises(CheckpointError, match="the rollback left"):
        write(tmp_path / "ck", NEW, ScriptedIO({("fsync", 5), ("unlink", 1)}))
    assert read(tmp_path / "ck") == NEW  # whole: its data was not removed, the old data not put back
    swept = recovery.clean_leftovers(tmp_path)
    assert len(swept) == 3 and all(".old-" in p for p in swept)
    assert sorted(files(tmp_path)) == ["ck.data-00000-of-00002", "ck.data-00001-of-00002", "ck.index"]


def test_a_data_file_that_cannot_be_removed_on_rollback_is_an_invisible_orphan(tmp_path: Path) -> None:
    """A fresh commit fails at its last directory fsync (fsync 4); its index goes, one data file stays."""
    with pytest.raises(CheckpointError, match="the rollback left"):
        write(tmp_path / "ckpt-1", NEW, ScriptedIO({("fsync", 4), ("unlink", 2)}))
    assert not (tmp_path / "ckpt-1.index").exists()
    left = sorted(os.listdir(tmp_path))
    assert len(left) == 1 and left[0].startswith("ckpt-1.data-")
    assert recovery.clean_leftovers(tmp_path, "ckpt") == [str(tmp_path / left[0])]  # a manager's sweep removes it
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("op, nth", [("open", 2), ("replace", 0), ("fsync", 2), ("pwrite", 2), ("fsync", 3),
                                     ("replace", 2), ("fsync", 4)])
def test_a_failed_commit_of_fresh_files_leaves_nothing(tmp_path: Path, op: str, nth: int) -> None:
    with pytest.raises(CheckpointError) as info:
        write(tmp_path / "ck", NEW, ScriptedIO({(op, nth)}))
    assert info.value.errno == errno.EIO and "rollback" not in str(info.value)
    assert os.listdir(tmp_path) == []
