"""An overwrite of an existing checkpoint beside a write to a fresh prefix, in one run, medians.

    python bench/bench_overwrite.py [--api {tiny,gpt2,small5000,mixed}] [--scale 8] [--repeat 15] [--no-fsync]

Sides alternate within each round. "overwrite" is the time until ``write`` returns (the replaced
files are then deleted in the background); "overwrite + settle" also waits for that deletion, which
is what an overwrite cost when the deletion was on the commit's path. Between timed calls the
pending deletions are settled and the fresh side's previous files removed, outside the clock.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_io import api_state  # noqa: E402

import gpuckpt  # noqa: E402
from gpuckpt.storage import commit  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--api", choices=("tiny", "gpt2", "small5000", "mixed"), default="tiny")
    ap.add_argument("--scale", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--no-fsync", action="store_true")
    args = ap.parse_args()
    state = ({"w": np.arange(256, dtype=np.float32)} if args.api == "tiny" else api_state(args.api, args.scale))
    ckpt = gpuckpt.Checkpoint(state=gpuckpt.Module())
    for name, value in state.items():
        setattr(ckpt.state, name.replace("/", "_"), gpuckpt.Variable(value))
    options = gpuckpt.CheckpointOptions(fsync=not args.no_fsync)
    work = tempfile.mkdtemp(prefix="gpuckpt-bench-overwrite-")
    existing = os.path.join(work, "existing")
    times: dict[str, list[float]] = {"fresh prefix": [], "overwrite": [], "overwrite + settle": []}

    def overwrite_and_settle() -> None:
        ckpt.write(existing, options=options)
        commit.settle()

    try:
        ckpt.write(existing, options=options)
        for r in range(args.repeat):
            sides = {"fresh prefix": lambda: ckpt.write(os.path.join(work, f"fresh-{r}"), options=options),
                     "overwrite": lambda: ckpt.write(existing, options=options),
                     "overwrite + settle": overwrite_and_settle}
            for name in (list(sides) if r % 2 == 0 else list(reversed(sides))):
                start = time.perf_counter()
                sides[name]()
                times[name].append(time.perf_counter() - start)
                commit.settle()
                for old in Path(work).glob(f"fresh-{r}.*"):
                    old.unlink()
    finally:
        ckpt.close()
        shutil.rmtree(work, ignore_errors=True)
    nbytes = sum(v.nbytes for v in state.values())
    fsync = "off" if args.no_fsync else "on"
    print(f"workload {args.api}: {len(state)} tensors, {nbytes / 1e6:.1f} MB; fsync={fsync}; "
          f"median of {args.repeat}")
    fresh = statistics.median(times["fresh prefix"])
    for name, seconds in times.items():
        median = statistics.median(seconds)
        print(f"  {name:20s} {median * 1e3:8.1f} ms  {median / fresh:5.2f}x fresh")
    return 0


if __name__ == "__main__":
    sys.exit(main())
