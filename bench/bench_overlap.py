"""Overlap benchmark: how much do checkpoints slow a training loop, synchronous and asynchronous?

    .venv/bin/python bench/bench_overlap.py [--state-mib 256] [--steps 60] [--every 10] [--no-tf] [--dali]

The loop holds ``--state-mib`` of float32 matrices and updates every one of them each step
with a matmul (NumPy on the CPU; CuPy on a GPU when usable). It runs with no checkpoints,
with gpuckpt saving every ``--every`` steps synchronously, and asynchronously; then
TensorFlow's own loop (tf.Variables, tf.matmul) without checkpoints and with TF's async
checkpoint (``experimental_enable_async_checkpoint``). For each it prints the time each save
blocked the loop, the mean and worst slowdown of steps that ran while a save was in flight
(against the median step of the same framework's run without checkpoints), and the total.
A save is in flight from its call until its write callback runs, after the commit.
With ``--dali`` the gpuckpt loops run again with a DALI input pipeline feeding every step
(``bench/dali_input.py``: synthetic JPEGs decoded and augmented on the GPU, on the CPU without
one), saved in the same checkpoint, so the figures include an input pipeline's traffic.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field

import numpy as np

import gpuckpt
from gpuckpt.demo import array_module

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import results as results_json  # noqa: E402 - bench/ is not a package

SIDE = 512  # each matrix is SIDE x SIDE float32: 1 MiB
INNER = 32


@dataclass
class Run:
    """What one configuration measured."""

    name: str
    step_s: list[float] = field(default_factory=list)
    step_spans: list[tuple[float, float]] = field(default_factory=list)
    save_block_s: list[float] = field(default_factory=list)
    save_starts: list[float] = field(default_factory=list)
    commits: list[float] = field(default_factory=list)  # appended by the write callback
    total_s: float = 0.0

    @property
    def in_flight(self) -> list[tuple[float, float]]:
        """(call, commit) of each background save; saves commit in order, one at a time."""
        return list(zip(self.save_starts, self.commits))

    def overlapped_steps(self) -> list[float]:
        """Durations of the steps that ran, at least partly, while a save was in flight."""
        return [d for d, (a, b) in zip(self.step_s, self.step_spans)
                if any(a < end and b > start for start, end in self.in_flight)]

    def committed(self) -> None:
        """Write callback: the save just committed."""
        self.commits.append(time.perf_counter())


def make_state(xp, mib: int) -> list:
    rng = np.random.default_rng(0)
    return [xp.asarray(rng.standard_normal((SIDE, SIDE), dtype=np.float32)) for _ in range(mib)]


def numpy_step(xp, weights: list, a, b) -> None:
    """One training step: a matmul, then every matrix of the state updated in place."""
    update = a @ b
    for w in weights:
        w *= np.float32(0.9999)
        w -= np.float32(1e-6) * update
    synchronize(xp)


def synchronize(xp) -> None:
    if xp is not np:
        xp.cuda.runtime.deviceSynchronize()


def run_gpuckpt(name: str, xp, mib: int, steps: int, every: int | None, enable_async: bool,
                directory: str) -> Run:
    weights = make_state(xp, mib)
    a = xp.ones((SIDE, INNER), np.float32)
    b = xp.ones((INNER, SIDE), np.float32)
    variables = [gpuckpt.Variable(w) for w in weights]
    checkpoint = gpuckpt.Checkpoint(weights=variables)
    manager = gpuckpt.CheckpointManager(checkpoint, directory, max_to_keep=2)
    run = Run(name)
    options = gpuckpt.CheckpointOptions(enable_async=enable_async, experimental_write_callbacks=[run.committed])
    timed_loop(run, lambda: numpy_step(xp, weights, a, b), steps, every,
               save=lambda: manager.save(options=options), sync=checkpoint.sync, in_background=enable_async)
    checkpoint.close()
    return run


def timed_loop(run: Run, step_fn, steps: int, every: int | None, save, sync, in_background: bool) -> None:
    """Run ``steps`` steps, saving every ``every``; time each step and how long each save blocked.

    Commit times come from the saves' write callbacks, so no thread polls the disk meanwhile.
    """
    start = time.perf_counter()
    for step in range(steps):
        t0 = time.perf_counter()
        step_fn()
        t1 = time.perf_counter()
        run.step_s.append(t1 - t0)
        run.step_spans.append((t0, t1))
        if every and (step + 1) % every == 0:
            save()
            run.save_block_s.append(time.perf_counter() - t1)
            if in_background:
                run.save_starts.append(t1)
    sync()
    run.total_s = time.perf_counter() - start
    if not in_background:
        run.commits.clear()


def run_tensorflow(name: str, mib: int, steps: int, every: int | None, directory: str) -> Run:
    import tensorflow as tf

    rng = np.random.default_rng(0)
    weights = [tf.Variable(rng.standard_normal((SIDE, SIDE), dtype=np.float32)) for _ in range(mib)]
    a = tf.ones((SIDE, INNER))
    b = tf.ones((INNER, SIDE))

    @tf.function
    def step_fn():
        update = tf.matmul(a, b)
        for w in weights:
            w.assign(w * 0.9999 - 1e-6 * update)

    checkpoint = tf.train.Checkpoint(weights=weights)
    manager = tf.train.CheckpointManager(checkpoint, directory, max_to_keep=2)
    run = Run(name)
    options = tf.train.CheckpointOptions(experimental_enable_async_checkpoint=True,
                                         experimental_write_callbacks=[run.committed])
    step_fn()  # trace outside the timed loop
    timed_loop(run, step_fn, steps, every, save=lambda: manager.save(options=options),
               sync=checkpoint.sync, in_background=True)
    return run


# -- with a DALI input pipeline (--dali) --------------------------------------------------


def run_gpuckpt_dali(name: str, xp, mib: int, steps: int, every: int | None, enable_async: bool,
                     directory: str, images: str) -> Run:
    """``run_gpuckpt`` with a DALI pipeline (decode + augment) run every step and saved beside the weights."""
    from dali_input import image_pipeline, next_batch

    gpu = xp is not np
    pipe = image_pipeline(images, gpu=gpu, batch_size=32 if gpu else 8, threads=4 if gpu else 2)
    weights = make_state(xp, mib)
    a = xp.ones((SIDE, INNER), np.float32)
    b = xp.ones((INNER, SIDE), np.float32)
    checkpoint = gpuckpt.Checkpoint(weights=[gpuckpt.Variable(w) for w in weights], data=pipe)
    manager = gpuckpt.CheckpointManager(checkpoint, directory, max_to_keep=2)
    run = Run(name)
    options = gpuckpt.CheckpointOptions(enable_async=enable_async, experimental_write_callbacks=[run.committed])

    def step() -> None:
        next_batch(pipe, xp)
        numpy_step(xp, weights, a, b)

    next_batch(pipe, xp)  # the first batch (and nvJPEG's setup) outside the timed loop
    timed_loop(run, step, steps, every, save=lambda: manager.save(options=options), sync=checkpoint.sync,
               in_background=enable_async)
    checkpoint.close()
    return run


def dali_runs(xp, mib: int, steps: int, every: int, fresh) -> list[Run]:
    """The three gpuckpt configurations again, each step also reading a batch from DALI."""
    from dali_input import write_jpegs

    images = write_jpegs(fresh("images"), 256 if xp is not np else 64)
    return [run_gpuckpt_dali(f"gpuckpt+dali: {label}", xp, mib, steps, n, enable_async, fresh(label.split()[0]),
                             images)
            for label, n, enable_async in (("no checkpoints", None, False), ("sync saves", every, False),
                                           ("async saves", every, True))]


def report(runs: list[Run], baselines: dict[str, float], state_bytes: int) -> None:
    print(f"{'configuration':38s} {'block mean':>10s} {'block max':>10s} {'slow mean':>10s} "
          f"{'slow worst':>10s} {'in-flight s':>11s} {'total s':>8s}")
    for run in runs:
        base = baselines[run.name.split(":")[0]]
        over = run.overlapped_steps()
        block = np.array(run.save_block_s) * 1e3
        flight = np.mean([b - a for a, b in run.in_flight]) if run.in_flight else 0.0
        print(f"{run.name:38s} "
              f"{(f'{block.mean():8.1f}ms' if block.size else '-'):>10s} "
              f"{(f'{block.max():8.1f}ms' if block.size else '-'):>10s} "
              f"{(f'{(np.mean(over) / base - 1) * 100:+8.1f}%' if over else '-'):>10s} "
              f"{(f'{(max(over) / base - 1) * 100:+8.1f}%' if over else '-'):>10s} "
              f"{(f'{flight:9.2f}' if run.in_flight else '-'):>11s} {run.total_s:8.2f}")
    print(f"state: {state_bytes / 2**20:.0f} MiB; slowdowns are of steps overlapping a save in flight, against "
          "the median step of the same framework without checkpoints; a synchronous save blocks for its whole "
          "duration, so it has no steps in flight.")


def _json(run: Run) -> dict:
    """A run for bench/report.py: step and save times in seconds from the first step's start."""
    t0 = run.step_spans[0][0] if run.step_spans else 0.0
    return {"name": run.name, "total_s": run.total_s, "step_s": run.step_s,
            "step_start_s": [a - t0 for a, _ in run.step_spans], "save_block_s": run.save_block_s,
            "in_flight_s": [[a - t0, b - t0] for a, b in run.in_flight]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--state-mib", type=int, default=256)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--every", type=int, default=10)
    ap.add_argument("--no-tf", action="store_true", help="skip TensorFlow's loop")
    ap.add_argument("--dali", action="store_true", help="also run the gpuckpt loops fed by a DALI input pipeline")
    ap.add_argument("--dir", default=None, help="where to write (default: a temporary directory)")
    results_json.add_option(ap)
    args = ap.parse_args(argv)
    xp, where = array_module()
    root = tempfile.mkdtemp(prefix="gpuckpt-overlap-", dir=args.dir)
    print(f"overlap benchmark: {args.state_mib} MiB of state, {args.steps} steps, a save every {args.every}; "
          f"loop: {where}; files in {root}; {os.cpu_count()} CPUs")
    try:
        def fresh(name: str) -> str:
            return tempfile.mkdtemp(prefix=name, dir=root)

        runs = [run_gpuckpt("gpuckpt: no checkpoints", xp, args.state_mib, args.steps, None, False, fresh("none")),
                run_gpuckpt("gpuckpt: sync saves", xp, args.state_mib, args.steps, args.every, False, fresh("sync")),
                run_gpuckpt("gpuckpt: async saves", xp, args.state_mib, args.steps, args.every, True, fresh("async"))]
        if args.dali:
            runs += dali_runs(xp, args.state_mib, args.steps, args.every, fresh)
        if not args.no_tf:
            runs += [run_tensorflow("tensorflow: no checkpoints", args.state_mib, args.steps, None, fresh("tfnone")),
                     run_tensorflow("tensorflow: async saves", args.state_mib, args.steps, args.every, fresh("tfasync"))]
        baselines = {run.name.split(":")[0]: statistics.median(run.step_s)
                     for run in runs if run.name.endswith("no checkpoints")}
        report(runs, baselines, args.state_mib << 20)
        config = {"state_mib": args.state_mib, "steps": args.steps, "every": args.every, "loop": where}
        results_json.write(args.json, "overlap", config, {"baselines": baselines, "runs": [_json(r) for r in runs]})
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
