"""``gpuckpt inspect`` and ``verify`` on a 5,000-tensor checkpoint, beside their floors.

    .venv/bin/python bench/bench_cli.py [--params 1667] [--size-mib 1024] [--repeat 3] [--json PATH]

Writes a GPT-2-like checkpoint (parameters plus Adam's two slots per parameter: ~5,000 tensors,
a few large embeddings, ~1 GiB), then times, each as a fresh process like a user's shell:
``python -c 'import gpuckpt'`` (start-up alone), ``gpuckpt inspect`` (piped), ``inspect --json``,
``inspect --graph``, and, in-process, opening the index alone and ``inspect``; then ``gpuckpt
verify`` (as a process and in-process) beside plain reads of the same data files into one
buffer, warm and cold (page cache dropped with
``posix_fadvise(DONTNEED)``). Best of ``--repeat``; sides interleaved.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

import gpuckpt
from gpuckpt.cli import inspect, verify
from gpuckpt.reader import CheckpointReader
from gpuckpt.storage.filesystem import shard_files

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import results as results_json  # noqa: E402 - bench/ is not a package


def make_checkpoint(directory: str, params: int, total: int) -> str:
    """``params`` variables (two embeddings hold half the bytes) and an optimizer module with Adam's
    ``exp_avg`` and ``exp_avg_sq`` for each, saved by a Checkpoint so the object graph is real."""
    per = total // 3
    big = per // 4  # two embeddings of a quarter each
    small = max((per - 2 * big) // max(params - 2, 1) // 4, 1)
    rng = np.random.default_rng(0)
    model, slots_m, slots_v = gpuckpt.Module(), gpuckpt.Module(), gpuckpt.Module()
    for i in range(params):
        n = big // 4 if i < 2 else small
        value = rng.standard_normal(n, dtype=np.float32)
        name = f"h{i // 12}_p{i % 12}"
        setattr(model, name, gpuckpt.Variable(value))
        setattr(slots_m, name, gpuckpt.Variable(value * 0.1))
        setattr(slots_v, name, gpuckpt.Variable(value * value))
    optimizer = gpuckpt.Module()
    optimizer.exp_avg, optimizer.exp_avg_sq = slots_m, slots_v
    prefix = os.path.join(directory, "ckpt")
    return gpuckpt.Checkpoint(model=model, optimizer=optimizer).write(prefix)


def process_time(argv: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(argv, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def in_process(fn) -> None:
    """Run ``fn`` with its output going nowhere (what a pipe to a fast reader costs, roughly)."""
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        fn()


def drop_cache(paths: list[str]) -> None:
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def plain_read(paths: list[str], buf: np.ndarray) -> None:
    """Every data file's bytes into one buffer, nothing checked: the floor verify is measured against."""
    view = memoryview(buf)
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            offset = 0
            while True:
                n = os.preadv(fd, [view[: 64 << 20]], offset)
                if n == 0:
                    break
                offset += n
        finally:
            os.close(fd)


def best(fns: dict, repeat: int, before=None) -> dict[str, float]:
    out = {k: float("inf") for k in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            if before is not None:
                before()
            t = time.perf_counter()
            fn()
            out[name] = min(out[name], time.perf_counter() - t)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", type=int, default=1667, help="variables (x3 tensors with the two Adam slots)")
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dir", default=None)
    results_json.add_option(ap)
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="gpuckpt-bench-cli-", dir=args.dir)
    try:
        prefix = make_checkpoint(work, args.params, args.size_mib << 20)
        data = shard_files(prefix)
        with CheckpointReader(prefix) as r:
            tensors = len(r.keys())
            nbytes = sum(e.size for e in r.index.entries.values())
        print(f"checkpoint: {tensors} tensors, {nbytes / 2**30:.2f} GiB in {len(data)} data file(s); dir={work}")
        cli = [sys.executable, "-m", "gpuckpt.cli"]
        open_index = lambda: CheckpointReader(prefix).close()  # noqa: E731 - beside the other lambdas
        times = best({
            "python -c 'import gpuckpt' (start-up)": lambda: process_time([sys.executable, "-c", "import gpuckpt"]),
            "open and parse the index (in-process)": open_index,
            "inspect (in-process)": lambda: in_process(lambda: inspect.run(prefix)),
            "gpuckpt inspect": lambda: process_time([*cli, "inspect", prefix]),
            "gpuckpt inspect --json": lambda: process_time([*cli, "inspect", "--json", prefix]),
            "gpuckpt inspect --graph": lambda: process_time([*cli, "inspect", "--graph", prefix]),
        }, args.repeat)
        buf = np.empty(64 << 20, np.uint8)
        buf.fill(0)
        for mode in ("warm", "cold"):
            before = (lambda: drop_cache([prefix + ".index", *data])) if mode == "cold" else None
            times.update(best({
                f"plain read of the data files ({mode})": lambda: plain_read(data, buf),
                f"gpuckpt verify ({mode})": lambda: process_time([*cli, "verify", "--no-progress", prefix]),
                f"verify (in-process, {mode})": lambda: verify.verify_one(prefix),
            }, args.repeat, before))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\n{'measurement':44s} {'seconds':>8s} {'GB/s':>7s}")
    rows = []
    for name, t in times.items():
        rate = nbytes / t / 1e9 if "read of" in name or "verify" in name else None
        rows.append({"measurement": name, "seconds": t, "gb_per_s": rate})
        print(f"{name:44s} {t:8.3f} {('' if rate is None else f'{rate:7.2f}'):>7s}")
    results_json.write(args.json, "cli", {"params": args.params, "size_mib": args.size_mib, "repeat": args.repeat,
                                          "tensors": tensors, "bytes": nbytes}, {"rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
