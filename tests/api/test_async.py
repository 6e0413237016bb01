"""Asynchronous saves: snapshot at call time, commit in the background, errors never swallowed."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import gpuckpt
from gpuckpt.storage.filesystem import PosixIO
from gpuckpt.testing import faults
from gpuckpt.testing.faults import FaultyIO

ASYNC = gpuckpt.CheckpointOptions(enable_async=True)


class GatedIO(PosixIO):
    """Holds every data write until ``gate`` is set, so a save stays in flight as long as a test needs."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.writing = threading.Event()

    def pwrite(self, fd: int, data, offset: int) -> None:  # type: ignore[override]
        self.writing.set()
        if not self.gate.wait(30):
            raise TimeoutError("test gate never opened")
        super().pwrite(fd, data, offset)


@pytest.fixture
def gated() -> GatedIO:
    io = GatedIO()
    with faults.injected(io):
        yield io
        io.gate.set()


def state(n: int = 3) -> tuple[gpuckpt.Checkpoint, list[gpuckpt.Variable]]:
    variables = [gpuckpt.Variable(np.zeros(1000 + i, np.float32)) for i in range(n)]
    return gpuckpt.Checkpoint(vars=variables, note=gpuckpt.Variable(b"x")), variables


def restored(path: str, n: int = 3) -> list[np.ndarray]:
    checkpoint, variables = state(n)
    checkpoint.restore(path).assert_consumed()
    return [v.numpy() for v in variables]


def test_saved_values_are_those_at_call_time(tmp_path: Path) -> None:
    checkpoint, variables = state()
    paths = []
    for step in range(1, 6):
        for v in variables:
            v.assign(np.full(v.shape, step, np.float32))
        paths.append(checkpoint.save(tmp_path / "ckpt", options=ASYNC))
        for v in variables:  # training goes on at once
            v.assign(np.full(v.shape, -1, np.float32))
    checkpoint.sync()
    for step, path in enumerate(paths, start=1):
        assert all((a == step).all() for a in restored(path))
    assert gpuckpt.latest_checkpoint(tmp_path) == paths[-1]


def test_save_counter_reads_correctly_right_after_an_async_save(tmp_path: Path, gated: GatedIO) -> None:
    checkpoint, _ = state()
    path = checkpoint.save(tmp_path / "ckpt", options=ASYNC)
    assert path.endswith("ckpt-1") and int(checkpoint.save_counter.numpy()) == 1
    assert not checkpoint.last_save.done()
    gated.gate.set()
    assert checkpoint.last_save.result(10) == path
    assert int(checkpoint.save_counter.numpy()) == 1


def test_latest_checkpoint_never_names_an_uncommitted_save(tmp_path: Path, gated: GatedIO) -> None:
    checkpoint, variables = state()
    manager = gpuckpt.CheckpointManager(checkpoint, tmp_path, max_to_keep=2)
    gated.gate.set()
    first = manager.save(options=ASYNC)
    checkpoint.sync()
    gated.gate.clear()
    variables[0].assign(np.ones(1000, np.float32))
    second = manager.save(options=ASYNC)
    assert gated.writing.wait(10)
    assert gpuckpt.latest_checkpoint(tmp_path) == first
    assert manager.latest_checkpoint == first and manager.checkpoints == [first]
    assert not os.path.exists(second + ".index")
    gated.gate.set()
    checkpoint.sync()
    assert gpuckpt.latest_checkpoint(tmp_path) == second == manager.latest_checkpoint
    assert (restored(second)[0] == 1).all()


@pytest.mark.parametrize("limit", [1, 2])
def test_in_flight_bound(tmp_path: Path, gated: GatedIO, limit: int) -> None:
    checkpoint, _ = state()
    options = gpuckpt.CheckpointOptions(enable_async=True, max_in_flight=limit)
    for _ in range(limit):
        checkpoint.save(tmp_path / "ckpt", options=options)
    returned = threading.Event()
    extra = threading.Thread(target=lambda: (checkpoint.save(tmp_path / "ckpt", options=options), returned.set()))
    extra.start()
    assert not returned.wait(0.3), "a save beyond the bound did not wait"
    assert checkpoint._self_async.in_flight() == limit
    gated.gate.set()
    extra.join(10)
    assert returned.is_set()
    checkpoint.sync()
    assert gpuckpt.latest_checkpoint(tmp_path).endswith(f"ckpt-{limit + 1}")


def test_background_error_surfaces_on_sync_and_leaves_the_previous_checkpoint(tmp_path: Path) -> None:
    checkpoint, variables = state()
    first = checkpoint.save(tmp_path / "ckpt")
    before = sorted(os.listdir(tmp_path))
    variables[0].assign(np.ones(1000, np.float32))
    with faults.injected(FaultyIO("pwrite", 0, errno.ENOSPC)):  # installed until the background save ends
        checkpoint.save(tmp_path / "ckpt", options=ASYNC)
        with pytest.raises(gpuckpt.CheckpointError, match="No space left") as info:
            checkpoint.sync()
    assert info.value.errno == errno.ENOSPC
    checkpoint.sync()  # raised once
    assert gpuckpt.latest_checkpoint(tmp_path) == first
    assert sorted(os.listdir(tmp_path)) == before
    assert (restored(first)[0] == 0).all()


def test_background_error_surfaces_on_the_next_save(tmp_path: Path) -> None:
    checkpoint, _ = state()
    with faults.injected(FaultyIO("fsync", 0, errno.EIO)):
        checkpoint.save(tmp_path / "ckpt", options=ASYNC)
        checkpoint.last_save.wait_committed(10)
    with pytest.raises(gpuckpt.CheckpointError, match="Input/output error"):
        checkpoint.save(tmp_path / "ckpt", options=ASYNC)
    path = checkpoint.save(tmp_path / "ckpt", options=ASYNC)  # the error was raised; saving works again
    checkpoint.sync()
    assert gpuckpt.latest_checkpoint(tmp_path) == path


def test_the_handle_of_a_failed_save_raises_its_error(tmp_path: Path) -> None:
    checkpoint, _ = state()
    with faults.injected(FaultyIO("replace", 0, errno.EIO)):
        checkpoint.write(tmp_path / "other", options=ASYNC)
        assert checkpoint.last_save.wait_staged(0) and checkpoint.last_save.wait_committed(10)
    with pytest.raises(gpuckpt.CheckpointError, match="other"):
        checkpoint.last_save.result()


def test_restore_waits_for_a_save_in_flight(tmp_path: Path, gated: GatedIO) -> None:
    checkpoint, variables = state()
    variables[1].assign(np.full(1001, 7, np.float32))
    path = checkpoint.save(tmp_path / "ckpt", options=ASYNC)
    opened = threading.Timer(0.2, gated.gate.set)
    opened.start()
    status = checkpoint.restore(path)  # would raise NotFoundError if it did not wait
    status.assert_consumed()
    assert (variables[1].numpy() == 7).all()


def test_write_callbacks_run_after_the_commit(tmp_path: Path) -> None:
    checkpoint, _ = state()
    seen = []
    options = gpuckpt.CheckpointOptions(enable_async=True,
                                        experimental_write_callbacks=[lambda p: seen.append(os.path.exists(p + ".index"))])
    checkpoint.save(tmp_path / "ckpt", options=options)
    checkpoint.sync()
    assert seen == [True]


def test_async_manager_keeps_max_to_keep(tmp_path: Path) -> None:
    checkpoint, variables = state()
    manager = gpuckpt.CheckpointManager(checkpoint, tmp_path, max_to_keep=2)
    for step in range(5):
        variables[2].assign(np.full(1002, step, np.float32))
        manager.save(options=ASYNC)
    checkpoint.sync()
    assert [os.path.basename(p) for p in manager.checkpoints] == ["ckpt-4", "ckpt-5"]
    assert sorted(n for n in os.listdir(tmp_path) if n.endswith(".index")) == ["ckpt-4.index", "ckpt-5.index"]
    assert (restored(manager.latest_checkpoint)[2] == 4).all()


def test_device_variables_are_captured_at_call_time(tmp_path: Path) -> None:
    cuda = pytest.importorskip("numba.cuda")
    variable = gpuckpt.Variable(cuda.to_device(np.arange(37, dtype=np.float64)))
    checkpoint = gpuckpt.Checkpoint(v=variable)
    path = checkpoint.save(tmp_path / "ckpt", options=ASYNC)
    variable.assign(np.zeros(37))
    checkpoint.sync()
    check = gpuckpt.Checkpoint(v=gpuckpt.Variable(np.zeros(37)))
    check.restore(path).assert_consumed()
    assert (check.v.numpy() == np.arange(37)).all()


def test_snapshot_buffers_are_reused(tmp_path: Path) -> None:
    checkpoint, _ = state()
    buffers = set()
    for _ in range(4):
        checkpoint.save(tmp_path / "ckpt", options=ASYNC)
        checkpoint.sync()
        buffers.update(id(b) for b, _ in checkpoint._self_captures._free)
    assert len(buffers) == 1


EXIT_SCRIPT = """
import os, sys, time
import numpy as np
import gpuckpt
from gpuckpt.storage import filesystem
from gpuckpt.testing import faults
from gpuckpt.testing.faults import FaultyIO

class SlowIO(filesystem.PosixIO):
    def pwrite(self, fd, data, offset):
        time.sleep(0.5)
        super().pwrite(fd, data, offset)

mode = sys.argv[2]
faults.install(SlowIO() if mode == "slow" else FaultyIO("fsync", 0))
checkpoint = gpuckpt.Checkpoint(v=gpuckpt.Variable(np.arange(10.0)))
checkpoint.save(os.path.join(sys.argv[1], "ckpt"), options=gpuckpt.CheckpointOptions(enable_async=True))
print("returned", flush=True)
"""


def run_exit_script(tmp_path: Path, mode: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(EXIT_SCRIPT), str(tmp_path), mode],
                          capture_output=True, text=True, timeout=120)


def test_a_process_that_exits_with_a_save_in_flight_commits_it(tmp_path: Path) -> None:
    started = time.perf_counter()
    result = run_exit_script(tmp_path, "slow")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "returned"
    assert time.perf_counter() - started >= 0.5
    path = gpuckpt.latest_checkpoint(tmp_path)
    assert path is not None and path.endswith("ckpt-1")
    check = gpuckpt.Checkpoint(v=gpuckpt.Variable(np.zeros(10)))
    check.restore(path).assert_consumed()
    assert (check.v.numpy() == np.arange(10.0)).all()


def test_an_error_nobody_collected_is_reported_at_exit(tmp_path: Path) -> None:
    result = run_exit_script(tmp_path, "fail")
    assert "asynchronous checkpoint save failed" in result.stderr
    assert "ckpt-1" in result.stderr
    assert gpuckpt.latest_checkpoint(tmp_path) is None
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_max_in_flight_is_validated(bad) -> None:
    with pytest.raises(gpuckpt.InvalidArgumentError, match="max_in_flight"):
        gpuckpt.CheckpointOptions(enable_async=True, max_in_flight=bad)


@pytest.mark.parametrize("bad", ["seven", 1.5, np.arange(2)])
def test_a_refused_save_keeps_the_counter_and_frees_its_place(tmp_path: Path, bad) -> None:
    checkpoint, _ = state()
    manager = gpuckpt.CheckpointManager(checkpoint, tmp_path, max_to_keep=2)
    with pytest.raises(gpuckpt.InvalidArgumentError, match="checkpoint_number"):
        manager.save(checkpoint_number=bad, options=ASYNC)
    assert int(checkpoint.save_counter.numpy()) == 0
    done = threading.Event()
    threading.Thread(target=lambda: (manager.save(options=ASYNC), done.set()), daemon=True).start()
    assert done.wait(10), "the next save waited for a place the refused one never took back"
    checkpoint.sync()
    assert manager.latest_checkpoint.endswith("ckpt-1")
