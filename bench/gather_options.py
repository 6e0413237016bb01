"""Per-call cost of the three ways to gather many device tensors into one staging slot, measured side
by side in one run (issue 12 item 2): the numba-cuda pointer-table kernel (``gpuckpt.kernels.gather``),
a CuPy ``RawKernel`` reading the same table, and ``cudaMemcpyBatchAsync`` (CUDA 12.8+) through
``cuda-bindings``; beside them, what the save path runs: the same table through the fused gather + CRC
kernel (``gpuckpt.kernels.gather_crc``, one launch copying and checksumming every tensor; its CRCs are
checked against the ``crc32c`` package).

    python bench/gather_options.py [--small 5000] [--small-bytes 16384] [--large 4] [--large-mib 64]

Two states: many small tensors and a few large ones. For each option and state: the best time of one
call (enqueue + stream synchronize), its host-side enqueue time, and GB/s; the result is checked
against the sources. An option whose package or driver entry point is absent is skipped with the
reason. Under NUMBA_ENABLE_CUDASIM=1 only the numba kernel runs, at a tiny size (plumbing only).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SIM = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"

RAW_GATHER = r"""
extern "C" __global__ void gather_rows(const long long* table, long long columns, long long rows,
                                       unsigned char* dst) {
    for (long long r = blockIdx.x; r < rows; r += gridDim.x) {
        const long long* row = table + r * columns;
        const unsigned char* src = (const unsigned char*)(row[0] + row[3]);
        unsigned char* d = dst + row[1];
        long long n = row[2];
        long long head = 0;
        if ((((unsigned long long)src | (unsigned long long)d) & 7ULL) == 0) {
            head = n / 8 * 8;
            for (long long w = threadIdx.x; w < n / 8; w += blockDim.x)
                ((unsigned long long*)d)[w] = ((const unsigned long long*)src)[w];
        }
        for (long long i = head + threadIdx.x; i < n; i += blockDim.x) d[i] = src[i];
    }
}
"""


def _timed(call, sync, repeat: int) -> tuple[float, float]:
    """(best seconds of call + sync, best seconds of the call alone: its host enqueue time)."""
    total, enqueue = float("inf"), float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        queued = time.perf_counter()
        sync()
        end = time.perf_counter()
        total, enqueue = min(total, end - start), min(enqueue, queued - start)
    return total, enqueue


def _state(sizes: list[int]):
    from numba import cuda

    rng = np.random.default_rng(7)
    host = [rng.integers(0, 256, n, dtype=np.uint8) for n in sizes]
    dev = [cuda.to_device(h) for h in host]
    offsets = np.cumsum([0] + [(n + 255) // 256 * 256 for n in sizes])  # 256-aligned places in the slot
    return host, dev, offsets


def _address(arr) -> int:
    from gpuckpt.kernels import _launch

    return int(_launch.address(arr))


def _check(slot_host: np.ndarray, host, offsets) -> bool:
    return all(np.array_equal(slot_host[o : o + h.size], h) for h, o in zip(host, offsets))


def numba_kernel(host, dev, offsets, repeat: int) -> dict:
    from numba import cuda

    from gpuckpt.kernels import gather

    entries = [(_address(d), int(o), 0, h.size, 1, (h.size,), (1,)) for h, d, o in zip(host, dev, offsets)]
    table = gather.gather_table(entries)
    stream = cuda.stream()
    table_dev = cuda.to_device(table, stream=stream)
    slot = cuda.device_array(int(offsets[-1]), np.uint8)
    seconds, enqueue = _timed(lambda: gather.launch_gather(table_dev, table.shape[0], slot, stream),
                              stream.synchronize, repeat)
    return {"seconds": seconds, "enqueue_s": enqueue, "launches": 1, "rows": int(table.shape[0]),
            "exact": _check(slot.copy_to_host(), host, offsets)}


def numba_fused_gather_crc(host, dev, offsets, repeat: int) -> dict:
    import crc32c
    from numba import cuda

    from gpuckpt.kernels import gather, gather_crc

    entries = [(_address(d), int(o), 0, h.size, 1, (h.size,), (1,)) for h, d, o in zip(host, dev, offsets)]
    table = gather.gather_table(entries)
    rows = int(table.shape[0])
    stream = cuda.stream()
    table_dev = cuda.to_device(table, stream=stream)
    slot = cuda.device_array(int(offsets[-1]), np.uint8)
    values = cuda.device_array(max(rows, 1), np.uint32)
    seconds, enqueue = _timed(lambda: gather_crc.launch_gather_crc(table_dev, rows, slot, values, stream),
                              stream.synchronize, repeat)
    crcs = gather_crc.piece_crcs(values.copy_to_host()[:rows], gather_crc.piece_starts(table)).tolist()
    exact = _check(slot.copy_to_host(), host, offsets) and crcs == [crc32c.crc32c(h) for h in host if h.size]
    return {"seconds": seconds, "enqueue_s": enqueue, "launches": 1, "rows": rows, "exact": exact}


def cupy_raw_kernel(host, dev, offsets, repeat: int) -> dict:
    if SIM:
        return {"skipped": "simulator: CuPy needs a real device"}
    try:
        import cupy
    except ImportError as exc:
        return {"skipped": f"cupy not installed ({exc})"}
    from gpuckpt.kernels import gather

    entries = [(_address(d), int(o), 0, h.size, 1, (h.size,), (1,)) for h, d, o in zip(host, dev, offsets)]
    table = cupy.asarray(gather.gather_table(entries))
    kernel = cupy.RawKernel(RAW_GATHER, "gather_rows")
    slot = cupy.empty(int(offsets[-1]), cupy.uint8)
    stream = cupy.cuda.Stream(non_blocking=True)
    rows = table.shape[0]
    blocks = min(rows, 8192)

    def call() -> None:
        with stream:
            kernel((blocks,), (256,), (table, np.int64(table.shape[1]), np.int64(rows), slot))

    seconds, enqueue = _timed(call, stream.synchronize, repeat)
    return {"seconds": seconds, "enqueue_s": enqueue, "launches": 1, "rows": int(rows),
            "exact": _check(cupy.asnumpy(slot), host, offsets)}


def memcpy_batch(host, dev, offsets, repeat: int) -> dict:
    if SIM:
        return {"skipped": "simulator: cudaMemcpyBatchAsync needs a real device"}
    try:
        from cuda.bindings import runtime as rt
    except ImportError as exc:
        return {"skipped": f"cuda-bindings not installed ({exc})"}
    if not hasattr(rt, "cudaMemcpyBatchAsync"):
        return {"skipped": "this cuda-bindings has no cudaMemcpyBatchAsync (CUDA 12.8+)"}
    from numba import cuda

    slot = cuda.device_array(int(offsets[-1]), np.uint8)
    base = _address(slot)
    dsts = [base + int(o) for o in offsets[:-1]]
    srcs = [_address(d) for d in dev]
    sizes = [h.size for h in host]
    attrs = rt.cudaMemcpyAttributes()
    attrs.srcAccessOrder = rt.cudaMemcpySrcAccessOrder.cudaMemcpySrcAccessOrderStream
    for hint in (attrs.srcLocHint, attrs.dstLocHint):
        hint.type = rt.cudaMemLocationType.cudaMemLocationTypeDevice
        hint.id = 0
    stream = cuda.stream()
    handle = int(getattr(stream.handle, "value", stream.handle) or 0)

    def call() -> None:
        err = rt.cudaMemcpyBatchAsync(dsts, srcs, sizes, len(sizes), [attrs], [0], 1, handle)
        code = err[0] if isinstance(err, tuple) else err
        if int(code) != 0:
            raise RuntimeError(f"cudaMemcpyBatchAsync returned {code!r}")

    seconds, enqueue = _timed(call, stream.synchronize, repeat)
    return {"seconds": seconds, "enqueue_s": enqueue, "launches": 1, "copies": len(sizes),
            "exact": _check(slot.copy_to_host(), host, offsets)}


OPTIONS = {"numba_pointer_table_kernel": numba_kernel, "cupy_raw_kernel": cupy_raw_kernel,
           "cuda_memcpy_batch_async": memcpy_batch, "numba_fused_gather_crc": numba_fused_gather_crc}


def compare(states: dict[str, list[int]], repeat: int = 5) -> dict:
    """{state: {option: figures or {"skipped": reason} or {"failed": error}}}; figures per call."""
    out: dict = {}
    for name, sizes in states.items():
        host, dev, offsets = _state(sizes)
        nbytes = sum(sizes)
        row: dict = {"tensors": len(sizes), "bytes": nbytes}
        for option, fn in OPTIONS.items():
            try:
                found = fn(host, dev, offsets, repeat)
            except Exception as exc:  # an option that fails is reported, the others still run
                found = {"failed": f"{type(exc).__name__}: {exc}"}
            if "seconds" in found:
                seconds = found.pop("seconds")
                found = {"per_call_ms": round(seconds * 1e3, 4), "enqueue_us": round(found.pop("enqueue_s") * 1e6, 2),
                         "us_per_tensor": round(seconds * 1e6 / len(sizes), 4),
                         "gb_per_s": round(nbytes / seconds / 1e9, 3), **found}
                if SIM:
                    found["simulated"] = True
            row[option] = found
        out[name] = row
    return out


def default_states(small: int, small_bytes: int, large: int, large_bytes: int) -> dict[str, list[int]]:
    if SIM:  # the simulator runs kernels thread by thread in Python: plumbing only
        small, small_bytes, large, large_bytes = min(small, 40), min(small_bytes, 64), min(large, 2), 4096
    return {f"{small}_small": [small_bytes] * small, f"{large}_large": [large_bytes] * large}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", type=int, default=5000)
    ap.add_argument("--small-bytes", type=int, default=16 << 10)
    ap.add_argument("--large", type=int, default=4)
    ap.add_argument("--large-mib", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    states = default_states(args.small, args.small_bytes, args.large, args.large_mib << 20)
    print(json.dumps(compare(states, 1 if SIM else args.repeat), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
