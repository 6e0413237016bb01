"""FSDP2 / DTensor state saved and restored over torch.distributed (gloo, CPU) under ``torchrun`` on 1, 2 and 4
processes, and a direct launcher for the failure cases whose survivors must raise.

Every launch runs several scenarios of ``torch_worker.py`` in the same processes (torch's import
dominates a launch), under a bounded timeout that kills the launch's whole process group.
Training is bit-identical on every mesh (``model.py``), so losses are compared exactly.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torch.distributed.fsdp")

import gpuckpt  # noqa: E402
import gpuckpt.torch  # noqa: E402, F401
from gpuckpt.storage import recovery  # noqa: E402

from . import model as M  # noqa: E402

WORKER = Path(__file__).with_name("torch_worker.py")
pytestmark = pytest.mark.dist


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str
    timed_out: bool

    def lines(self, pattern: str) -> list[tuple[str, ...]]:
        return re.findall(pattern, self.stdout, re.M)


def _environment() -> dict[str, str]:
    root = str(Path(__file__).resolve().parents[2])
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get(
        "PYTHONPATH")])), TORCH_CPP_LOG_LEVEL="ERROR")


def _finish(processes: list[subprocess.Popen], timeout: float) -> list[tuple[int, str, str, bool]]:
    """Wait for every process until one shared deadline; past it, kill each one's process group."""
    deadline = time.monotonic() + timeout
    out = []
    for process in processes:
        try:
            stdout, stderr = process.communicate(timeout=max(0.1, deadline - time.monotonic()))
            out.append((process.returncode, stdout, stderr, False))
        except subprocess.TimeoutExpired:
            for p in processes:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            stdout, stderr = process.communicate()
            out.append((process.returncode, stdout, stderr, True))
    return out


def torchrun(n: int, directory: Path, *scenarios: str, timeout: float = 150, check: bool = True) -> Run:
    """``torchrun --standalone --nproc_per_node n`` of the worker running ``scenarios``."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
               "--monitor-interval=0.2", str(WORKER), str(directory), *scenarios]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=_environment(), start_new_session=True)
    [(code, out, err, timed_out)] = _finish([process], timeout)
    run = Run(code, out, err, timed_out)
    if check:
        assert not timed_out, f"{' '.join(command)} ran past {timeout} s:\n{out}\n{err[-3000:]}"
        assert code == 0, f"{' '.join(command)} exited {code}:\n{out}\n{err[-3000:]}"
        for scenario in scenarios:
            assert len(run.lines(rf"^rank \d+: done {re.escape(scenario)}$")) == n, out
    return run


def direct(n: int, directory: Path, *scenarios: str, timeout: float = 90) -> Run:
    """The ranks as plain processes (``init_method=env://``, rank 0 hosting the store), so that when one
    dies the others go on and must raise by themselves (torchrun would kill them)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    processes = []
    for rank in range(n):
        env = dict(_environment(), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                   WORLD_SIZE=str(n), LOCAL_RANK=str(rank))
        processes.append(subprocess.Popen([sys.executable, str(WORKER), str(directory), *scenarios],
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                                          start_new_session=True))
    finished = _finish(processes, timeout)
    assert not any(f[3] for f in finished), f"a rank ran past {timeout} s:\n" + "\n".join(f[1] + f[2] for f in finished)
    return Run(max(abs(f[0]) for f in finished), "".join(f[1] for f in finished), "".join(f[2] for f in finished),
               False)


def losses_of(run: Run) -> list[list[float]]:
    """Every ``losses`` line, in order, as floats."""
    return [[float.fromhex(v) for v in line.split()] for line in run.lines(r"^rank \d+: losses (.*)$")]


@pytest.fixture(scope="module")
def reference() -> dict:
    """The uninterrupted plain run (losses), and its state at the checkpoint step (module, optimizer)."""
    torch.set_num_threads(1)
    module = M.build()
    opt = M.optimizer(module)
    before = [M.train_step(module, opt, s) for s in range(M.STEPS_BEFORE)]
    state = {k: v.clone() for k, v in module.state_dict().items()}
    slots = {name: {k: v.clone() for k, v in opt.state[p].items()} for name, p in module.named_parameters()}
    after = [M.train_step(module, opt, s) for s in range(M.STEPS_BEFORE, M.STEPS_BEFORE + M.STEPS_AFTER)]
    return {"losses": before + after, "after": after, "state": state, "slots": slots}


@pytest.fixture(scope="module")
def saved_on_4(tmp_path_factory, reference) -> Path:
    """FSDP2 on 4 ranks, saved asynchronously after each of 3 steps by a manager keeping 2."""
    directory = tmp_path_factory.mktemp("fsdp4")
    run = torchrun(4, directory, "train-save:4")
    assert losses_of(run) == [reference["losses"]] * 4  # training went on while the last save was in flight
    assert len(run.lines(r"^rank \d: ok saved .*ckpt-3 keeping \['ckpt-2', 'ckpt-3'\]$")) == 4
    # a single-process checkpoint of the same state, for the restores the other way round
    module = M.build()
    opt = M.optimizer(module)
    for step in range(M.STEPS_BEFORE):
        M.train_step(module, opt, step)
    gpuckpt.Checkpoint(model=module, optimizer=opt).save(directory / "plain" / "ckpt")
    return directory


def test_async_saves_on_4_ranks_keep_the_newest_two(saved_on_4):
    names = sorted(n for n in os.listdir(saved_on_4 / "fsdp") if n != ".gpuckpt.lock")  # the manager's lock
    assert names == ["checkpoint"] + [f"ckpt-{n}.{s}" for n in (2, 3) for s in
                                      [f"data-0000{r}-of-00004" for r in range(4)] + ["index"]]


def _key(name: str, slot: str | None = None) -> str:
    path = "model/" + name.replace(".", "/")
    if slot is None:
        return f"{path}/.ATTRIBUTES/VARIABLE_VALUE"
    return f"{path}/.OPTIMIZER_SLOT/optimizer/{slot}/.ATTRIBUTES/VARIABLE_VALUE"


def _check_state(get, reference) -> None:
    """Every parameter, buffer and AdamW state of the checkpoint equals the plain run's, bit for bit."""
    for name, value in reference["state"].items():
        assert np.array_equal(np.asarray(get(_key(name))), value.numpy()), name
    for name, slots in reference["slots"].items():
        for slot, value in slots.items():
            assert np.array_equal(np.asarray(get(_key(name, slot))), value.numpy()), (name, slot)


def test_the_merged_index_holds_whole_tensors(saved_on_4, reference):
    with gpuckpt.load_checkpoint(saved_on_4 / "fsdp") as reader:
        _check_state(reader.get_tensor, reference)
        entry = reader.entry(_key("2.weight"))  # 5 rows on 4 ranks: 2, 2, 1 and an empty shard
        assert entry.is_sliced and [s[0].start for s in entry.slices] == [0, 2, 4]
        assert not reader.entry(_key("0.weight", "step")).is_sliced  # a replicated scalar, written once


@pytest.mark.tf
def test_tensorflow_reads_the_merged_checkpoint(saved_on_4, reference):
    tf = pytest.importorskip("tensorflow")
    reader = tf.train.load_checkpoint(str(saved_on_4 / "fsdp"))
    _check_state(reader.get_tensor, reference)


def test_restored_on_2_ranks_from_4_and_from_one_process_trains_on_identically(saved_on_4, reference):
    run = torchrun(2, saved_on_4, "restore:2:fsdp", "restore:2:plain", "deferred:2:fsdp")
    assert losses_of(run) == [reference["after"]] * 6
    assert len(run.lines(r"^rank \d: ok restored 27 keys, \d+ bytes, counter 3$")) == 2
    assert len(run.lines(r"^rank \d: ok restored 27 keys, \d+ bytes, counter 1$")) == 2
    # an optimizer created after a restore of the model alone, then attached, gets its AdamW state (sharded)
    deferred = run.lines(r"^rank \d: ok deferred (\d+) values, DTensor state equal to the checkpoint's$")
    assert len(deferred) == 2 and all(int(n) >= 12 for n in deferred), run.stdout  # 4 parameters x 3 AdamW slots


def test_restored_into_a_plain_module_on_1_rank_and_in_a_single_process_and_a_one_rank_mesh(saved_on_4, reference):
    run = torchrun(1, saved_on_4, "restore:plain:fsdp", "single")
    assert losses_of(run) == [reference["after"]] * 2
    assert run.lines(r"^rank 0: ok single-process restore, DTensor state$")
    module = M.build(seed=1)  # no torch.distributed at all: a plain Checkpoint reads the merged index
    opt = M.optimizer(module)
    gpuckpt.Checkpoint(model=module, optimizer=opt).restore(saved_on_4 / "fsdp").assert_consumed()
    got = [M.train_step(module, opt, s) for s in range(M.STEPS_BEFORE, M.STEPS_BEFORE + M.STEPS_AFTER)]
    assert got == reference["after"]


def test_restored_on_4_ranks_with_a_2x2_mesh_and_dtensors_resharded(saved_on_4, reference):
    run = torchrun(4, saved_on_4, "restore:2x2:fsdp:hsdp", "placements")
    assert losses_of(run) == [reference["after"]] * 4
    assert len(run.lines(r"^rank \d: ok resharded ")) == 4
    assert len(run.lines(r"^rank \d: ok single-process refused: tensor 'a' is a DTensor sharded over a mesh of 4")) == 4
    assert len(run.lines(r"^rank \d: ok partial refused: DTensor 'p' has placement P\(sum\)")) == 4
    # HSDP: each block is held by 2 replicas and written by one, so the index stores each element once
    with gpuckpt.load_checkpoint(saved_on_4 / "hsdp") as reader:
        _check_state(reader.get_tensor, reference)
        assert [s[0].start for s in reader.entry(_key("0.weight")).slices] == [0, 5]


def _assert_nothing_committed(directory: Path) -> None:
    assert gpuckpt.latest_checkpoint(directory) == str(directory / "ckpt-1")
    assert not (directory / "ckpt-2.index").exists()


def test_a_corrupt_block_and_a_stalled_rank_fail_every_rank(saved_on_4, tmp_path):
    shutil.copytree(saved_on_4 / "fsdp", tmp_path / "damaged")
    shard = tmp_path / "damaged" / "ckpt-3.data-00003-of-00004"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x40
    shard.write_bytes(bytes(data))
    run = torchrun(2, tmp_path, "fail:corrupt-atomic:1:damaged/ckpt-3", "fail:corrupt:1:damaged/ckpt-3",
                   "fail:stall-save:1")
    corrupt = run.lines(r"^rank \d: ok DistributedError ranks=\[[\d, ]+\] .*checksum mismatch.*$")
    assert len(corrupt) == 4 and "ckpt-3.data-00003-of-00004" in run.stdout, run.stdout
    # by default and with atomic_restore alike: nothing assigned on any rank (every rank verifies before any writes)
    assert len(run.lines(r"^rank \d: ok params unchanged, optimizer steps \[2.0\]$")) == 4, run.stdout
    assert len(run.lines(r"^rank \d: .*failed and no variable was changed: .*checksum mismatch")) == 4
    assert not run.lines(r"partial|CHANGED"), run.stdout
    stalled = [float(s) for s in run.lines(r"^rank 0: ok DistributedError ranks=\[1\] after ([\d.]+)s, counter 1")]
    assert stalled and 2.5 <= stalled[0] < 8, run.stdout  # the worker's timeout is 3 s; the stall lasts 8 s
    assert "rank 1: no report within 3 s" in run.stdout
    _assert_nothing_committed(tmp_path / "stall-save")


@pytest.mark.parametrize("fault", ["kill-save", "kill-restore", "kill-place"])
def test_a_rank_killed_mid_operation_fails_the_survivor_within_the_timeout(tmp_path, fault):
    run = direct(2, tmp_path, f"fail:{fault}:1")
    waited = [float(s) for s in run.lines(r"^rank 0: ok DistributedError ranks=\[1\] after ([\d.]+)s")]
    assert waited and waited[0] < 8, run.stdout + run.stderr[-3000:]
    assert "rank 1: no report within 3 s" in run.stdout
    if fault == "kill-restore":  # died while verifying: the survivor changed nothing
        assert run.lines(r"^rank 0: ok params unchanged"), run.stdout
    if fault == "kill-place":  # died after every rank verified: the survivor read its part in place, and says so
        assert run.lines(r"^rank 0: ok partial: \d+ restored, 0 failed"), run.stdout
    _assert_nothing_committed(tmp_path / fault)
    deadline = time.monotonic() + 20  # the dead rank's temporary shard goes with the next sweep
    while [n for n in os.listdir(tmp_path / fault) if n.startswith("ckpt-2")] and time.monotonic() < deadline:
        recovery.clean_leftovers(tmp_path / fault, "ckpt")
        time.sleep(0.2)
    assert not [n for n in os.listdir(tmp_path / fault) if n.startswith("ckpt-2")]


def test_when_rank_0_dies_with_the_store_it_hosts_the_others_raise_at_once(tmp_path):
    run = direct(2, tmp_path, "fail:kill-save:0")
    assert run.lines(r"^rank 1: ok DistributedError ranks=\[0\] after [\d.]+s, counter 1: .*is unreachable \(the "
                     r"process group's store failed"), run.stdout + run.stderr[-3000:]
    _assert_nothing_committed(tmp_path / "kill-save")


@pytest.mark.parametrize("fault", ["kill-save", "kill-restore"])
def test_a_rank_killed_under_torchrun_ends_the_job_without_a_commit(tmp_path, fault):
    """torchrun's agent stops the other ranks when one dies; nothing is committed."""
    run = torchrun(2, tmp_path, f"fail:{fault}:1", check=False, timeout=150)  # a hang guard: loaded hosts are slow
    assert run.returncode != 0 and not run.timed_out
    assert not run.lines(r"^rank \d: UNEXPECTED")
    _assert_nothing_committed(tmp_path / fault)
