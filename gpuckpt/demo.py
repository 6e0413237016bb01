"""``gpuckpt demo``: train, save asynchronously, get killed, restart, and prove nothing was lost.

1. A reference run trains a small MLP (NumPy; CuPy when a GPU is usable) for ``--steps``
   steps without interruption and records every step's loss.
2. A child process runs the same training with a CheckpointManager saving asynchronously
   every ``--save-every`` steps, and SIGKILLs itself at step ``--kill-at`` (a save may be in
   flight: it is simply never committed).
3. This process restores the latest committed checkpoint, continues to the end, and checks
   that every loss from the restored step on equals the reference's, bit for bit.
4. It times checkpointing fairly: two identical models train over the same steps, one saving
   asynchronously every ``--save-every`` steps and one not, in blocks that alternate which side
   runs first, after a warm-up block each; a saving block ends only when its saves are
   committed. It prints the overhead per round (median, min and max), both throughputs, and how
   long each save blocked the training loop.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np

import gpuckpt
from gpuckpt.engine.cuda import cupy_if_usable

DIM, HIDDEN, BATCH = 64, 256, 128
DESCRIPTION = ("Train a small model, save asynchronously, get killed, restart from the latest checkpoint, "
               "check that nothing was lost, and time what checkpointing costs.")


class MLP(gpuckpt.Module):
    """Two dense layers, momentum buffers and a step counter: all the state training needs."""

    def __init__(self, xp, seed: int = 0):
        super().__init__()
        rng = np.random.default_rng(seed)
        self.w1 = gpuckpt.Variable(xp.asarray(rng.standard_normal((DIM, HIDDEN)).astype(np.float32) * 0.1))
        self.w2 = gpuckpt.Variable(xp.asarray(rng.standard_normal((HIDDEN, 1)).astype(np.float32) * 0.1))
        self.m1 = gpuckpt.Variable(xp.zeros((DIM, HIDDEN), np.float32))
        self.m2 = gpuckpt.Variable(xp.zeros((HIDDEN, 1), np.float32))
        self.step = gpuckpt.Variable(np.int64(0))


def _batch(xp, step: int):
    rng = np.random.default_rng(10_000 + step)  # data depends only on the step: resumable
    x = rng.standard_normal((BATCH, DIM)).astype(np.float32)
    y = np.sin(x[:, :1] * 2.0) + 0.1 * x[:, 1:2]
    return xp.asarray(x), xp.asarray(y.astype(np.float32))


def train_step(model: MLP, xp, lr: float = 0.01, beta: float = 0.9) -> float:
    """One SGD-with-momentum step, in place; returns the loss."""
    step = int(model.step.numpy())
    x, y = _batch(xp, step)
    w1, w2 = model.w1.value(), model.w2.value()
    h = xp.maximum(x @ w1, 0)
    err = h @ w2 - y
    g2 = h.T @ err * (2.0 / BATCH)
    g1 = x.T @ ((err @ w2.T) * (h > 0)) * (2.0 / BATCH)
    for w, m, g in ((w1, model.m1.value(), g1), (w2, model.m2.value(), g2)):
        m *= beta
        m += g.astype(np.float32)
        w -= np.float32(lr) * m
    model.step.assign(np.int64(step + 1))
    return float((err**2).mean())


@dataclass
class RunStats:
    losses: dict[int, float] = field(default_factory=dict)
    save_block_s: list[float] = field(default_factory=list)
    train_s: float = 0.0
    start_step: int = 0


def run(directory: str | None, steps: int, save_every: int, xp, kill_at: int | None = None, progress=None) -> RunStats:
    """Train to ``steps`` (resuming from ``directory``'s latest checkpoint), saving asynchronously."""
    model = MLP(xp)
    stats = RunStats()
    manager = None
    if directory is not None:
        ckpt = gpuckpt.Checkpoint(model=model)
        manager = gpuckpt.CheckpointManager(ckpt, directory, max_to_keep=3)
        manager.restore_or_initialize()
    stats.start_step = int(model.step.numpy())
    options = gpuckpt.CheckpointOptions(enable_async=True)
    start = time.perf_counter()
    while (step := int(model.step.numpy())) < steps:
        stats.losses[step] = train_step(model, xp)
        if manager is not None and (step + 1) % save_every == 0:
            t = time.perf_counter()
            manager.save(options=options)
            stats.save_block_s.append(time.perf_counter() - t)
        if kill_at is not None and step + 1 == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        if progress is not None:
            progress(step + 1)
    if manager is not None:
        manager.sync()
    stats.train_s = time.perf_counter() - start
    return stats


def array_module():
    """CuPy when a GPU is usable, else NumPy; and a phrase saying which."""
    cupy = cupy_if_usable()
    return (cupy, "CuPy on the GPU") if cupy is not None else (np, "NumPy on the CPU")


def _progress(total: int, label: str):
    if not sys.stdout.isatty():
        return None, None  # a bar is for people; piped output stays plain
    try:
        from rich.progress import Progress
    except ImportError:
        return None, None
    bar = Progress(transient=True)
    task = bar.add_task(label, total=total)
    bar.start()
    return bar, lambda n: bar.update(task, completed=n)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="gpuckpt demo", description=DESCRIPTION)
    ap.add_argument("--steps", type=int, default=400, help="train to this step (default 400)")
    ap.add_argument("--save-every", type=int, default=20, help="save asynchronously every N steps (default 20)")
    ap.add_argument("--kill-at", type=int, default=250, help="the training process kills itself at this step")
    ap.add_argument("--rounds", type=int, default=6,
                    help="timed rounds of 2 x --save-every steps per side for the overhead figure (default 6)")
    ap.add_argument("--dir", default=None, help="checkpoint directory (default: a new temporary one)")
    ap.add_argument("--version", action="version", version=f"gpuckpt {gpuckpt.__version__}",
                    help="print gpuckpt's version and exit")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    xp, where = array_module()
    if args.child:
        run(args.dir, args.steps, args.save_every, xp, kill_at=args.kill_at)
        return 0
    directory = args.dir or tempfile.mkdtemp(prefix="gpuckpt-demo-")
    print(f"gpuckpt demo: MLP trained with {where}; checkpoints in {directory}")
    reference = run(None, args.steps, args.save_every, xp)
    child = [sys.executable, "-m", "gpuckpt.demo", "--child", "--dir", directory, "--steps", str(args.steps),
             "--save-every", str(args.save_every), "--kill-at", str(args.kill_at)]
    code = subprocess.run(child, check=False).returncode
    last_save = args.kill_at // args.save_every * args.save_every
    print(f"1. training process killed at step {args.kill_at} (exit status {code}), its last save "
          f"(step {last_save}) possibly still in flight; latest committed checkpoint: "
          f"{gpuckpt.latest_checkpoint(directory)}")
    bar, progress = _progress(args.steps, "resumed training")
    try:
        resumed = run(directory, args.steps, args.save_every, xp, progress=progress)
    finally:
        if bar is not None:
            bar.stop()
    same = all(resumed.losses[s] == reference.losses[s] for s in resumed.losses)
    print(f"2. restored step {resumed.start_step} and trained to step {args.steps}: losses "
          f"{'identical to' if same else 'DIFFERENT from'} the uninterrupted run's")
    timing = os.path.join(directory, "timing")
    try:
        _report(compare(timing, xp, args.save_every, args.rounds), args.save_every)
    finally:
        shutil.rmtree(timing, ignore_errors=True)
    return 0 if same and resumed.start_step > 0 else 1


@dataclass(frozen=True)
class Comparison:
    """Seconds per round for the same steps without and with asynchronous saves, and each save's
    blocking time."""

    steps_per_round: int
    plain_s: tuple[float, ...]
    saving_s: tuple[float, ...]
    save_block_s: tuple[float, ...]

    @property
    def overheads(self) -> list[float]:
        return [b / a - 1 for a, b in zip(self.plain_s, self.saving_s)]


def compare(directory: str, xp, save_every: int, rounds: int) -> Comparison:
    """Train two identical models over the same steps, one saving asynchronously to ``directory``,
    alternating which goes first each round, after one untimed warm-up block each."""
    plain, saving = MLP(xp), MLP(xp)
    manager = gpuckpt.CheckpointManager(gpuckpt.Checkpoint(model=saving), directory, max_to_keep=2)
    options = gpuckpt.CheckpointOptions(enable_async=True)
    block = 2 * save_every
    blocks: list[float] = []

    def train(model: MLP, save: bool) -> float:
        start = time.perf_counter()
        for _ in range(block):
            train_step(model, xp)
            if save and int(model.step.numpy()) % save_every == 0:
                t = time.perf_counter()
                manager.save(options=options)
                blocks.append(time.perf_counter() - t)
        if save:
            manager.sync()  # the round's saves are paid for in the round
        return time.perf_counter() - start

    train(plain, False)
    train(saving, True)
    blocks.clear()
    plain_s, saving_s = [], []
    for r in range(rounds):
        if r % 2 == 0:
            plain_s.append(train(plain, False))
            saving_s.append(train(saving, True))
        else:
            saving_s.append(train(saving, True))
            plain_s.append(train(plain, False))
    return Comparison(block, tuple(plain_s), tuple(saving_s), tuple(blocks))


def _report(c: Comparison, save_every: int) -> None:
    over = np.array(c.overheads) * 100
    steps = c.steps_per_round * len(c.plain_s)
    print(f"3. checkpointing overhead: {statistics.median(over):+.1f}% (median of {over.size} rounds of "
          f"{c.steps_per_round} steps; min {over.min():+.1f}%, max {over.max():+.1f}%): "
          f"{steps / sum(c.saving_s):.0f} steps/s saving asynchronously every {save_every} steps, "
          f"{steps / sum(c.plain_s):.0f} steps/s without checkpoints, over the same steps, sides alternated "
          "after a warm-up")
    blocks = np.array(c.save_block_s) * 1e3
    if blocks.size:
        print(f"   per-save blocking time: mean {blocks.mean():.2f} ms, max {blocks.max():.2f} ms "
              f"over {blocks.size} saves")




if __name__ == "__main__":
    sys.exit(main())
