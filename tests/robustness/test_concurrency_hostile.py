"""Writers and readers in separate processes, racing on one directory.

* A plain ``Checkpoint.save(dir/"ckpt")`` in one process beside a ``CheckpointManager`` (same
  name, ``max_to_keep=2``) in another: the manager's sweep and retention must never delete the
  other writer's files under a committed index. Every checkpoint a save returned must read whole
  (or be gone entirely, deleted or overwritten by the other writer), and so must every index on
  disk, during the run and after it.
* A reader restoring a prefix while another process rewrites it with ``write()`` (fsync off,
  each version laid out differently): it sees the old checkpoint or the new one, whole, never
  a ``NotFoundError`` or any other error.

A few seconds each in CI; ``GPUCKPT_HOSTILE_LONG=1`` runs each for 60 s.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np

import gpuckpt

DURATION_S = 60.0 if os.environ.get("GPUCKPT_HOSTILE_LONG") else 4.0

SAVER = """
import json, sys, time
import numpy as np
import gpuckpt

directory, mode, duration = sys.argv[1], sys.argv[2], float(sys.argv[3])
values = [gpuckpt.Variable(np.zeros(60_000, np.float32)) for _ in range(3)]
checkpoint = gpuckpt.Checkpoint(vars=values)
manager = gpuckpt.CheckpointManager(checkpoint, directory, max_to_keep=2) if mode == "manager" else None
options = gpuckpt.CheckpointOptions(fsync=False)
report = {"saves": 0, "unreadable": [], "gone": 0, "failed": 0, "failures": {}}


def check(path):
    # read every tensor of path: it must be whole, or gone entirely (deleted or replaced by the other writer)
    try:
        with gpuckpt.load_checkpoint(path) as reader:
            for key in reader.keys():
                reader.get_tensor(key)
    except gpuckpt.NotFoundError as exc:
        if exc.path == path + ".index":
            return "gone"
        report["unreadable"].append(f"{path}: {exc}")
    except gpuckpt.CheckpointError as exc:
        report["unreadable"].append(f"{path}: {type(exc).__name__}: {exc}")
    return "read"


end = time.monotonic() + duration
step = 0
while time.monotonic() < end:
    step += 1
    for v in values:
        v.assign(np.full(v.shape, step, np.float32))
    number = int(checkpoint.save_counter.numpy()) + 1
    try:
        path = manager.save(options=options) if manager else checkpoint.save(directory + "/ckpt", options=options)
    except gpuckpt.CheckpointError as exc:
        # both writers use the prefixes ckpt-N and the plain one holds no lock: when the manager replaces
        # the same prefix mid-commit, the plain save may fail loudly; what it leaves at its prefix must
        # then be invisible or whole, never a torn checkpoint
        report["failed"] += 1
        kind = type(exc).__name__ + (f" errno {exc.errno}" if exc.errno else "")
        report["failures"][kind] = report["failures"].get(kind, 0) + 1
        check(f"{directory}/ckpt-{number}")
        continue
    report["saves"] += 1
    if check(path) == "gone":
        report["gone"] += 1
print(json.dumps(report))
"""

OVERWRITER = """
import sys, time
import numpy as np
import gpuckpt

prefix, duration = sys.argv[1], float(sys.argv[2])
values = [gpuckpt.Variable(np.zeros(100_000, np.float32)) for _ in range(3)]
print("ready", flush=True)
end = time.monotonic() + duration
version = 1
while time.monotonic() < end:
    version += 1
    for v in values:
        v.assign(np.full(v.shape, version, np.float32))
    # "extra" sorts first and changes size, so every version puts the other tensors at other offsets
    extra = gpuckpt.Variable(np.zeros(1000 * (version % 7), np.float32))
    gpuckpt.Checkpoint(vars=values, extra=extra).write(prefix, options=gpuckpt.CheckpointOptions(fsync=False))
print(version)
"""


def spawn(script: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(script), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def read_whole(prefix: str) -> str | None:
    """None if the checkpoint reads whole (or is gone entirely); else what was wrong."""
    try:
        with gpuckpt.load_checkpoint(prefix) as reader:
            for key in reader.keys():
                reader.get_tensor(key)
    except gpuckpt.NotFoundError as exc:
        return None if exc.path == prefix + ".index" else f"{prefix}: {exc}"
    except gpuckpt.CheckpointError as exc:
        return f"{prefix}: {type(exc).__name__}: {exc}"
    return None


def test_plain_save_beside_a_manager_leaves_no_unreadable_checkpoint(tmp_path: Path) -> None:
    procs = [spawn(SAVER, str(tmp_path), mode, str(DURATION_S)) for mode in ("plain", "manager")]
    problems: list[str] = []
    scans = 0
    while any(p.poll() is None for p in procs):
        for name in sorted(os.listdir(tmp_path)):
            if name.endswith(".index"):
                problem = read_whole(str(tmp_path / name[: -len(".index")]))
                if problem:
                    problems.append(problem)
        scans += 1
        time.sleep(0.005)
    reports = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        reports.append(json.loads(out.strip().splitlines()[-1]))
    for name in sorted(os.listdir(tmp_path)):
        if name.endswith(".index"):
            problem = read_whole(str(tmp_path / name[: -len(".index")]))
            if problem:
                problems.append(problem)
    unreadable = [u for r in reports for u in r["unreadable"]]
    print(f"plain save beside a manager for {DURATION_S} s: saves {[r['saves'] for r in reports]}, "
          f"gone before read back {[r['gone'] for r in reports]}, failed loudly {[r['failed'] for r in reports]} "
          f"({[r['failures'] for r in reports]}), directory scans {scans}, unreadable {len(unreadable)}, "
          f"torn on disk {len(problems)}")
    assert all(r["saves"] > 0 for r in reports)
    assert unreadable == [] and problems == []


def test_readers_racing_an_overwrite_in_another_process_never_see_not_found(tmp_path: Path) -> None:
    prefix = str(tmp_path / "same")
    values = [gpuckpt.Variable(np.zeros(100_000, np.float32)) for _ in range(3)]
    gpuckpt.Checkpoint(vars=values).write(prefix)
    gpuckpt.Checkpoint(vars=values).restore(prefix)  # the first restore imports the engines: not the race
    writer = spawn(OVERWRITER, prefix, str(DURATION_S))
    assert writer.stdout.readline() == "ready\n"
    reads, not_found, seen = 0, [], set()
    end = time.monotonic() + DURATION_S
    try:
        while time.monotonic() < end and writer.poll() is None:
            target = [gpuckpt.Variable(np.ones(100_000, np.float32)) for _ in range(3)]
            try:
                gpuckpt.Checkpoint(vars=target).restore(prefix).expect_partial()
            except gpuckpt.NotFoundError as exc:
                not_found.append(str(exc))
                continue  # any other CheckpointError fails the test at once
            versions = {float(np.unique(v.numpy())[0]) for v in target}
            assert len(versions) == 1 and all(len(np.unique(v.numpy())) == 1 for v in target), versions
            seen |= versions
            reads += 1
    finally:
        out, err = writer.communicate(timeout=120)
    assert writer.returncode == 0, err
    assert len(seen) > 1, "the reads never overlapped an overwrite"
    print(f"{reads} restores while another process rewrote the prefix {out.strip()} times: "
          f"{len(not_found)} NotFoundErrors, {len(seen)} versions seen")
    assert not_found == []
    assert reads > 0


PAUSED_SAVE = """
import os, sys, time
import numpy as np
import gpuckpt
from gpuckpt.storage import filesystem
from gpuckpt.testing import faults

directory, go = sys.argv[1], sys.argv[2]


class PauseBeforeIndex(filesystem.PosixIO):
    def pwrite(self, fd, data, offset):
        if os.path.basename(os.readlink(f"/proc/self/fd/{fd}")).startswith("ckpt-1.index.tmp-"):
            print("paused", flush=True)  # the data files are in place; the index is not
            while not os.path.exists(go):
                time.sleep(0.01)
        filesystem.pwrite_all(fd, data, offset)


faults.install(PauseBeforeIndex())
checkpoint = gpuckpt.Checkpoint(v=gpuckpt.Variable(np.arange(50_000, dtype=np.float32)))
print(checkpoint.save(directory + "/ckpt", options=gpuckpt.CheckpointOptions(fsync=False)), flush=True)
"""


def test_the_sweep_spares_a_live_plain_save_between_its_data_and_index_renames(tmp_path: Path) -> None:
    """Deterministic: the other process is held exactly where the orphan sweep used to strike."""
    go = tmp_path / "go"
    proc = spawn(PAUSED_SAVE, str(tmp_path), str(go))
    try:
        assert proc.stdout.readline() == "paused\n", proc.stderr.read()
        assert (tmp_path / "ckpt-1.data-00000-of-00001").exists() and not (tmp_path / "ckpt-1.index").exists()
        checkpoint = gpuckpt.Checkpoint(v=gpuckpt.Variable(np.zeros(8, np.float32)))
        manager = gpuckpt.CheckpointManager(checkpoint, tmp_path, max_to_keep=1)
        manager.save(checkpoint_number=7)  # sweeps first, under the lock the other process does not take
        assert (tmp_path / "ckpt-1.data-00000-of-00001").exists()
    finally:
        go.touch()
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert out.strip() == str(tmp_path / "ckpt-1")
    assert read_whole(str(tmp_path / "ckpt-1")) is None and (tmp_path / "ckpt-1.index").exists()
    with gpuckpt.load_checkpoint(tmp_path / "ckpt-1") as reader:
        assert reader.get_tensor("v/.ATTRIBUTES/VARIABLE_VALUE").tolist() == list(range(50_000))
