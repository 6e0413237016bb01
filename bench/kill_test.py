"""Kill test: SIGKILL a process that saves checkpoints, hundreds of times, and check nothing is lost.

    .venv/bin/python bench/kill_test.py [--trials 200] [--seed 0]

Each trial starts a child that restores the latest checkpoint and saves through a
CheckpointManager (max_to_keep=3, several data shards) in a loop, sync or async, and kills it:
``--trials`` at random moments, plus one kill at every storage call (open, write, fsync,
rename) of a save, for each mode. After every kill the latest checkpoint must restore into
fresh objects with every value encoding the same step (never an older one than was
committed), and the next save must leave no temporary, aside or orphan file. The harness is
``gpuckpt.testing.crashes``; ``docs/durability.md`` explains the guarantees.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time

from gpuckpt.testing import crashes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=200, help="kills at random moments (default 200)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-delay", type=float, default=0.25, help="longest wait before a kill, seconds")
    parser.add_argument("--no-call-kills", action="store_true", help="skip the kill at every storage call")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpuckpt-kill-") as root:
        report = crashes.run(root, args.trials, () if args.no_call_kills else ("sync", "async"),
                             seed=args.seed, max_delay=args.max_delay)
    print(report.line())
    for failure in report.failures:
        print("FAILED", failure)
    print(f"({time.perf_counter() - start:.0f} s)")
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
