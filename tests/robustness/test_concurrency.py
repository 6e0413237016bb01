"""Concurrent writers and readers: two processes' managers, two threads' saves, reads during overwrites."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np

import gpuckpt
from gpuckpt.format import statefile
from gpuckpt.storage import filesystem

MANAGER_SCRIPT = """
import sys
import numpy as np
import gpuckpt

directory, name, saves = sys.argv[1], sys.argv[2], int(sys.argv[3])
variables = [gpuckpt.Variable(np.zeros(200_000, np.float32)) for _ in range(4)]
checkpoint = gpuckpt.Checkpoint(vars=variables)
manager = gpuckpt.CheckpointManager(checkpoint, directory, max_to_keep=2, checkpoint_name=name)
for step in range(1, saves + 1):
    for v in variables:
        v.assign(np.full(v.shape, step, np.float32))
    manager.save(options=gpuckpt.CheckpointOptions(enable_async=step % 2 == 0))
manager.sync()
"""


def restore_step(prefix: str) -> int:
    variables = [gpuckpt.Variable(np.zeros(200_000, np.float32)) for _ in range(4)]
    gpuckpt.Checkpoint(vars=variables).restore(prefix).expect_partial()
    steps = {float(np.unique(v.numpy())[0]) for v in variables}
    assert len(steps) == 1 and all(len(np.unique(v.numpy())) == 1 for v in variables), steps
    return int(steps.pop())


def test_two_processes_managing_one_directory(tmp_path: Path) -> None:
    saves = 40
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(MANAGER_SCRIPT), str(tmp_path), name, str(saves)],
                              stderr=subprocess.PIPE, text=True) for name in ("alpha", "beta")]
    observed = 0
    while any(p.poll() is None for p in procs):
        raw = (tmp_path / "checkpoint").read_text() if (tmp_path / "checkpoint").exists() else None
        if raw is not None:
            state = statefile.parse(raw, str(tmp_path / "checkpoint"))  # never torn or half-written
            assert state.model_checkpoint_path in state.all_model_checkpoint_paths
            latest = gpuckpt.latest_checkpoint(tmp_path)
            if latest is not None:
                try:
                    restore_step(latest)
                    observed += 1
                except gpuckpt.NotFoundError:
                    pass  # deleted by its manager's retention between the lookup and the read
    for p in procs:
        assert p.wait(120) == 0, p.stderr.read()
    assert observed > 0
    for name in ("alpha", "beta"):
        assert restore_step(str(tmp_path / f"{name}-{saves}")) == saves
    names = os.listdir(tmp_path)
    assert not [n for n in names if filesystem.LEFTOVER.fullmatch(n)]
    assert sorted(n for n in names if n.endswith(".index")) == [
        f"{name}-{n}.index" for name in ("alpha", "beta") for n in (saves - 1, saves)]


def test_saves_from_two_threads_are_serialized(tmp_path: Path) -> None:
    variable = gpuckpt.Variable(np.zeros(50_000, np.int64))
    checkpoint = gpuckpt.Checkpoint(v=variable)
    paths: list[str] = []
    lock = threading.Lock()

    def saver(async_: bool) -> None:
        for _ in range(15):
            path = checkpoint.save(tmp_path / "ckpt", options=gpuckpt.CheckpointOptions(enable_async=async_))
            with lock:
                paths.append(path)

    threads = [threading.Thread(target=saver, args=(flag,)) for flag in (False, True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    checkpoint.sync()
    assert sorted(int(p.rsplit("-", 1)[1]) for p in paths) == list(range(1, 31))
    for path in paths:
        check = gpuckpt.Checkpoint(v=gpuckpt.Variable(np.zeros(50_000, np.int64)))
        check.restore(path).assert_consumed()
        assert int(check.save_counter.numpy()) == int(path.rsplit("-", 1)[1])
    assert gpuckpt.latest_checkpoint(tmp_path) == str(tmp_path / "ckpt-30")


def test_a_reader_sees_the_old_or_the_new_checkpoint_whole(tmp_path: Path) -> None:
    prefix = str(tmp_path / "same")
    variables = [gpuckpt.Variable(np.zeros(100_000, np.float32)) for _ in range(3)]
    checkpoint = gpuckpt.Checkpoint(vars=variables)
    checkpoint.write(prefix)
    stop = threading.Event()

    def overwrite() -> None:
        version = 0
        while not stop.is_set():
            version += 1
            for v in variables:
                v.assign(np.full(v.shape, version, np.float32))
            checkpoint.write(prefix, options=gpuckpt.CheckpointOptions(fsync=False))

    writer = threading.Thread(target=overwrite)
    writer.start()
    seen = set()
    try:
        for _ in range(150):
            with gpuckpt.load_checkpoint(prefix) as reader:
                versions = {float(np.unique(reader.get_tensor(f"vars/{i}/.ATTRIBUTES/VARIABLE_VALUE"))[0])
                            for i in range(3)}
            assert len(versions) == 1, f"a read mixed versions {versions}"
            seen |= versions
    finally:
        stop.set()
        writer.join(60)
    assert len(seen) > 1, "the reads never overlapped an overwrite"
