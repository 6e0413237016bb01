"""Save/restore throughput of gpuckpt's CPU path beside plain file I/O and TensorFlow, in one run.

Each comparison alternates the sides round by round and keeps each side's best time.

    python bench/bench_io.py [--size-mib 1024] [--no-fsync] [--no-tf] [--dir DIR]

The state is a few large float32 tensors (3/4 of the bytes) and many 64 KiB ones (1/4).
Every side gets the same durability: with fsync (default) each side's files are fsynced
before its clock stops (TensorFlow issues none itself, so the benchmark fsyncs its files).
"Cold" reads drop the files from the page cache with posix_fadvise(DONTNEED) first.
Restores fill preallocated, page-aligned, pre-touched arrays on every side but TensorFlow's,
which assigns into its own variables.
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

import gpuckpt  # noqa: E402
from gpuckpt.arrays import aligned_empty  # noqa: E402
from gpuckpt.saver import write_tensors  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import results as results_json  # noqa: E402 - bench/ is not a package

SMALL = 64 << 10


def make_state(total: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    large, small = total * 3 // 4, total // 4
    state = {f"large/{i}/.ATTRIBUTES/VARIABLE_VALUE": rng.standard_normal(large // 16, dtype=np.float32) for i in range(4)}
    for i in range(small // SMALL):
        state[f"small/{i:05d}/.ATTRIBUTES/VARIABLE_VALUE"] = rng.standard_normal(SMALL // 4, dtype=np.float32)
    return state


def files_of(prefix: str) -> list[str]:
    d, base = os.path.split(prefix)
    return [os.path.join(d, f) for f in os.listdir(d) if f.startswith(base + ".")]


def fsync_files(paths) -> None:
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)


def drop_cache(paths) -> None:
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        os.fdatasync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def plain_write(path: str, state, fsync: bool) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    for v in state.values():
        os.write(fd, memoryview(v).cast("B"))
    if fsync:
        os.fsync(fd)
    os.close(fd)


def plain_read(path: str, dests) -> None:
    fd = os.open(path, os.O_RDONLY)
    offset = 0
    for d in dests:
        view = memoryview(d).cast("B")
        while view:
            n = os.preadv(fd, [view], offset)
            view, offset = view[n:], offset + n
    os.close(fd)


def best(fn, repeat: int) -> float:
    return min(fn() for _ in range(repeat))


def interleaved(sides: dict, repeat: int, before: dict | None = None, args_for: dict | None = None) -> dict[str, float]:
    """Best time of each side over ``repeat`` rounds, the sides alternating within each round so
    that a noisy shared disk treats them alike. ``before`` runs untimed first; ``args_for``
    gives (untimed) the argument of each timed call."""
    times: dict[str, list[float]] = {name: [] for name in sides}
    for r in range(repeat):
        order = list(sides) if r % 2 == 0 else list(reversed(sides))
        for name in order:
            if before and before.get(name):
                before[name]()
            if args_for:
                arg = args_for[name]()
                times[name].append(timed(lambda: sides[name](arg)))
            else:
                times[name].append(timed(sides[name]))
    return {name: min(t) for name, t in times.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--no-fsync", action="store_true")
    ap.add_argument("--no-tf", action="store_true", help="skip TensorFlow (also skipped when it is not installed)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dir", default=None, help="where to write (default: a temporary directory)")
    results_json.add_option(ap)
    args = ap.parse_args()
    fsync = not args.no_fsync
    state = make_state(args.size_mib << 20)
    nbytes = sum(v.nbytes for v in state.values())
    work = tempfile.mkdtemp(prefix="gpuckpt-bench-", dir=args.dir)
    print(f"state: {len(state)} float32 tensors, {nbytes / 2**30:.2f} GiB; fsync={'on' if fsync else 'off'}; dir={work}")
    dests = {k: aligned_empty(v.shape, v.dtype) for k, v in state.items()}
    for d in dests.values():
        d.fill(0)  # pre-touch: measure I/O, not page faults
    results: dict[str, float] = {}
    # Each save writes new files, as CheckpointManager does; the previous round's files are
    # deleted outside the clock (overwriting in place measures the filesystem's unlink, not I/O).
    rounds = {"plain": 0, "gpuckpt": 0}

    def fresh(side: str) -> str:
        rounds[side] += 1
        for old in Path(work).glob(f"{side}-{rounds[side] - 1}*"):
            old.unlink()
        return os.path.join(work, f"{side}-{rounds[side]}")

    save_sides = {
        "save plain": lambda path: plain_write(path, state, fsync),
        "save gpuckpt": lambda path: write_tensors(path, state, options=_Opts(fsync)),
    }
    results.update(interleaved(save_sides, args.repeat, args_for={
        "save plain": lambda: fresh("plain"), "save gpuckpt": lambda: fresh("gpuckpt")}))
    plain, ours = os.path.join(work, f"plain-{rounds['plain']}"), os.path.join(work, f"gpuckpt-{rounds['gpuckpt']}")
    reader = gpuckpt.load_checkpoint(ours)
    pairs = [(k, dests[k]) for k in state]
    for mode in ("warm", "cold"):
        cold = mode == "cold"
        results.update(
            interleaved(
                {
                    f"restore plain ({mode})": lambda: plain_read(plain, dests.values()),
                    f"restore gpuckpt ({mode})": lambda: reader.read_tensors(pairs),
                },
                args.repeat,
                before={
                    f"restore plain ({mode})": (lambda: drop_cache([plain])) if cold else None,
                    f"restore gpuckpt ({mode})": (lambda: drop_cache(files_of(ours))) if cold else None,
                },
            )
        )
    assert all(np.array_equal(dests[k], v) for k, v in state.items()), "restored values differ"
    reader.close()
    if not args.no_tf:
        results.update(bench_tf(state, work, fsync, args.repeat))
    shutil.rmtree(work)
    report(results, nbytes)
    results_json.write(args.json, "io", {"size_mib": args.size_mib, "fsync": fsync, "repeat": args.repeat,
                                         "tensors": len(state)}, {"bytes": nbytes, "seconds": results})
    return 0


class _Opts:
    def __init__(self, fsync: bool):
        self.fsync = fsync


def bench_tf(state, work: str, fsync: bool, repeat: int) -> dict[str, float]:
    try:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        import tensorflow as tf
    except ImportError:
        print("TensorFlow not installed: its columns are skipped (pip install 'gpuckpt[bench]')")
        return {}
    names = {k: f"v{i}" for i, k in enumerate(state)}
    variables = {names[k]: tf.Variable(v) for k, v in state.items()}
    ckpt = tf.train.Checkpoint(**variables)
    saves = iter(range(1, 1 << 30))
    prefix = os.path.join(work, "tf-0")

    def save() -> float:
        nonlocal prefix
        for old in files_of(prefix) if os.path.exists(prefix + ".index") else []:
            os.unlink(old)  # as for the other sides: fresh files each round, deletion untimed
        prefix = os.path.join(work, f"tf-{next(saves)}")

        def write() -> None:
            ckpt.write(prefix)
            if fsync:
                fsync_files(files_of(prefix))

        return timed(write)

    out = {"save TensorFlow": best(save, repeat)}
    for mode in ("warm", "cold"):
        def once() -> float:
            if mode == "cold":
                drop_cache(files_of(prefix))
            return timed(lambda: ckpt.read(prefix).assert_consumed())

        out[f"restore TensorFlow ({mode})"] = best(once, repeat)
    return out


def report(results: dict[str, float], nbytes: int) -> None:
    gbps = {k: nbytes / t / 1e9 for k, t in results.items()}
    print(f"\n{'measurement':32s} {'GB/s':>8s}")
    for k, v in gbps.items():
        print(f"{k:32s} {v:8.2f}")
    print("\nratios (gpuckpt / peer):")
    pairs = [("save", "plain"), ("save", "TensorFlow")]
    pairs += [(f"restore", f"plain ({m})") for m in ("warm", "cold")] + [("restore", f"TensorFlow ({m})") for m in ("warm", "cold")]
    for op, peer in pairs:
        mode = peer[peer.find("(") :] if "(" in peer else ""
        ours, theirs = f"{op} gpuckpt {mode}".strip(), f"{op} {peer}"
        if ours in gbps and theirs in gbps:
            print(f"  {op:8s} vs {peer:22s} {gbps[ours] / gbps[theirs]:6.2f}x")


if __name__ == "__main__":
    sys.exit(main())
