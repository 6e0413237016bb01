"""Disk full and I/O errors at every storage call of a save: a clear error, nothing lost, nothing left.

For each way of saving (``CheckpointManager.save``, ``Checkpoint.save``, and ``Checkpoint.write``
over an existing prefix), ENOSPC and EIO are injected at every open, write, fsync and rename the
save makes, one at a time. The save must raise a ``CheckpointError`` carrying the errno and
naming a file. If the fault came before the state file named the new checkpoint, the directory
must be byte for byte as before and the counter given back; after that point (a directory
fsync or a deletion of an old checkpoint), the new checkpoint must be the whole latest one.
Either way the next save works and numbers on. Then the same, for real, under RLIMIT_FSIZE.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import gpuckpt
from gpuckpt.errors import CommittedSaveError
from gpuckpt.storage import commit, filesystem, recovery
from gpuckpt.testing import crashes, faults
from gpuckpt.testing.faults import FaultyIO


class Scenario:
    """A directory with earlier checkpoints, and one more save to break."""

    def __init__(self, directory: Path, api: str):
        self.directory, self.api = directory, api
        self.state = crashes.StepModel()
        self.manager = gpuckpt.CheckpointManager(self.state.checkpoint, directory, max_to_keep=crashes.MAX_TO_KEEP,
                                                 checkpoint_name=crashes.NAME)
        self.written = 0  # write() keeps no count: the last step it wrote
        for _ in range(crashes.MAX_TO_KEEP):
            self.save()

    def count(self) -> int:
        """The number of the last save that stayed committed."""
        return self.written if self.api == "write" else int(self.state.checkpoint.save_counter.numpy())

    def save(self) -> str:
        step = self.count() + 1
        self.state.set(step)
        options = crashes.options("sync")
        if self.api == "manager":
            return self.manager.save(options=options)
        if self.api == "save":
            return self.state.checkpoint.save(self.directory / crashes.NAME, options=options)
        self.state.checkpoint.save_counter.assign(step)  # the model checks that it agrees with the values
        path = self.state.checkpoint.write(self.directory / crashes.NAME, options=options)
        self.written = step
        assert commit.settle(60)  # the replaced files are deleted in the background: see (and break) those unlinks too
        return path

    def latest(self) -> str:
        if self.api == "write":
            return str(self.directory / crashes.NAME)
        return gpuckpt.latest_checkpoint(self.directory)

    def files(self) -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in sorted(self.directory.iterdir())}


def restored_step(prefix: str) -> int:
    state = crashes.StepModel()
    state.checkpoint.restore(prefix).assert_consumed()
    return state.step()


def recorded_calls(tmp_path: Path, api: str) -> list[tuple[str, str]]:
    scenario = Scenario(tmp_path / f"record-{api}", api)
    recorder = FaultyIO("any", None)
    with faults.injected(recorder):
        scenario.save()
    return recorder.log


def names_new_checkpoint_from(calls: list[tuple[str, str]]) -> int:
    """Index of the first call after which the state file names the new checkpoint."""
    renames = [i for i, (op, target) in enumerate(calls) if op == "replace" and target.endswith("/checkpoint")]
    return renames[0] + 1 if renames else len(calls)


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EIO], ids=["ENOSPC", "EIO"])
@pytest.mark.parametrize("api", ["manager", "save", "write"])
def test_fault_at_every_storage_call(tmp_path: Path, api: str, err: int) -> None:
    calls = recorded_calls(tmp_path, api)
    named_from = names_new_checkpoint_from(calls)
    deletes = {"unlink"} if api != "save" else set()  # retention, and the replaced files of an overwrite
    assert {op for op, _ in calls} == {"open", "pwrite", "fsync", "replace", *deletes}
    for position, (op, target) in enumerate(calls):
        nth = sum(1 for other, _ in calls[:position] if other == op)
        where = f"{err=} at {op} #{nth} ({target})"
        scenario = Scenario(tmp_path / f"{op}-{nth}", api)
        before, previous = scenario.files(), scenario.latest()
        counter = scenario.count()
        if op == "unlink" and ".old-" in target:  # the replaced files, deleted once the commit is done
            with faults.injected(FaultyIO(op, nth, err)):
                scenario.save()  # committed; the file left behind is the sweep's (this writer gave up on it)
            left = [str(scenario.directory / n) for n in os.listdir(scenario.directory) if ".old-" in n]
            assert len(left) == 1, where
            assert recovery.clean_leftovers(scenario.directory) == left, where
            assert restored_step(scenario.latest()) == counter + 1, where
            scenario.written = counter + 1 if api == "write" else scenario.written
            expected_next = counter + 2
        else:
            expected_next = _fail_and_check(scenario, op, nth, err, where, position < named_from, before, previous)
        assert scenario.save().endswith(f"-{expected_next}" if api != "write" else crashes.NAME), where
        assert restored_step(scenario.latest()) == expected_next, where
        crashes.check_all_indexed(str(scenario.directory))
        if api == "manager":
            crashes.check_clean(str(scenario.directory))
        assert not [n for n in os.listdir(scenario.directory) if filesystem.LEFTOVER.fullmatch(n)], where


def _fail_and_check(scenario: Scenario, op: str, nth: int, err: int, where: str, before_named: bool,
                    before: dict[str, bytes], previous: str) -> int:
    """Fail the save at ``op`` #``nth``; check the outcome; return the number the next save must get."""
    counter = scenario.count()
    with faults.injected(FaultyIO(op, nth, err)), pytest.raises(gpuckpt.CheckpointError) as info:
        scenario.save()
    assert info.value.errno == err, where
    assert info.value.path and info.value.path in str(info.value), where
    if before_named:
        assert not isinstance(info.value, CommittedSaveError), where
        assert scenario.files() == before, where
        assert scenario.latest() == previous and restored_step(previous) == counter, where
        assert scenario.count() == counter, where
        return counter + 1
    assert isinstance(info.value, CommittedSaveError), where
    assert info.value.checkpoint == scenario.latest() == str(scenario.directory / f"{crashes.NAME}-{counter + 1}"), \
        where
    assert restored_step(scenario.latest()) == counter + 1, where
    return counter + 2


FILE_SIZE_LIMIT = """
import json, resource, signal, sys
import gpuckpt
from gpuckpt.testing import crashes, faults

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit then fail with EFBIG
state = crashes.StepModel()
manager = gpuckpt.CheckpointManager(state.checkpoint, sys.argv[1], max_to_keep=crashes.MAX_TO_KEEP,
                                    checkpoint_name=crashes.NAME)
for step in (1, 2):
    state.set(step)
    manager.save(options=crashes.options("sync"))
resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 10, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
state.set(3)
try:
    manager.save(options=crashes.options("sync"))
    outcome = {"raised": None}
except gpuckpt.CheckpointError as exc:
    outcome = {"raised": type(exc).__name__, "errno": exc.errno, "message": str(exc)}
outcome.update(counter=int(state.checkpoint.save_counter.numpy()), checkpoints=manager.checkpoints)
print(json.dumps(outcome))
"""


def test_file_size_limit_fails_the_save_cleanly(tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, "-c", FILE_SIZE_LIMIT, str(tmp_path)], capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 0, run.stderr
    outcome = json.loads(run.stdout.splitlines()[-1])
    assert outcome["raised"] == "CheckpointError" and outcome["errno"] == errno.EFBIG, outcome
    assert "ckpt-3" in outcome["message"], outcome
    assert outcome["counter"] == 2 and outcome["checkpoints"] == [str(tmp_path / "ckpt-1"), str(tmp_path / "ckpt-2")]
    assert gpuckpt.latest_checkpoint(tmp_path) == str(tmp_path / "ckpt-2")
    assert restored_step(str(tmp_path / "ckpt-2")) == 2
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(("ckpt-1.", "ckpt-2."))) == \
        [".gpuckpt.lock", "checkpoint"]
    assert crashes.save_once(str(tmp_path), "counter") == 3
    crashes.check_clean(str(tmp_path))
