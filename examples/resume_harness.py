"""The SIGKILL-and-resume trial harness that ``gpt2_resume.py`` and ``jax_resume.py`` share.

An example supplies its ``train(directory, config, *, asynchronous, kill=None)``, which logs
``resume <step>`` and ``<step> <loss hex>`` lines to ``directory / "losses.txt"`` and SIGKILLs
itself where ``kill`` says. This module forks the uninterrupted reference run, then per trial a
child killed at a random step and phase and a child that resumes, and compares every logged loss
with the reference's, bit for bit. It imports no framework, so the examples import it from
``examples/`` (``python examples/gpt2_resume.py`` puts that folder first on ``sys.path``).
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol


class TrialConfig(Protocol):
    """What the harness reads from an example's config."""

    @property
    def steps(self) -> int: ...

    @property
    def save_every(self) -> int: ...


@dataclass(frozen=True)
class Kill:
    """Where a child SIGKILLs itself: at ``step``, at the example's ``phase`` of it."""

    step: int
    phase: str


@dataclass(frozen=True)
class Trial:
    """One kill-and-resume trial's outcome."""

    kill: Kill
    asynchronous: bool
    resumed_from: int
    logged: int
    mismatches: int


def in_child(function: Callable[..., Any], *args: Any, setup: Callable[[], None] | None = None,
             **kwargs: Any) -> int:
    """Run ``function`` in a forked child (after ``setup``, in the child); its wait status."""
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            if setup is not None:
                setup()
            function(*args, **kwargs)
        except BaseException:  # noqa: BLE001 - a forked child must end in os._exit whatever happens
            import traceback

            traceback.print_exc()
            code = 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return status


def read_log(path: Path) -> tuple[list[tuple[int, str]], list[int]]:
    """(step, loss hex) lines, and the steps each process resumed from."""
    losses, resumed = [], []
    for line in path.read_text().splitlines():
        first, second = line.split()
        if first == "resume":
            resumed.append(int(second))
        else:
            losses.append((int(first), second))
    return losses, resumed


def draw_kill(chooser: random.Random, config: TrialConfig, phases: Sequence[str], *, phase_first: bool) -> Kill:
    """A random kill point; an ``after_save`` kill only at a step that ends with a save.

    ``phase_first`` keeps the order each example has always drawn in, so a ``--seed`` picks the same trials.
    """
    if phase_first:
        phase = chooser.choice(phases)
        step = chooser.randrange(1, config.steps)
    else:
        step = chooser.randrange(1, config.steps)
        phase = chooser.choice(phases)
    if phase == "after_save":
        step = chooser.randrange(config.save_every, config.steps, config.save_every) - 1
    return Kill(step, phase)


def make_root(root: Path | None, prefix: str) -> Path:
    """The folder the runs go in: ``root``, or a fresh temporary one."""
    return Path(root or tempfile.mkdtemp(prefix=prefix))


def run_trials(train: Callable[..., None], config: TrialConfig, trials: int, seed: int, root: Path, *,
               phases: Sequence[str], phase_first: bool = False,
               setup: Callable[[], None] | None = None) -> list[Trial]:
    """The uninterrupted reference, then ``trials`` kill-and-resume trials; raises on any failure."""
    reference_dir = root / "reference"
    reference_dir.mkdir(parents=True)
    status = in_child(train, reference_dir, config, asynchronous=False, setup=setup)
    if status != 0:
        raise RuntimeError(f"the uninterrupted run failed (wait status {status})")
    reference = dict(read_log(reference_dir / "losses.txt")[0])
    if sorted(reference) != list(range(config.steps)):
        raise RuntimeError("the uninterrupted run did not log every step")
    chooser = random.Random(seed)
    results = []
    for index in range(trials):
        directory = root / f"trial-{index}"
        directory.mkdir()
        kill = draw_kill(chooser, config, phases, phase_first=phase_first)
        asynchronous = index % 2 == 1
        killed = in_child(train, directory, config, asynchronous=asynchronous, kill=kill, setup=setup)
        if not (os.WIFSIGNALED(killed) and os.WTERMSIG(killed) == signal.SIGKILL):
            raise RuntimeError(f"trial {index}: the run was not killed as planned (wait status {killed})")
        resumed = in_child(train, directory, config, asynchronous=asynchronous, setup=setup)
        if resumed != 0:
            raise RuntimeError(f"trial {index}: the resumed run failed (wait status {resumed})")
        losses, starts = read_log(directory / "losses.txt")
        if {step for step, _ in losses} != set(range(config.steps)):
            raise RuntimeError(f"trial {index}: steps missing from the logs")
        mismatches = sum(1 for step, value in losses if reference[step] != value)
        results.append(Trial(kill, asynchronous, starts[-1], len(losses), mismatches))
    return results


def trial_parser(description: str) -> argparse.ArgumentParser:
    """The options every example takes: ``--trials``, ``--seed`` and ``--dir``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dir", type=Path, default=None)
    return parser


def report(results: Sequence[Trial]) -> int:
    """Print one line per trial and a summary; the exit code (1 if any loss differs)."""
    for index, trial in enumerate(results):
        mode = "async" if trial.asynchronous else "sync"
        print(f"trial {index:2d} {mode:5s} killed at step {trial.kill.step:2d} ({trial.kill.phase}), resumed from "
              f"step {trial.resumed_from:2d}: {trial.logged} losses logged, {trial.mismatches} differ")
    bad = sum(t.mismatches for t in results)
    print(f"{len(results)} trials, {sum(t.logged for t in results)} losses compared, {bad} differ from the "
          "uninterrupted run")
    return 1 if bad else 0
