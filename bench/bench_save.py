"""Save paths beside each other in one run: a fresh prefix, an overwrite of an existing one, and an
asynchronous save (time until ``save`` returns, and until it is committed), with plain writes as the peer.

    python bench/bench_save.py [--api {gpt2,small5000,mixed}] [--scale 8] [--repeat 3] [--no-fsync]

Workloads are ``bench_io.py --api``'s. Each side runs round by round in turn; each keeps its best time.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_io import api_state, interleaved, plain_write  # noqa: E402

import gpuckpt  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--api", choices=("gpt2", "small5000", "mixed"), default="small5000")
    ap.add_argument("--scale", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-fsync", action="store_true")
    args = ap.parse_args()
    fsync = not args.no_fsync
    state = api_state(args.api, args.scale)
    nbytes = sum(v.nbytes for v in state.values())
    ckpt = gpuckpt.Checkpoint(state=gpuckpt.Module())
    for name, value in state.items():
        setattr(ckpt.state, name.replace("/", "_"), gpuckpt.Variable(value))
    sync_options = gpuckpt.CheckpointOptions(fsync=fsync)
    async_options = gpuckpt.CheckpointOptions(fsync=fsync, enable_async=True)
    work = tempfile.mkdtemp(prefix="gpuckpt-bench-save-")
    rounds: dict[str, int] = {}
    returned: list[float] = []

    def fresh(side: str) -> str:
        """A new path for this side's next save; its previous files are deleted outside the clock."""
        rounds[side] = rounds.get(side, 0) + 1
        for old in Path(work).glob(f"{side}-{rounds[side] - 1}*"):
            old.unlink()
        return os.path.join(work, f"{side}-{rounds[side]}")

    def async_save(path: str) -> None:
        start = time.perf_counter()
        ckpt.write(path, options=async_options)
        returned.append(time.perf_counter() - start)
        ckpt.sync()

    overwritten = os.path.join(work, "overwrite")
    ckpt.write(overwritten, options=sync_options)
    try:
        sides = {"plain writes": lambda p: plain_write(p, state, fsync),
                 "fresh prefix": lambda p: ckpt.write(p, options=sync_options),
                 "overwrite": lambda p: ckpt.write(overwritten, options=sync_options),
                 "async, committed": async_save}
        results = interleaved(sides, args.repeat,
                              args_for={name: (lambda name=name: fresh(name.split(",")[0].replace(" ", "_")))
                                        for name in sides})
    finally:
        ckpt.close()
        shutil.rmtree(work, ignore_errors=True)
    per_k = 1000 / len(state)
    print(f"workload {args.api} (scale 1/{args.scale}): {len(state)} tensors, {nbytes / 1e9:.3f} GB; "
          f"fsync={'on' if fsync else 'off'}")
    plain = results["plain writes"]
    for name, seconds in results.items():
        print(f"  {name:18s} {seconds * 1e3:8.1f} ms  {plain / seconds:5.2f}x plain  "
              f"fixed cost {(seconds - plain) * 1e3 * per_k:6.1f} ms per 1,000 tensors")
    print(f"  {'async, returned':18s} {float(np.min(returned)) * 1e3:8.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
