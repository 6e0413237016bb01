"""CheckpointManager: retention, intervals, restarts, and its state file, against TF's behaviour."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

import gpuckpt
from gpuckpt.format import statefile


class Clock:
    """A settable time source, in seconds."""

    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance_hours(self, hours: float) -> None:
        self.now += hours * 3600.0


def on_disk(directory: Path) -> list[int]:
    return sorted(int(p.name[len("ckpt-"):-len(".index")]) for p in directory.glob("ckpt-*.index"))


def state(directory: Path) -> statefile.CheckpointState:
    return statefile.parse((directory / "checkpoint").read_text())


def test_max_to_keep_deletes_oldest_and_writes_tf_state(tmp_path: Path) -> None:
    clock = Clock()
    manager = gpuckpt.CheckpointManager(gpuckpt.Checkpoint(v=gpuckpt.Variable(1.0)), tmp_path, max_to_keep=2,
                                        clock=clock)
    for _ in range(3):
        clock.now += 1.5
        manager.save()
    assert on_disk(tmp_path) == [2, 3]
    assert manager.checkpoints == [str(tmp_path / "ckpt-2"), str(tmp_path / "ckpt-3")]
    assert manager.latest_checkpoint == str(tmp_path / "ckpt-3")
    assert state(tmp_path) == statefile.CheckpointState(
        "ckpt-3", ("ckpt-2", "ckpt-3"), (1_000_003.0, 1_000_004.5), 999_999.0)


def test_restart_continues_numbering_and_management(tmp_path: Path) -> None:
    ckpt = gpuckpt.Checkpoint(v=gpuckpt.Variable(1.0))
    first = gpuckpt.CheckpointManager(ckpt, tmp_path, max_to_keep=2)
    for _ in range(3):
        first.save()
    restarted_ckpt = gpuckpt.Checkpoint(v=gpuckpt.Variable(0.0))
    restarted = gpuckpt.CheckpointManager(restarted_ckpt, tmp_path, max_to_keep=2)
    assert restarted.checkpoints == first.checkpoints
    assert restarted.restore_or_initialize() == str(tmp_path / "ckpt-3")
    assert restarted.save() == str(tmp_path / "ckpt-4")
    assert on_disk(tmp_path) == [3, 4]


def test_restore_or_initialize_runs_init_fn_when_empty(tmp_path: Path) -> None:
    calls = []
    manager = gpuckpt.CheckpointManager(gpuckpt.Checkpoint(), tmp_path, max_to_keep=1,
                                        init_fn=lambda: calls.append(1))
    assert manager.restore_or_initialize() is None and calls == [1]


def test_keep_checkpoint_every_n_hours_preserves_and_unlists(tmp_path: Path) -> None:
    clock = Clock()
    manager = gpuckpt.CheckpointManager(gpuckpt.Checkpoint(v=gpuckpt.Variable(1.0)), tmp_path, max_to_keep=1,
                                        keep_checkpoint_every_n_hours=2, clock=clock)
    for _ in range(5):
        clock.advance_hours(1)
        manager.save()
    # saved at +1h..+5h; last preserved starts at -1 s, so +2h (>= 2h after it) and +4h are preserved
    assert on_disk(tmp_path) == [2, 4, 5]
    assert manager.checkpoints == [str(tmp_path / "ckpt-5")]
    assert state(tmp_path).last_preserved_timestamp == clock.now - 3600.0


def test_checkpoint_interval_with_step_counter(tmp_path: Path) -> None:
    step = gpuckpt.Variable(0)
    manager = gpuckpt.CheckpointManager(gpuckpt.Checkpoint(step=step), tmp_path, max_to_keep=None,
                                        step_counter=step, checkpoint_interval=10)
    saved = []
    for value in (0, 0, 5, 10, 14, 25, 25):
        step.assign(value)
        saved.append(manager.save())
    assert [p is not None for p in saved] == [True, False, False, True, False, True, False]
    step.assign(26)
    assert manager.save(check_interval=False) is not None
    assert manager.checkpoint_interval == 10


def test_checkpoint_number_names_the_file(tmp_path: Path) -> None:
    step = gpuckpt.Variable(np.int64(1000))
    manager = gpuckpt.CheckpointManager(gpuckpt.Checkpoint(), tmp_path, max_to_keep=3, checkpoint_name="model")
    assert manager.save(checkpoint_number=step) == str(tmp_path / "model-1000")
    assert manager.save(checkpoint_number=7) == str(tmp_path / "model-7")


def test_only_managed_checkpoints_are_deleted(tmp_path: Path) -> None:
    ckpt = gpuckpt.Checkpoint(v=gpuckpt.Variable(1.0))
    foreign = ckpt.write(tmp_path / "ckpt-0")
    manager = gpuckpt.CheckpointManager(ckpt, tmp_path, max_to_keep=1)
    manager.save()
    manager.save()
    assert Path(foreign + ".index").exists() and on_disk(tmp_path) == [0, 2]


def test_constructor_validation(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="Expected a positive integer or `None` for `max_to_keep`, got 0."):
        gpuckpt.CheckpointManager(gpuckpt.Checkpoint(), tmp_path, max_to_keep=0)
    with pytest.raises(ValueError, match="`step_counter` should be passed if `checkpoint_interval` is not None."):
        gpuckpt.CheckpointManager(gpuckpt.Checkpoint(), tmp_path, max_to_keep=1, checkpoint_interval=5)


def test_reads_tf_written_manager_state(fixtures_root: Path, tmp_path: Path) -> None:
    for name in ("checkpoint", "ckpt-2.index", "ckpt-2.data-00000-of-00001",
                 "ckpt-3.index", "ckpt-3.data-00000-of-00001"):
        (tmp_path / name).write_bytes((fixtures_root / "manager" / name).read_bytes())
    ckpt = gpuckpt.Checkpoint(v=gpuckpt.Variable(np.float64(0)))
    manager = gpuckpt.CheckpointManager(ckpt, tmp_path, max_to_keep=2, clock=Clock(1_795_514_100.0))
    assert manager.checkpoints == [str(tmp_path / "ckpt-2"), str(tmp_path / "ckpt-3")]
    manager.restore_or_initialize()
    assert float(ckpt.v.numpy()) == 4.5
    assert manager.save() == str(tmp_path / "ckpt-4")
    assert on_disk(tmp_path) == [3, 4]


class ManagerMachine(RuleBasedStateMachine):
    """The manager against a trivial model: the list of checkpoint numbers that should be on disk."""

    @initialize(max_to_keep=st.integers(1, 4), hours=st.sampled_from([None, 1.0, 2.5]))
    def setup(self, max_to_keep: int, hours: float | None) -> None:
        import tempfile
        self.dir = Path(tempfile.mkdtemp())
        self.clock = Clock()
        self.max_to_keep, self.hours = max_to_keep, hours
        self.managed: list[tuple[int, float]] = []
        self.preserved: list[int] = []
        self.last_preserved = self.clock.now - 1.0
        self.counter = 0
        self.manager = self._new_manager()

    def _new_manager(self) -> gpuckpt.CheckpointManager:
        ckpt = gpuckpt.Checkpoint(v=gpuckpt.Variable(float(self.counter)))
        manager = gpuckpt.CheckpointManager(ckpt, self.dir, max_to_keep=self.max_to_keep,
                                            keep_checkpoint_every_n_hours=self.hours, clock=self.clock)
        manager.restore_or_initialize()
        return manager

    @rule(hours=st.floats(0.0, 3.0))
    def save(self, hours: float) -> None:
        self.clock.advance_hours(hours)
        self.counter += 1
        assert self.manager.save() == str(self.dir / f"ckpt-{self.counter}")
        self.managed.append((self.counter, self.clock.now))
        while len(self.managed) > self.max_to_keep:
            number, stamp = self.managed.pop(0)
            if self.hours is not None and stamp - self.hours * 3600.0 >= self.last_preserved:
                self.last_preserved = stamp
                self.preserved.append(number)

    @precondition(lambda self: self.counter > 0)
    @rule()
    def restart(self) -> None:
        # TF's rule on recovery: only checkpoints newer than the last preserved one stay managed;
        # the others (same timestamp, possible with a fake clock) stay on disk, unmanaged.
        self.preserved += [n for n, stamp in self.managed if stamp <= self.last_preserved]
        self.managed = [(n, stamp) for n, stamp in self.managed if stamp > self.last_preserved]
        self.manager = self._new_manager()

    @invariant()
    def files_match_model(self) -> None:
        assert on_disk(self.dir) == sorted(self.preserved + [n for n, _ in self.managed])
        assert self.manager.checkpoints == [str(self.dir / f"ckpt-{n}") for n, _ in self.managed]


TestManagerMachine = ManagerMachine.TestCase
TestManagerMachine.settings = settings(max_examples=25, stateful_step_count=12, deadline=None)
