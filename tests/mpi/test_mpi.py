"""Distributed saves and restores under a real ``mpirun`` (2, 3 and 4 processes, oversubscribed).

Each test starts ``mpi_worker.py`` with ``mpirun`` and reads what every rank printed. Skipped,
saying why, where mpi4py or an ``mpirun`` is missing (``pip install 'gpuckpt[mpi]'`` brings both),
unless ``GPUCKPT_REQUIRE_MPI`` is set (``.ci/run`` sets it): then that is a failure.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

import gpuckpt
from gpuckpt.storage import recovery

from .mpi_worker import build, same, truth

WORKER = Path(__file__).with_name("mpi_worker.py")
pytestmark = pytest.mark.mpi


def _mpirun() -> list[str] | None:
    """The launcher and the flags this machine needs (Open MPI: root, more ranks than cores)."""
    beside = Path(sys.executable).with_name("mpirun")
    path = str(beside) if beside.exists() else shutil.which("mpirun")
    if path is None:
        return None
    version = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30).stdout
    if "Open MPI" in version or "OpenRTE" in version:
        return [path, "--oversubscribe", "--allow-run-as-root"]
    return [path]


try:
    import mpi4py  # noqa: F401

    MPIRUN = _mpirun()
    WHY = "no mpirun on PATH or beside this Python" if MPIRUN is None else ""
except ImportError:
    MPIRUN, WHY = None, "mpi4py is not installed (pip install 'gpuckpt[mpi]')"
if MPIRUN is None:
    if os.environ.get("GPUCKPT_REQUIRE_MPI"):  # CI sets it: there a missing MPI is a failure, not a skip
        pytest.fail(f"GPUCKPT_REQUIRE_MPI is set but {WHY}", pytrace=False)
    pytest.skip(WHY, allow_module_level=True)


@dataclass
class Run:
    """A finished (or, with ``timed_out``, killed) mpirun."""

    returncode: int
    stdout: str
    stderr: str
    timed_out: bool


def mpirun(n: int, mode: str, directory: Path, *, flags: tuple[str, ...] = (), timeout: float = 90,
           check: bool = True) -> tuple[Run, float]:
    """Run the worker on ``n`` ranks; return what it printed and its wall time.

    Past ``timeout`` the whole process group (mpirun, its daemon, every rank) is killed, so
    nothing lingers into later tests; with ``check`` that is a failure.
    """
    env = dict(os.environ, OMPI_MCA_btl_vader_single_copy_mechanism="none", OMPI_MCA_rmaps_base_oversubscribe="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(WORKER.parent), os.environ.get("PYTHONPATH")])))
    command = [*MPIRUN, *flags, "-n", str(n), sys.executable, str(WORKER), mode, str(directory)]
    started = time.monotonic()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                               start_new_session=True)
    try:
        out, err = process.communicate(timeout=timeout)
        timed_out = False
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        timed_out = True
    done = Run(process.returncode, out, err, timed_out)
    elapsed = time.monotonic() - started
    if check:
        assert not timed_out, f"{' '.join(command)} ran past {timeout} s:\n{out}\n{err}"
        assert done.returncode == 0, f"{' '.join(command)} exited {done.returncode}:\n{out}\n{err}"
        assert sorted(re.findall(r"^rank (\d+): ok", out, re.M)) == [str(r) for r in range(n)], out
    return done, elapsed


@pytest.fixture(scope="module")
def saved_on_4(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("mpi4")
    mpirun(4, "save", directory)
    return directory


def test_save_on_4_writes_one_shard_per_rank_and_one_index(saved_on_4):
    names = sorted(os.listdir(saved_on_4))
    assert names == ["checkpoint", "ckpt-1.data-00000-of-00004", "ckpt-1.data-00001-of-00004",
                     "ckpt-1.data-00002-of-00004", "ckpt-1.data-00003-of-00004", "ckpt-1.index"]


@pytest.mark.parametrize("n, mode", [(1, "restore"), (2, "restore"), (3, "restore"),
                                     (3, "restore-broadcast"), (4, "restore-broadcast")])
def test_restore_on_other_rank_counts_is_bit_identical(saved_on_4, n, mode):
    done, _ = mpirun(n, mode, saved_on_4)
    assert "counter 1" in done.stdout


def test_merged_checkpoint_equals_the_single_process_truth(saved_on_4, tmp_path):
    model, _ = build(0, 1, fill=True)
    reference = gpuckpt.Checkpoint(model=model).write(tmp_path / "single")
    with gpuckpt.load_checkpoint(saved_on_4) as merged, gpuckpt.load_checkpoint(reference) as single:
        for name in truth():
            key = f"model/{name}/.ATTRIBUTES/VARIABLE_VALUE"
            assert same(merged.get_tensor(key), single.get_tensor(key)), key
    restored, _ = build(0, 1, fill=False)
    status = gpuckpt.Checkpoint(model=restored).restore(str(saved_on_4))
    status.assert_existing_objects_matched()
    for name, value in truth().items():
        assert same(getattr(restored, name).numpy(), value), name


@pytest.mark.tf
def test_tensorflow_reads_the_merged_checkpoint(saved_on_4):
    tf = pytest.importorskip("tensorflow")
    reader = tf.train.load_checkpoint(str(saved_on_4))
    for name, value in truth().items():
        got = reader.get_tensor(f"model/{name}/.ATTRIBUTES/VARIABLE_VALUE")
        assert same(got, value), name


def test_a_bad_block_on_one_rank_fails_the_restore_everywhere_and_changes_nothing(saved_on_4, tmp_path):
    shutil.copytree(saved_on_4, tmp_path, dirs_exist_ok=True)
    shard = tmp_path / "ckpt-1.data-00003-of-00004"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x40
    shard.write_bytes(bytes(data))
    for mode in ("restore-corrupt", "restore-corrupt-atomic"):  # every rank verifies before any rank assigns
        done, _ = mpirun(2, mode, tmp_path)
        assert done.stdout.count("ok DistributedError") == 2, done.stdout
        assert "no variable was changed" in done.stdout and "checksum mismatch" in done.stdout
        assert "ckpt-1.data-00003-of-00004" in done.stdout


def test_async_save_on_2_restores_on_4(tmp_path):
    mpirun(2, "save-async", tmp_path)
    assert gpuckpt.latest_checkpoint(tmp_path) == str(tmp_path / "ckpt-1")
    mpirun(4, "restore", tmp_path)


def _assert_previous_checkpoint_is_latest(directory: Path) -> None:
    assert gpuckpt.latest_checkpoint(directory) == str(directory / "ckpt-1")
    assert not (directory / "ckpt-2.index").exists()
    mpirun(2, "restore", directory)


def test_a_rank_that_fails_its_writes_fails_the_save_everywhere(tmp_path):
    done, _ = mpirun(4, "fail-raise", tmp_path)
    assert done.stdout.count("DistributedError ranks=[1]") == 4
    assert "could not write data file" in done.stdout and "Input/output error" in done.stdout
    assert not [n for n in os.listdir(tmp_path) if n.startswith("ckpt-2")]  # every rank removed its temporary shard
    _assert_previous_checkpoint_is_latest(tmp_path)


def test_a_failed_async_save_raises_at_sync_and_frees_the_number(tmp_path):
    done, _ = mpirun(2, "fail-raise-async", tmp_path)
    assert done.stdout.count("async save of") == 2
    assert done.stdout.count("DistributedError ranks=[1]") == 2 and done.stdout.count("counter 1:") == 2
    _assert_previous_checkpoint_is_latest(tmp_path)


def test_a_rank_that_hangs_is_given_up_on_within_the_timeout(tmp_path):
    done, _ = mpirun(2, "fail-hang", tmp_path)
    waited = [float(s) for s in re.findall(r"rank 0: ok DistributedError ranks=\[1\] after ([\d.]+)s", done.stdout)]
    assert waited and 2.5 <= waited[0] < 6, done.stdout  # the worker's timeout is 3 s; the hang lasts 8 s
    assert "rank 1: no report within 3 s" in done.stdout
    _assert_previous_checkpoint_is_latest(tmp_path)


def test_rank_0_past_the_timeout_commits_nothing_as_the_others_may_have_given_up(tmp_path):
    done, _ = mpirun(2, "fail-hang-0", tmp_path)
    assert done.stdout.count("DistributedError ranks=[0]") == 2
    assert "past the 3 s timeout" in done.stdout
    _assert_previous_checkpoint_is_latest(tmp_path)


def test_a_killed_rank_ends_the_job_without_a_commit_or_a_hang(tmp_path):
    """Open MPI's default: a rank killed by a signal makes mpirun end the whole job."""
    done, elapsed = mpirun(4, "fail-kill", tmp_path, check=False, timeout=60)
    assert done.returncode != 0 and elapsed < 60
    assert "UNEXPECTED" not in done.stdout
    _assert_previous_checkpoint_is_latest(tmp_path)
    # the dead ranks' temporary shards are swept once their processes are gone (reaped: a
    # zombie still counts as alive, and mpirun's daemon reaps its children a moment after exiting)
    deadline = time.monotonic() + 20
    while [n for n in os.listdir(tmp_path) if n.startswith("ckpt-2")] and time.monotonic() < deadline:
        recovery.clean_leftovers(tmp_path, "ckpt")
        time.sleep(0.2)
    assert not [n for n in os.listdir(tmp_path) if n.startswith("ckpt-2")]


@pytest.mark.parametrize("dead", [2, 0])
def test_with_ulfm_the_survivors_of_a_killed_rank_raise(tmp_path, dead):
    """With fault tolerance on (``--with-ft ulfm``) the job goes on: every survivor raises, naming the
    dead rank, whether it is a writer (2) or rank 0, which decides.

    Open MPI's ULFM runtime itself sometimes hangs after a rank's death (seen about once in 30
    runs under load, inside MPI calls or at exit, after or before the survivors' reports); such
    a run is an expected failure, not one of gpuckpt's waits, which all end within 13 s here.
    """
    done, elapsed = mpirun(4, f"fail-kill-{dead}", tmp_path, flags=("--with-ft", "ulfm"), check=False, timeout=45)
    if "ulfm" in done.stderr.lower() and "DistributedError" not in done.stdout:
        pytest.skip(f"this mpirun has no ULFM support: {done.stderr[:200]}")
    survivors = sorted(re.findall(rf"^rank (\d+): ok DistributedError ranks=\[{dead}\]", done.stdout, re.M))
    if done.timed_out and survivors != [str(r) for r in range(4) if r != dead]:
        pytest.xfail(f"Open MPI's ULFM runtime hung; survivors that reported: {survivors}")
    assert survivors == [str(r) for r in range(4) if r != dead], done.stdout + done.stderr
    assert "MPI_ERR_PROC_FAILED" in done.stdout
    _assert_previous_checkpoint_is_latest(tmp_path)
