"""Device-resident save/restore throughput beside the GPU's own limits, measured in the same run.

    python bench/bench_gpu.py [--size-gib 4] [--staging-mib 256]

On a GPU (Numba sees a CUDA device; do not set NUMBA_ENABLE_CUDASIM) it reports:
  * copy-engine D2H and H2D bandwidth of a plain pinned-memory copy, and D2D copy bandwidth;
  * the CRC kernel's GB/s on device memory;
  * gpuckpt staging GB/s: the GPU engine packing, checksumming and staging every tensor into
    pinned memory, with the file writes discarded (what a save costs the GPU and the bus);
  * gpuckpt restore GB/s: file bytes (page cache, or /dev/shm) through pinned staging to the
    device, CRCs verified on the device.
The state is a few large tensors (3/4 of the bytes) and thousands of 64 KiB ones (1/4).
Without a GPU it runs the CPU path instead: CRC32C and gpuckpt's host staging beside memcpy.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpuckpt.format import crc  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import results as results_json  # noqa: E402 - bench/ is not a package

SMALL = 64 << 10


class NullWriter:
    """Discards writes: isolates staging from the disk."""

    def write(self, shard: int, offset: int, data) -> None:
        pass


def gbps(nbytes: int, seconds: float) -> float:
    return nbytes / seconds / 1e9


def best_time(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def shapes(total: int) -> list[int]:
    large = total * 3 // 4
    return [large // 4] * 4 + [SMALL] * ((total - large) // SMALL)


def gpu_available() -> bool:
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        return False
    try:
        from numba import cuda

        return cuda.is_available()
    except Exception:
        return False


def run_gpu(total: int, staging: int) -> list[tuple[str, float]]:
    from numba import cuda

    from gpuckpt.engine.gpu import GpuEngine
    from gpuckpt.kernels import crc_segments
    from gpuckpt.plan import TensorSpec, build_save_plan
    from gpuckpt.saver import write_tensors
    from gpuckpt.arrays import as_tensor
    import gpuckpt

    sizes = shapes(total)
    rng = np.random.default_rng(0)
    host = [rng.integers(0, 256, n, dtype=np.uint8) for n in sizes]
    dev = [cuda.to_device(h) for h in host]
    nbytes = sum(sizes)
    big = cuda.device_array(1 << 30, np.uint8)
    pinned = cuda.pinned_array(1 << 30, np.uint8)
    other = cuda.device_array(1 << 30, np.uint8)
    rows = [
        ("D2H copy engine, pinned (limit)", gbps(1 << 30, best_time(lambda: (big.copy_to_host(pinned), cuda.synchronize())))),
        ("H2D copy engine, pinned (limit)", gbps(1 << 30, best_time(lambda: (big.copy_to_device(pinned), cuda.synchronize())))),
        ("D2D copy (limit)", gbps(1 << 30, best_time(lambda: (other.copy_to_device(big), cuda.synchronize())))),
        ("CRC kernel on device memory", gbps(1 << 30, best_time(lambda: crc_segments(big, [0], [1 << 30])))),
    ]
    engine = GpuEngine(staging)
    keys = [f"t{i:05d}" for i in range(len(dev))]
    tensors = [as_tensor(d, k) for d, k in zip(dev, keys)]
    plan = build_save_plan([TensorSpec(k, t.dtype, t.shape, t.nbytes) for k, t in zip(keys, tensors)])
    rows.append(("gpuckpt staging (pack+CRC+D2H)", gbps(nbytes, best_time(lambda: engine.write(plan, tensors, NullWriter())))))
    work = tempfile.mkdtemp(dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    write_tensors(os.path.join(work, "ck"), dict(zip(keys, dev)), options=gpuckpt.CheckpointOptions(fsync=False))
    restore = ring_restore(os.path.join(work, "ck"), dict(zip(keys, dev)), staging)
    rows.append(("gpuckpt restore ring (H2D+CRC verify)", gbps(nbytes, best_time(restore))))
    engine.close()
    return rows


def ring_restore(prefix: str, dests: dict, ring_bytes: int):
    """A call that restores every key of ``prefix`` into the device arrays ``dests`` (in place) through
    the GPU restore ring, as ``Checkpoint.read`` does; fails loudly on any unverified byte."""
    from gpuckpt.engine.gpu_restore import RestoreRing
    from gpuckpt.restore_plan import Request, build_restore_plan
    from gpuckpt.storage.reader import FileSystemReader

    storage = FileSystemReader(prefix)
    requests = [Request(k, k, storage.index.entries[k].dtype, tuple(d.shape)) for k, d in dests.items()]
    plan = build_restore_plan(storage.index, requests, storage.shard_size, prefix=prefix)
    flat = [dests[r.key].reshape(dests[r.key].size).view(np.uint8) for r in requests]
    ring = RestoreRing(ring_bytes)

    def restore() -> None:
        outcome = ring.read(storage, plan.reads, flat)
        if outcome.failed or outcome.untouched:
            raise RuntimeError(f"restore ring: {len(outcome.failed)} failed, {len(outcome.untouched)} untouched")

    return restore


def run_cpu(total: int, staging: int) -> list[tuple[str, float]]:
    from gpuckpt.arrays import aligned_empty, as_tensor
    from gpuckpt.engine.cpu import CpuEngine
    from gpuckpt.plan import TensorSpec, build_save_plan

    sizes = shapes(total)
    rng = np.random.default_rng(0)
    host = [rng.integers(0, 256, n, dtype=np.uint8) for n in sizes]
    nbytes = sum(sizes)
    src = np.concatenate(host)
    dst = aligned_empty(src.shape, np.uint8)
    dst.fill(0)
    keys = [f"t{i:05d}" for i in range(len(host))]
    tensors = [as_tensor(h, k) for h, k in zip(host, keys)]
    plan = build_save_plan([TensorSpec(k, t.dtype, t.shape, t.nbytes) for k, t in zip(keys, tensors)])
    return [
        ("memcpy (limit)", gbps(nbytes, best_time(lambda: np.copyto(dst, src)))),
        ("CRC32C, one thread", gbps(nbytes, best_time(lambda: crc.crc32c(src)))),
        ("gpuckpt CPU engine, writes discarded", gbps(nbytes, best_time(lambda: CpuEngine().write(plan, tensors, NullWriter())))),
    ]


def run_host_overhead(count: int) -> list[tuple[str, float]]:
    """Host-side cost per save of describing ``count`` device tensors and building (or reusing) the
    pointer tables, in microseconds per tensor (runs in the simulator too: no launches involved)."""
    from numba import cuda

    from gpuckpt.arrays import as_tensor
    from gpuckpt.engine import gpu
    from gpuckpt.plan import TensorSpec, build_save_plan

    dev = [cuda.to_device(np.zeros(256, np.float32)) for _ in range(count)]
    keys = [f"t{i:05d}" for i in range(count)]
    describe = best_time(lambda: [as_tensor(d, k) for d, k in zip(dev, keys)])
    tensors = [as_tensor(d, k) for d, k in zip(dev, keys)]
    plan = build_save_plan([TensorSpec(k, t.dtype, t.shape, t.nbytes) for k, t in zip(keys, tensors)])
    build = best_time(lambda: gpu._slot_plans(plan.items, tensors, 128 << 20))
    cached = best_time(lambda: gpu._layout_key(plan.items, tensors, 128 << 20))
    return [(f"describe (as_tensor), us/tensor, {count} tensors", describe / count * 1e6),
            ("pointer tables, first save, us/tensor", build / count * 1e6),
            ("pointer tables, cached (key check), us/tensor", cached / count * 1e6)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-gib", type=float, default=None, help="state size (default 4 on a GPU, 1 on the CPU)")
    ap.add_argument("--staging-mib", type=int, default=256)
    results_json.add_option(ap)
    ap.add_argument("--host-overhead", type=int, metavar="N", default=0,
                    help="only measure the host-side cost per save for N device tensors (works in the simulator)")
    args = ap.parse_args()
    if args.host_overhead:
        for name, value in run_host_overhead(args.host_overhead):
            print(f"  {name:48s} {value:8.2f}")
        return 0
    on_gpu = gpu_available()
    total = int((args.size_gib or (4 if on_gpu else 1)) * (1 << 30))
    print(f"{'GPU' if on_gpu else 'CPU (no GPU found)'} path, {total / 2**30:.2f} GiB state, staging {args.staging_mib} MiB")
    rows = (run_gpu if on_gpu else run_cpu)(total, args.staging_mib << 20)
    for name, value in rows:
        print(f"  {name:40s} {value:8.2f} GB/s")
    results_json.write(args.json, "gpu", {"bytes": total, "staging_mib": args.staging_mib, "on_gpu": on_gpu},
                       {"rows": [{"measurement": n, "gb_per_s": v} for n, v in rows]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
