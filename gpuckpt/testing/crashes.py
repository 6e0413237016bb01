"""Kill harness: a child process saves checkpoints in a loop and is SIGKILLed, again and again.

The promise it checks: a checkpoint is either complete and verifiable or invisible, and the
last committed one always survives. Each trial starts a child (``python -m
gpuckpt.testing.crashes child ...``) that restores the directory's latest checkpoint, then
saves through a ``CheckpointManager`` (``max_to_keep=3``, several shards) until it is killed,
either after a random delay or by itself at its Nth system call of storage I/O. Then:

1. the latest checkpoint restores into fresh objects (``assert_consumed``) and every value
   encodes the same step, equal to ``save_counter`` and to the number in the checkpoint's name;
   that step never goes back;
2. a save from this process cleans up: no temporary, aside or orphan data files remain, and
   the checkpoints on disk are exactly those the state file lists.

With ``numbering="repeat"`` every checkpoint number is saved twice, so kills land in
overwrites of the latest checkpoint; those need the recovery that ``restore_or_initialize``
runs before check 1. ``bench/kill_test.py`` runs hundreds of trials; the tests run a sample.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

import gpuckpt
from gpuckpt.options import MaxShardSizePolicy
from gpuckpt.storage import filesystem, recovery
from gpuckpt.testing import faults
from gpuckpt.testing.faults import FaultyIO

NAME = "ckpt"
MAX_TO_KEEP = 3
SHARD_BYTES = 256 << 10


class _StepValues(gpuckpt.Module):
    """The tracked values: tensors of several sizes and dtypes, a dozen scalars and a string."""

    def __init__(self) -> None:
        super().__init__()
        self.kernel = gpuckpt.Variable(np.zeros((192, 256), np.float32))
        self.bias = gpuckpt.Variable(np.zeros(1000, np.float64))
        self.table = gpuckpt.Variable(np.zeros(40_000, np.int64))
        self.small = [gpuckpt.Variable(np.int32(0)) for _ in range(12)]
        self.note = gpuckpt.Variable(b"step 0")


class StepModel:
    """Training state whose every value encodes one step, so a mixed or torn checkpoint shows."""

    def __init__(self) -> None:
        model = _StepValues()
        self.model = model
        self.checkpoint = gpuckpt.Checkpoint(model=model)
        self.checkpoint.save_counter  # created now, so a restore fills it in at once

    def set(self, step: int) -> None:
        for var in (self.model.kernel, self.model.bias, self.model.table, *self.model.small):
            var.assign(np.full(var.shape, step, var.dtype.numpy))
        self.model.note.assign(f"step {step}".encode())

    def step(self) -> int:
        """The step all values encode; AssertionError naming the disagreement otherwise."""
        counter = int(self.checkpoint.save_counter.numpy())
        note = self.model.note.numpy()
        assert isinstance(note, bytes), "a string variable's value is bytes"
        found = {"save_counter": {counter}, "note": {int(note.split()[1])}}
        for name in ("kernel", "bias", "table"):
            found[name] = set(np.unique(getattr(self.model, name).numpy()).tolist())
        found["small"] = {int(v.numpy()) for v in self.model.small}
        if any(values != {counter} for values in found.values()):
            raise AssertionError(f"values encode different steps: {found}")
        return counter


def number_for(step: int, numbering: str) -> int:
    """The checkpoint number a save of ``step`` gets: the step, or every number twice."""
    return step if numbering == "counter" else step // 2


def options(mode: str) -> gpuckpt.CheckpointOptions:
    return gpuckpt.CheckpointOptions(enable_async=mode == "async",
                                     experimental_sharding_callback=MaxShardSizePolicy(SHARD_BYTES))


class _SuicideIO(FaultyIO):
    """Kills its own process with SIGKILL at the chosen storage call."""

    def fail(self, op: str, target: str) -> None:
        os.kill(os.getpid(), signal.SIGKILL)


def child(directory: str, mode: str, numbering: str, kill_at_call: int | None) -> None:
    """Restore the latest checkpoint, then save forever (the parent kills this process)."""
    state = StepModel()
    manager = gpuckpt.CheckpointManager(state.checkpoint, directory, max_to_keep=MAX_TO_KEEP, checkpoint_name=NAME)
    manager.restore_or_initialize()
    step = state.step()
    if kill_at_call is not None:
        faults.install(_SuicideIO("any", kill_at_call))
    print("ready", flush=True)
    while True:
        step += 1
        state.set(step)
        manager.save(checkpoint_number=number_for(step, numbering), options=options(mode))


def save_once(directory: str, numbering: str, mode: str = "sync") -> int:
    """Restore the latest checkpoint here, save the next step, return it (the parent's cleanup save)."""
    state = StepModel()
    manager = gpuckpt.CheckpointManager(state.checkpoint, directory, max_to_keep=MAX_TO_KEEP, checkpoint_name=NAME)
    manager.restore_or_initialize()
    step = state.step() + 1
    state.set(step)
    manager.save(checkpoint_number=number_for(step, numbering), options=options(mode))
    manager.sync()
    return step


def check_latest(directory: str, numbering: str) -> int | None:
    """Restore the latest checkpoint into fresh objects and return the step it holds (None: none yet)."""
    latest = gpuckpt.latest_checkpoint(directory)
    if latest is None:
        return None
    state = StepModel()
    state.checkpoint.restore(latest).assert_consumed()
    step = state.step()
    number = int(latest.rsplit("-", 1)[1])
    if number != number_for(step, numbering):
        raise AssertionError(f"{latest} holds step {step}, which belongs in {NAME}-{number_for(step, numbering)}")
    return step


def check_all_indexed(directory: str) -> None:
    """Every checkpoint with an index is whole: each of its tensors reads back and passes its CRC."""
    for prefix in sorted(_indexed(os.listdir(directory))):
        with gpuckpt.load_checkpoint(os.path.join(directory, prefix)) as reader:
            for key in reader.keys():
                reader.get_tensor(key)


def leftovers_seen(directory: str) -> list[str]:
    """Which kinds of debris a killed save left: temp, aside, orphan data, unlisted checkpoint."""
    names = os.listdir(directory)
    kinds = {"tmp": "temp", "old": "aside"}
    seen = {kinds[m["kind"]] for m in map(filesystem.LEFTOVER.fullmatch, names) if m}
    if recovery.orphan_data_files(directory, NAME):
        seen.add("orphan")
    if _indexed(names) - _listed(directory):
        seen.add("unlisted")
    return sorted(seen)


def check_clean(directory: str) -> None:
    """AssertionError unless only the listed checkpoints, the state file and the lock remain."""
    names = os.listdir(directory)
    debris = [n for n in names if filesystem.LEFTOVER.fullmatch(n)]
    debris += [os.path.basename(p) for p in recovery.orphan_data_files(directory, NAME)]
    if debris:
        raise AssertionError(f"left behind after the next save: {sorted(debris)}")
    if _indexed(names) != _listed(directory):
        raise AssertionError(f"checkpoints on disk {sorted(_indexed(names))} differ from those listed "
                             f"{sorted(_listed(directory))}")


def _indexed(names: list[str]) -> set[str]:
    return {n[: -len(".index")] for n in names if n.endswith(".index")}


def _listed(directory: str) -> set[str]:
    state = filesystem.read_state(directory)
    return set(state.all_model_checkpoint_paths) if state else set()


@dataclass
class Report:
    """What a run of trials saw; ``failures`` holds one line per broken promise."""

    trials: Counter = field(default_factory=Counter)
    debris: Counter = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)

    def line(self) -> str:
        total = sum(self.trials.values())
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(self.trials.items()))
        found = ", ".join(f"{k} in {n}" for k, n in sorted(self.debris.items())) or "none"
        verdict = "all passed" if not self.failures else f"{len(self.failures)} FAILED"
        return (f"kill test: {total} trials ({kinds}): {verdict}; debris found after kills and cleaned "
                f"by the next save: {found}")


def _spawn(directory: str, mode: str, numbering: str, kill_at_call: int | None, log) -> subprocess.Popen:
    argv = [sys.executable, "-m", "gpuckpt.testing.crashes", "child", directory, mode, numbering,
            str(kill_at_call if kill_at_call is not None else -1)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log)
    assert proc.stdout is not None  # stdout=PIPE
    if proc.stdout.readline() != b"ready\n":
        proc.kill()
        proc.wait()
        raise AssertionError(f"child did not start (exit {proc.returncode}); see {log.name}")
    return proc


def _kill(proc: subprocess.Popen, delay: float | None) -> None:
    """SIGKILL after ``delay`` seconds, or wait for the child to kill itself (delay None)."""
    try:
        proc.wait(timeout=delay if delay is not None else 60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if delay is None and proc.returncode != -signal.SIGKILL:
        raise AssertionError(f"child was expected to kill itself, exited with {proc.returncode}")
    if delay is not None and proc.returncode != -signal.SIGKILL:
        raise AssertionError(f"child exited on its own with {proc.returncode}")


def run_series(directory: str, mode: str, numbering: str, kills: list[tuple[str, float | int]],
               report: Report) -> None:
    """Run trials one after another in ``directory``; ``kills`` are ("time", seconds) or ("call", n).

    Stops at the first broken promise, which is recorded in ``report.failures``.
    """
    os.makedirs(directory, exist_ok=True)
    last: int | None = None
    with tempfile.NamedTemporaryFile("w+b", prefix="kill-child-", suffix=".log", delete=False) as log:
        for how, value in kills:
            label = f"{mode}/{numbering}/{how}={value}"
            try:
                proc = _spawn(directory, mode, numbering, int(value) if how == "call" else None, log)
                _kill(proc, value if how == "time" else None)
                report.trials[f"{mode}-{how}"] += 1
                report.debris.update(leftovers_seen(directory))
                if numbering == "repeat":  # an interrupted overwrite of the latest needs its recovery first
                    gpuckpt.CheckpointManager(StepModel().checkpoint, directory, MAX_TO_KEEP,
                                              checkpoint_name=NAME).restore_or_initialize()
                check_all_indexed(directory)
                step = check_latest(directory, numbering)
                if last is not None and (step is None or step < last):
                    raise AssertionError(f"latest checkpoint holds step {step}, but step {last} was committed")
                last = save_once(directory, numbering)
                check_clean(directory)
            except (AssertionError, gpuckpt.CheckpointError) as exc:
                report.failures.append(f"{label}: {type(exc).__name__}: {exc} (child stderr: {log.name})")
                return
    os.unlink(log.name)


def calls_per_save(mode: str = "sync", numbering: str = "counter") -> int:
    """How many storage calls one steady-state save makes (to place kills at each of them)."""
    with tempfile.TemporaryDirectory() as directory:
        for _ in range(MAX_TO_KEEP + 1):
            save_once(directory, numbering, mode)
        recorder = FaultyIO("any", None)
        with faults.injected(recorder):
            save_once(directory, numbering, mode)
        return len(recorder.log)


def plan(random_trials: int, call_modes: tuple[str, ...], seed: int, max_delay: float,
         call_stride: int = 1) -> list[tuple]:
    """(mode, numbering, kills) series: random-moment kills split over both modes and numberings,
    plus, for each mode in ``call_modes``, a kill at every ``call_stride``-th storage call of a save."""
    rng = random.Random(seed)
    series = [(mode, numbering) for mode in ("sync", "async") for numbering in ("counter", "repeat")]
    out = []
    for i, (mode, numbering) in enumerate(series):
        count = random_trials // len(series) + (i < random_trials % len(series))
        out.append((mode, numbering, [("time", rng.uniform(0.0, max_delay)) for _ in range(count)]))
    for mode in call_modes:
        calls = calls_per_save(mode)
        out.append((mode, "counter", [("call", n) for n in range(0, calls, call_stride)]))
    return out


def run(root: str, random_trials: int, call_modes: tuple[str, ...] = ("sync", "async"), seed: int = 0,
        max_delay: float = 0.25, call_stride: int = 1) -> Report:
    """Every series of ``plan`` in its own directory under ``root``."""
    report = Report()
    for mode, numbering, kills in plan(random_trials, call_modes, seed, max_delay, call_stride):
        how = kills[0][0] if kills else "none"
        run_series(os.path.join(root, f"{mode}-{numbering}-{how}"), mode, numbering, kills, report)
    return report


if __name__ == "__main__" and sys.argv[1:2] == ["child"]:
    _directory, _mode, _numbering, _call = sys.argv[2:6]
    child(_directory, _mode, _numbering, None if int(_call) < 0 else int(_call))
