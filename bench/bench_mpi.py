"""Aggregate save and restore throughput of distributed checkpoints on 1, 2 and 4 MPI ranks,
beside the single-process figure for the same state, in one run.

    python bench/bench_mpi.py [--size-mib 1024] [--ranks 1 2 4] [--rounds 3] [--no-fsync]
                              [--replicated-fraction 0.25] [--dir DIR]

The state: four float32 matrices sharded by rows across the ranks (3/4 of the bytes) and
sixteen replicated float32 tensors (1/4; ``--replicated-fraction``). Aggregate throughput is
the global checkpoint size divided by the wall time of the slowest rank, best of ``--rounds``. Saves are durable (fsync)
unless ``--no-fsync``. Restores are "cold": every data file is dropped from the page cache
(fdatasync, then posix_fadvise DONTNEED) before each one. The distributed restore is timed for
both ways of loading replicated tensors, alternating which goes first: every rank reads them
(``read``) or rank 0 reads and broadcasts (``broadcast``). Runs ``mpirun`` from the same virtual
environment (Open MPI flags: --oversubscribe --allow-run-as-root); each rank count is one ``mpirun``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gpuckpt  # noqa: E402
from gpuckpt.distributed import DistributedCheckpoint, Sharded, set_layout  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import results as results_json  # noqa: E402 - bench/ is not a package

LARGE, REPLICATED = 4, 16


REPLICATED_FRACTION = 0.25  # --replicated-fraction


def set_replicated_fraction(fraction: float) -> None:
    global REPLICATED_FRACTION
    REPLICATED_FRACTION = fraction


def shapes(total: int) -> tuple[tuple[int, int], tuple[int]]:
    """Global shape of each sharded matrix and of each replicated vector (float32)."""
    cols = 1024
    replicated = int(total * REPLICATED_FRACTION)
    rows = (total - replicated) // LARGE // 4 // cols
    return (rows, cols), (replicated // REPLICATED // 4,)


def build(total: int, rank: int, size: int) -> gpuckpt.Module:
    """This rank's part of the state (``size`` 0: the whole state, for the single process)."""
    (rows, cols), vector = shapes(total)
    rng = np.random.default_rng(1)
    model = gpuckpt.Module()
    for i in range(LARGE):
        if size:
            layout = Sharded.split((rows, cols), rank, size)
            var = gpuckpt.Variable(rng.standard_normal(layout.lengths, dtype=np.float32), name=f"w{i}")
            set_layout(var, layout)
        else:
            var = gpuckpt.Variable(rng.standard_normal((rows, cols), dtype=np.float32), name=f"w{i}")
        setattr(model, f"w{i}", var)
    for i in range(REPLICATED):
        setattr(model, f"r{i}", gpuckpt.Variable(np.full(vector, i, np.float32), name=f"r{i}"))
    return model


def global_bytes(total: int) -> int:
    (rows, cols), (n,) = shapes(total)
    return 4 * (LARGE * rows * cols + REPLICATED * n)


def drop_cache(prefix: str) -> None:
    """Write back and evict a checkpoint's files from the page cache, so the next read is from disk."""
    directory, base = os.path.split(prefix)
    for name in os.listdir(directory):
        if name.startswith(base + "."):
            fd = os.open(os.path.join(directory, name), os.O_RDONLY)
            try:
                os.fdatasync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def remove(prefix: str) -> None:
    directory, base = os.path.split(prefix)
    for name in os.listdir(directory):
        if name.startswith(base + "."):
            os.unlink(os.path.join(directory, name))


# -- one MPI rank ----------------------------------------------------------------------------------

def worker(args) -> None:
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    total = args.size_mib << 20
    dist = DistributedCheckpoint(gpuckpt.Checkpoint(model=build(total, rank, size)))
    options = gpuckpt.CheckpointOptions(fsync=not args.no_fsync)
    prefix = os.path.join(args.dir, f"dist{size}")
    best = {"save": float("inf"), "restore_read": float("inf"), "restore_broadcast": float("inf")}

    def timed(step) -> float:
        comm.Barrier()
        started = time.perf_counter()
        step()
        elapsed = time.perf_counter() - started
        return comm.allreduce(elapsed, op=MPI.MAX)

    for round_ in range(args.rounds):
        if rank == 0 and os.path.exists(prefix + ".index"):
            remove(prefix)
        best["save"] = min(best["save"], timed(lambda: dist.write(prefix, options)))
        for strategy in ("read", "broadcast")[:: 1 if round_ % 2 == 0 else -1]:  # alternate which goes first
            if rank == 0:
                drop_cache(prefix)
            dist.replicated = strategy
            best[f"restore_{strategy}"] = min(best[f"restore_{strategy}"], timed(lambda: dist.restore(prefix)))
    if rank == 0:
        remove(prefix)
        print(json.dumps({"ranks": size, **best}), flush=True)
    dist.close()


# -- the driver ------------------------------------------------------------------------------------

def single_process(args) -> dict:
    total = args.size_mib << 20
    model = build(total, 0, 0)
    checkpoint = gpuckpt.Checkpoint(model=model)
    options = gpuckpt.CheckpointOptions(fsync=not args.no_fsync)
    prefix = os.path.join(args.dir, "single")
    best = {"save": float("inf"), "restore": float("inf")}
    for _ in range(args.rounds):
        if os.path.exists(prefix + ".index"):
            remove(prefix)
        started = time.perf_counter()
        checkpoint.write(prefix, options)
        best["save"] = min(best["save"], time.perf_counter() - started)
        drop_cache(prefix)
        started = time.perf_counter()
        checkpoint.read(prefix).assert_consumed()
        best["restore"] = min(best["restore"], time.perf_counter() - started)
    remove(prefix)
    return best


def mpirun() -> list[str]:
    beside = Path(sys.executable).with_name("mpirun")
    path = str(beside) if beside.exists() else shutil.which("mpirun")
    if path is None:
        raise SystemExit("no mpirun: pip install 'gpuckpt[mpi]'")
    version = subprocess.run([path, "--version"], capture_output=True, text=True).stdout
    return [path, "--oversubscribe", "--allow-run-as-root"] if "Open MPI" in version else [path]


def distributed(args, ranks: int) -> dict:
    command = [*mpirun(), "-n", str(ranks), sys.executable, __file__, "--worker", "--size-mib", str(args.size_mib),
               "--rounds", str(args.rounds), "--dir", args.dir, "--replicated-fraction", str(args.replicated_fraction),
               *(["--no-fsync"] if args.no_fsync else [])]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-fsync", action="store_true")
    parser.add_argument("--replicated-fraction", type=float, default=REPLICATED_FRACTION,
                        help="share of the bytes in replicated tensors (the rest is sharded)")
    parser.add_argument("--dir", default=None)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    results_json.add_option(parser)
    args = parser.parse_args()
    set_replicated_fraction(args.replicated_fraction)
    if args.worker:
        return worker(args)
    own_dir = args.dir is None
    args.dir = args.dir or tempfile.mkdtemp(prefix="gpuckpt-bench-mpi-")
    try:
        gib = global_bytes(args.size_mib << 20) / (1 << 30)
        print(f"state {gib:.3f} GiB ({1 - args.replicated_fraction:.0%} sharded by rows, "
              f"{args.replicated_fraction:.0%} replicated), fsync {'off' if args.no_fsync else 'on'}, "
              f"cold restores, best of {args.rounds}, {os.cpu_count()} CPUs")
        print(f"{'':24}{'save GiB/s':>12}{'restore GiB/s':>15}{'restore, bcast':>16}")
        one = single_process(args)
        rows = [{"setup": "single process", "save_s": one["save"], "restore_s": one["restore"]}]
        print(f"{'single process':24}{gib / one['save']:12.2f}{gib / one['restore']:15.2f}{'':>16}", flush=True)
        for n in args.ranks:
            r = distributed(args, n)
            rows.append({"setup": f"MPI, {n} ranks", "ranks": n, "save_s": r["save"], "restore_s": r["restore_read"],
                         "restore_broadcast_s": r["restore_broadcast"]})
            print(f"{f'MPI, {n} rank' + ('s' if n > 1 else ''):24}{gib / r['save']:12.2f}"
                  f"{gib / r['restore_read']:15.2f}{gib / r['restore_broadcast']:16.2f}", flush=True)
        config = {"size_mib": args.size_mib, "rounds": args.rounds, "fsync": not args.no_fsync}
        results_json.write(args.json, "mpi", config, {"bytes": global_bytes(args.size_mib << 20), "rows": rows})
    finally:
        if own_dir:
            shutil.rmtree(args.dir, ignore_errors=True)


if __name__ == "__main__":
    main()
