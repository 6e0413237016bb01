"""Save/restore throughput of gpuckpt's CPU path beside plain file I/O and TensorFlow, in one run.

Each comparison alternates the sides round by round and keeps each side's best time.

    python bench/bench_io.py [--size-mib 1024] [--no-fsync] [--no-tf] [--dir DIR]
    python bench/bench_io.py --api {gpt2,small5000,mixed} [--scale 8] [--no-fsync] [--no-tf] [--repeat 3]

``--api`` measures what users run: ``Checkpoint.write`` of ``Variable``s and ``Checkpoint.read``
into existing ``Variable``s (every CRC verified), beside plain writes (+fsync) and reads of the
same bytes into aligned buffers, vectored reads plus a CRC32C of each tensor on two threads (the
least any verifying restore does here: ``plain+crc32c``), safetensors' ``save_file``/``load_file``, PyTorch DCP and the
PyTorch adapter (when torch is installed) and TensorFlow's ``tf.train.Checkpoint`` (its own
rounds, after the others; ``--no-tf`` skips it), warm and cold, and prints the fixed cost per
1,000 tensors (gpuckpt's time minus plain I/O's). Repeated restores reuse the last index's
template and decoded object graph, as an evaluation loop does; the first restore in a fresh
process (a resume), which reuses nothing, is timed separately. Workloads:
``gpt2`` (GPT-2 small's 148 parameters with Adam's ``exp_avg``, ``exp_avg_sq`` and scalar
``step`` each: 592 tensors, 1.49 GB at ``--scale 1``; ``--scale N`` divides each tensor's first
dimension, keeping the tensor count), ``small5000`` (5,000 tensors of 1-16 KiB plus 4 large)
and ``mixed`` (12 x 32 MiB plus 1,500 of 1-256 KiB; scaled the same way). It also prints the
peak host RSS a restore adds beyond the restored values (a fresh process whose variables are
allocated and touched first).

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
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gpuckpt
from gpuckpt.arrays import aligned_empty
from gpuckpt.saver import write_tensors
from gpuckpt.storage.posixio import IOV_MAX, advance
from gpuckpt.storage.reader import READ_CACHE_BYTES

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


def plain_read_checked(path: str, dests, crcs, threads: int = 2, batch_bytes: int = READ_CACHE_BYTES) -> None:
    """Plain reads plus a CRC32C of each tensor compared with its expected value: the least any
    verifying restore does, with no bookkeeping at all. The tensors are split by bytes into
    ``threads`` contiguous parts read in parallel (gpuckpt's readers use two threads); each part
    reads neighbouring tensors with one ``preadv`` of up to ``batch_bytes`` and then checksums
    them while they are in the CPU cache, as gpuckpt's reader does."""
    import threading

    import crc32c

    views = [memoryview(d).cast("B") for d in dests]
    offsets = np.cumsum([0] + [v.nbytes for v in views]).tolist()
    fd = os.open(path, os.O_RDONLY)
    bad: list[int] = []
    errors: list[BaseException] = []

    def read(first: int, stop: int) -> None:
        i = first
        while i < stop:
            j, size = i, 0
            while j < stop and j - i < IOV_MAX and size < batch_bytes:
                size += views[j].nbytes
                j += 1
            bufs, done = views[i:j], 0
            while done < size:  # a short read goes on where it stopped
                n = os.preadv(fd, bufs, offsets[i] + done)
                if n == 0:
                    raise EOFError(f"{path} ended at byte {offsets[i] + done} of {offsets[-1]}")
                done += n
                bufs = advance(bufs, n)
            bad.extend(k for k in range(i, j) if crc32c.crc32c(views[k]) != crcs[k])
            i = j

    def part(first: int, stop: int) -> None:
        try:
            read(first, stop)
        except BaseException as exc:  # raised again by the caller, after every thread has stopped
            errors.append(exc)

    cuts = [0] + [int(np.searchsorted(offsets, offsets[-1] * k / threads)) for k in range(1, threads)] + [len(dests)]
    workers = [threading.Thread(target=part, args=(a, b)) for a, b in zip(cuts, cuts[1:])]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    os.close(fd)
    if errors:
        raise errors[0]
    if bad:
        raise AssertionError(f"plain reads: {len(bad)} tensors failed their CRC")


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


def gpt2_shapes() -> list[tuple[int, ...]]:
    """GPT-2 small's parameter shapes (148 tensors)."""
    shapes = [(50257, 768), (1024, 768)]
    for _ in range(12):
        shapes += [(768,), (768,), (768, 2304), (2304,), (768, 768), (768,), (768,), (768,),
                   (768, 3072), (3072,), (3072, 768), (768,)]
    return shapes + [(768,), (768,)]


def api_shapes(workload: str, scale: int) -> dict[str, tuple[int, ...]]:
    """name -> shape of the float32 tensors of an ``--api`` workload (first dimensions divided by ``scale``)."""
    rng = np.random.default_rng(0)

    def scaled(shape: tuple[int, ...]) -> tuple[int, ...]:
        return (max(1, shape[0] // scale),) + shape[1:]

    if workload == "gpt2":
        shapes = [scaled(s) for s in gpt2_shapes()]
        out = {f"{part}/{i:03d}": s for part in ("param", "exp_avg", "exp_avg_sq") for i, s in enumerate(shapes)}
        out.update({f"step/{i:03d}": () for i in range(len(shapes))})
        return out
    if workload == "small5000":
        out = {f"small/{i:05d}": (int(n),) for i, n in enumerate(rng.integers(256, 4096, 5000))}
        out.update({f"large/{i}": ((32 << 20) // 4 // scale,) for i in range(4)})
        return out
    out = {f"large/{i:02d}": ((32 << 20) // 4 // scale,) for i in range(12)}
    out.update({f"small/{i:04d}": (max(1, int(n) // scale),) for i, n in enumerate(rng.integers(256, 65536, 1500))})
    return out


def api_state(workload: str, scale: int) -> dict[str, np.ndarray]:
    """The workload's tensors, filled with random float32 values."""
    rng = np.random.default_rng(1)
    return {name: rng.standard_normal(shape, dtype=np.float32) for name, shape in api_shapes(workload, scale).items()}


def _all_files(path: str) -> list[str]:
    """The files of a saved checkpoint: a directory's files, a prefix's files, or the file itself."""
    if os.path.isdir(path):
        return [os.path.join(path, f) for f in os.listdir(path)]
    return files_of(path) if not os.path.exists(path) else [path]


def _torch_sides(state: dict[str, np.ndarray], fsync: bool, options) -> dict:
    """PyTorch peers when torch is installed: gpuckpt through its PyTorch adapter (an ``nn.Module``
    holding the tensors as parameters) and PyTorch DCP (``torch.distributed.checkpoint``)."""
    try:
        import torch
        import torch.distributed.checkpoint as dcp
    except ImportError:
        return {"save": {}, "restore": {}}

    def module(values: dict[str, np.ndarray]):
        m = torch.nn.Module()
        for name, value in values.items():
            tensor = torch.from_numpy(value).clone()  # in torch's own (64-byte aligned) memory, as a model's is
            m.register_parameter(name.replace("/", "_"), torch.nn.Parameter(tensor, requires_grad=False))
        return m

    source = module(state)
    target = module({k: np.zeros_like(v) for k, v in state.items()})
    saving, loading = gpuckpt.Checkpoint(model=source), gpuckpt.Checkpoint(model=target)
    source_sd, target_sd = source.state_dict(), target.state_dict()

    def dcp_save(path: str) -> None:
        dcp.save(source_sd, checkpoint_id=path)
        if fsync:
            fsync_files(_all_files(path))

    return {"save": {"save gpuckpt (torch adapter)": lambda p: saving.write(p, options=options),
                     "save PyTorch DCP": dcp_save},
            "restore": {"restore gpuckpt (torch adapter)": (lambda p: loading.read(p), "save gpuckpt (torch adapter)"),
                        "restore PyTorch DCP": (lambda p: dcp.load(target_sd, checkpoint_id=p), "save PyTorch DCP")}}


def bench_api(workload: str, scale: int, fsync: bool, repeat: int, work: str, with_tf: bool = True) -> None:
    """The ``--api`` comparison (see the module docstring)."""
    import crc32c
    from safetensors.numpy import load_file, save_file

    state = api_state(workload, scale)
    nbytes = sum(v.nbytes for v in state.values())
    print(f"workload {workload} (scale 1/{scale}): {len(state)} tensors, {nbytes / 1e9:.3f} GB; "
          f"fsync={'on' if fsync else 'off'}")
    source = gpuckpt.Checkpoint(state=gpuckpt.Module())
    for name, value in state.items():
        setattr(source.state, name.replace("/", "_"), gpuckpt.Variable(value))
    target = gpuckpt.Checkpoint(state=gpuckpt.Module())
    for name, value in state.items():
        setattr(target.state, name.replace("/", "_"), gpuckpt.Variable(np.zeros_like(value)))
    dests = [aligned_empty(v.shape, v.dtype) for v in state.values()]
    for d in dests:
        d.fill(0)
    crcs = [crc32c.crc32c(v) for v in state.values()]
    options = gpuckpt.CheckpointOptions(fsync=fsync)
    rounds: dict[str, int] = {}

    def path_of(side: str, number: int) -> str:
        return os.path.join(work, side.replace(" ", "_").replace("(", "").replace(")", "") + f"-{number}")

    def fresh(side: str) -> str:
        """A new path for this side's next save; its previous files are deleted outside the clock."""
        rounds[side] = rounds.get(side, 0) + 1
        for old in Path(work).glob(os.path.basename(path_of(side, rounds[side] - 1)) + "*"):
            shutil.rmtree(old) if old.is_dir() else old.unlink()
        return path_of(side, rounds[side])

    def st_save(path: str) -> None:
        save_file(state, path)
        if fsync:
            fsync_files([path])

    saves = {"save plain": lambda p: plain_write(p, state, fsync),
             "save gpuckpt": lambda p: source.write(p, options=options),
             "save safetensors": st_save}
    torch_sides = _torch_sides(state, fsync, options)
    saves.update(torch_sides["save"])
    results = interleaved(saves, repeat, args_for={name: (lambda name=name: fresh(name)) for name in saves})
    last = {name: path_of(name, rounds[name]) for name in saves}
    plain, ours, st = last["save plain"], last["save gpuckpt"], last["save safetensors"]
    for mode in ("warm", "cold"):
        cold = mode == "cold"
        sides = {f"restore plain ({mode})": lambda: plain_read(plain, dests),
                 f"restore plain+crc32c ({mode})": lambda: plain_read_checked(plain, dests, crcs),
                 f"restore gpuckpt ({mode})": lambda: target.read(ours),
                 f"restore safetensors ({mode})": lambda: load_file(st)}
        files = {f"restore plain ({mode})": [plain], f"restore plain+crc32c ({mode})": [plain],
                 f"restore gpuckpt ({mode})": files_of(ours),
                 f"restore safetensors ({mode})": [st]}
        for name, (load, saved_as) in torch_sides["restore"].items():
            where = last[saved_as]
            sides[f"{name} ({mode})"] = lambda load=load, where=where: load(where)
            files[f"{name} ({mode})"] = _all_files(where)
        results.update(interleaved(sides, repeat, before={
            name: (lambda paths=paths: drop_cache(paths)) if cold else None for name, paths in files.items()}))
    for name, value in state.items():
        assert np.array_equal(getattr(target.state, name.replace("/", "_")).numpy(), value), name
    first, rss = _fresh_process_restores(ours, workload, scale, repeat)  # before TensorFlow's threads exist
    if with_tf:  # after the others (its own rounds): importing TensorFlow changes nothing they measure
        results.update(bench_tf(state, work, fsync, repeat))
    report(results, nbytes)
    per_k = 1000 / len(state) * 1e3
    print(f"fixed cost per 1,000 tensors beyond plain I/O: save {(results['save gpuckpt'] - results['save plain']) * per_k:.1f} ms, "
          f"restore warm {(results['restore gpuckpt (warm)'] - results['restore plain (warm)']) * per_k:.1f} ms, "
          f"cold {(results['restore gpuckpt (cold)'] - results['restore plain (cold)']) * per_k:.1f} ms")
    print(f"restore fixed cost per 1,000 tensors beyond plain reads + CRC32C on two threads: warm "
          f"{(results['restore gpuckpt (warm)'] - results['restore plain+crc32c (warm)']) * per_k:.1f} ms, cold "
          f"{(results['restore gpuckpt (cold)'] - results['restore plain+crc32c (cold)']) * per_k:.1f} ms")
    print(f"host RSS of a restore beyond the restored values (peak - before, fresh process): "
          f"{rss / 2**20:.1f} MiB for {nbytes / 2**20:.0f} MiB of values")
    plain_warm = results["restore plain (warm)"]
    print(f"first restore in a fresh process (page cache warm; nothing reused from an earlier read): "
          f"{first * 1e3:.1f} ms, {nbytes / first / 1e9:.2f} GB/s, {plain_warm / first:.2f}x plain "
          f"(warm), fixed cost {(first - plain_warm) * per_k:.1f} ms per 1,000 tensors")
    for kind in ("save", "restore"):
        for mode in (("",) if kind == "save" else (" (warm)", " (cold)")):
            ours_t = results[f"{kind} gpuckpt{mode}"]
            peers = [(name.split(" ", 1)[1].replace(mode, ""), t) for name, t in results.items()
                     if name.startswith(kind + " ") and name.endswith(mode) and name != f"{kind} gpuckpt{mode}"]
            print(f"{kind}{mode}: gpuckpt " + ", ".join(f"{t / ours_t:.2f}x {peer.strip()}" for peer, t in peers))


def _fresh_process_restores(path: str, workload: str, scale: int, repeat: int) -> tuple[float, int]:
    """The fastest first restore of ``path`` in ``repeat`` fresh processes (seconds), and their largest
    RSS beyond the restored values (bytes); see :func:`rss_child`."""
    firsts, rss = [], 0
    for _ in range(repeat):
        child = subprocess.run([sys.executable, __file__, "--rss-child", path, workload, str(scale)],
                               capture_output=True, text=True, check=True)
        peak, seconds = child.stdout.split()[-2:]
        rss, firsts = max(rss, int(peak)), firsts + [float(seconds)]
    return min(firsts), rss


def rss_child(path: str, workload: str, scale: int) -> None:
    """Print the peak RSS a ``Checkpoint.read`` adds beyond its variables (already allocated and touched),
    and the seconds that first read took (a resume: no index template or decoded graph to reuse).

    The peak is VmHWM (this process's own; ``ru_maxrss`` would carry the parent's peak across exec)."""
    shapes = api_shapes(workload, scale)
    target = gpuckpt.Checkpoint(state=gpuckpt.Module())
    for name, shape in shapes.items():
        setattr(target.state, name.replace("/", "_"), gpuckpt.Variable(np.zeros(shape, np.float32)))
    with open("/proc/self/statm") as f:
        before = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    start = time.perf_counter()
    target.read(path)
    seconds = time.perf_counter() - start
    with open("/proc/self/status") as f:
        peak = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
    print(max(0, peak - before), f"{seconds:.6f}")


def main() -> int:
    if len(sys.argv) == 5 and sys.argv[1] == "--rss-child":
        rss_child(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--api", choices=("gpt2", "small5000", "mixed"), default=None,
                    help="measure Checkpoint.write/read with Variables on this workload (see above)")
    ap.add_argument("--scale", type=int, default=1, help="--api: divide each tensor's first dimension by this")
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--no-fsync", action="store_true")
    ap.add_argument("--no-tf", action="store_true", help="skip TensorFlow (also skipped when it is not installed)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dir", default=None, help="where to write (default: a temporary directory)")
    results_json.add_option(ap)
    args = ap.parse_args()
    fsync = not args.no_fsync
    if args.api:
        work = tempfile.mkdtemp(prefix="gpuckpt-bench-", dir=args.dir)
        try:
            bench_api(args.api, args.scale, fsync, args.repeat, work, with_tf=not args.no_tf)
        finally:
            shutil.rmtree(work)
        return 0
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
    peers = ("plain", "plain+crc32c", "TensorFlow")
    pairs += [("restore", f"{peer} ({m})") for peer in peers for m in ("warm", "cold")]
    for op, peer in pairs:
        mode = peer[peer.find("(") :] if "(" in peer else ""
        ours, theirs = f"{op} gpuckpt {mode}".strip(), f"{op} {peer}"
        if ours in gbps and theirs in gbps:
            print(f"  {op:8s} vs {peer:22s} {gbps[ours] / gbps[theirs]:6.2f}x")


if __name__ == "__main__":
    sys.exit(main())
