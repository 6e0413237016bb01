"""Save/restore throughput of gpuckpt's CPU path beside plain file I/O and TensorFlow, in one run.

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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--no-fsync", action="store_true")
    ap.add_argument("--no-tf", action="store_true", help="skip TensorFlow (also skipped when it is not installed)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dir", default=None, help="where to write (default: a temporary directory)")
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
    plain, ours = os.path.join(work, "plain.bin"), os.path.join(work, "ck")

    results["save plain"] = best(lambda: timed(lambda: plain_write(plain, state, fsync)), args.repeat)
    results["save gpuckpt"] = best(
        lambda: timed(lambda: write_tensors(ours, state, options=_Opts(fsync))), args.repeat
    )
    reader = gpuckpt.load_checkpoint(ours)
    pairs = [(k, dests[k]) for k in state]
    for mode in ("warm", "cold"):
        def prep(paths):
            return (lambda: drop_cache(paths)) if mode == "cold" else (lambda: None)

        results[f"restore plain ({mode})"] = best(
            lambda: (prep([plain])(), timed(lambda: plain_read(plain, dests.values())))[1], args.repeat
        )
        results[f"restore gpuckpt ({mode})"] = best(
            lambda: (prep(files_of(ours))(), timed(lambda: reader.read_tensors(pairs)))[1], args.repeat
        )
    assert all(np.array_equal(dests[k], v) for k, v in state.items()), "restored values differ"
    reader.close()
    if not args.no_tf:
        results.update(bench_tf(state, work, fsync, args.repeat))
    shutil.rmtree(work)
    report(results, nbytes)
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
    prefix = os.path.join(work, "tf")

    def save() -> None:
        ckpt.write(prefix)
        if fsync:
            fsync_files(files_of(prefix))

    out = {"save TensorFlow": best(lambda: timed(save), repeat)}
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
