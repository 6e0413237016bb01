"""The steps of bench/gpu_check: each runs under its own time cap, records ok/failed/skipped and
its figures, and the run ends with one OUT/summary.json. Under NUMBA_ENABLE_CUDASIM=1 sizes are
tiny and every figure is marked "simulated" (plumbing only, not a measurement)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SIM = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
MIB = 1 << 20


def timed(fn, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def gbps(nbytes: int, seconds: float) -> float:
    return round(nbytes / seconds / 1e9, 3)


def step_env(out: Path) -> dict:
    from numba import cuda

    info = {"simulated": SIM, "python": sys.version.split()[0]}
    if not SIM:
        dev = cuda.get_current_device()
        info |= {"device": dev.name.decode() if isinstance(dev.name, bytes) else str(dev.name),
                 "cc": list(dev.compute_capability), "driver": list(cuda.cudadrv.driver.driver.get_version())}
    return info


def step_pytest_gpu(out: Path) -> dict:
    env = dict(os.environ)
    if not SIM:
        env["NUMBA_ENABLE_CUDASIM"] = "0"
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "tests/kernels", "tests/engine", "-p", "no:cacheprovider"]
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=110)
    (out / "pytest.log").write_text(result.stdout + result.stderr)
    tail = (result.stdout.strip().splitlines() or [""])[-1]
    return {"returncode": result.returncode, "result": tail}


def step_kernels(out: Path) -> dict:
    """CRC kernel vs the CPU crc32c: 1 B .. large segments at odd offsets."""
    import crc32c
    from numba import cuda

    from gpuckpt.kernels import crc_segments

    total = (64 << 10) if SIM else (4 << 30) if os.environ.get("GPU_CHECK_FULL") else (1 << 30)
    rng = np.random.default_rng(1)
    host = rng.integers(0, 256, total, dtype=np.uint8)
    sizes = [s for s in (1, 3, 7, 8, 9, 4095, 65537, total // 3, total // 2 - 12345) if s < total]
    offsets = [(i * 7919 + 1) % (total - s) if total > s else 0 for i, s in enumerate(sizes)]
    dev = cuda.to_device(host)
    got = crc_segments(dev, offsets, sizes).tolist()
    want = [crc32c.crc32c(host[o : o + s]) for o, s in zip(offsets, sizes)]
    mismatches = sum(g != w for g, w in zip(got, want))
    seconds = timed(lambda: crc_segments(dev, [0], [total]), 1 if SIM else 5)
    return {"bytes": total, "segments": len(sizes), "mismatches": mismatches, "crc_kernel_gbps": gbps(total, seconds)}


def step_fused(out: Path) -> dict:
    """The save's fused gather + CRC kernel (one launch per staging slot) vs the CPU crc32c and the source
    bytes: pieces of 1 B to a third of the state at odd slot offsets, plus a transposed (strided) matrix;
    its GB/s beside a plain gather of the same table."""
    import crc32c
    from numba import cuda

    from gpuckpt.arrays import device_view
    from gpuckpt.kernels import gather, gather_crc

    total = (64 << 10) if SIM else (1 << 30)
    rng = np.random.default_rng(3)
    sizes = [s for s in (1, 3, 7, 8, 9, 4095, 65537, total // 3, total // 2 - 12345) if s < total]
    hosts = [rng.integers(0, 256, s, dtype=np.uint8) for s in sizes]
    side = 16 if SIM else 2048
    matrix = rng.standard_normal((side, side + 3)).astype(np.float32)
    devs = [cuda.to_device(h) for h in hosts] + [cuda.to_device(matrix).T]
    wants = [h.tobytes() for h in hosts] + [np.ascontiguousarray(matrix.T).tobytes()]
    entries, offset = [], 0
    for i, d in enumerate(devs):
        view = device_view(d)
        offset += i % 5  # odd gaps: most pieces off the word grid
        entries.append((view.address, offset, 0, view.nbytes, view.itemsize, *view.runs()))
        offset += view.nbytes
    table = gather.gather_table(entries)
    rows = int(table.shape[0])
    stream = cuda.stream()
    table_dev = cuda.to_device(table, stream=stream)
    slot = cuda.device_array(offset, np.uint8)
    values = cuda.device_array(rows, np.uint32)

    def fused() -> None:
        gather_crc.launch_gather_crc(table_dev, rows, slot, values, stream)
        stream.synchronize()

    def plain() -> None:
        gather.launch_gather(table_dev, rows, slot, stream)
        stream.synchronize()

    fused()
    got = slot.copy_to_host()
    crcs = gather_crc.piece_crcs(values.copy_to_host(), gather_crc.piece_starts(table)).tolist()
    bad_bytes = sum(got[e[1] : e[1] + e[3]].tobytes() != w for e, w in zip(entries, wants))
    bad_crcs = sum(c != crc32c.crc32c(w) for c, w in zip(crcs, wants))
    repeat = 1 if SIM else 5
    return {"bytes": offset, "pieces": len(entries), "rows": rows, "byte_mismatches": bad_bytes,
            "crc_mismatches": bad_crcs, "fused_gather_crc_gbps": gbps(offset, timed(fused, repeat)),
            "gather_only_gbps": gbps(offset, timed(plain, repeat)),
            "status": "ok" if not bad_bytes and not bad_crcs else "failed"}


def step_bandwidth(out: Path) -> dict:
    from numba import cuda

    n = (1 * MIB) if SIM else (1 << 30)
    pinned = cuda.pinned_array(n, np.uint8)
    dev = cuda.device_array(n, np.uint8)
    dev2 = cuda.device_array(n, np.uint8)
    stream = cuda.stream()

    def d2h():
        dev.copy_to_host(pinned, stream=stream)
        stream.synchronize()

    def h2d():
        dev.copy_to_device(pinned, stream=stream)
        stream.synchronize()

    def d2d():
        dev2.copy_to_device(dev, stream=stream)
        stream.synchronize()

    return {"bytes": n, "d2h_pinned_gbps": gbps(n, timed(d2h)), "h2d_pinned_gbps": gbps(n, timed(h2d)),
            "d2d_gbps": gbps(n, timed(d2d))}


def _nvcomp_library():
    """libnvcomp.so.5 from the nvidia-libnvcomp-cu13 / nvidia-nvcomp-cu13 wheels (ctypes)."""
    import ctypes
    import importlib.util

    for name in ("nvidia.libnvcomp", "nvidia.nvcomp"):
        try:
            spec = importlib.util.find_spec(name)
        except ModuleNotFoundError:
            continue
        for root in (spec.submodule_search_locations or []) if spec else []:
            for lib in sorted(Path(root).glob("**/libnvcomp.so*")):
                return ctypes.CDLL(str(lib))
    return ctypes.CDLL("libnvcomp.so.5")


def _nvcomp_types():
    import ctypes

    class Spec(ctypes.Structure):
        _fields_ = [("poly", ctypes.c_uint32), ("init", ctypes.c_uint32), ("ref_in", ctypes.c_bool),
                    ("ref_out", ctypes.c_bool), ("xorout", ctypes.c_uint32), ("reserved", ctypes.c_char * 16)]

    class KernelConf(ctypes.Structure):
        _fields_ = [("kernel_kind", ctypes.c_int32), ("bytes_per_read", ctypes.c_int32),
                    ("blocks_per_msg", ctypes.c_int32), ("reserved", ctypes.c_char * 20)]

    class Opts(ctypes.Structure):
        _fields_ = [("spec", Spec), ("kernel_conf", KernelConf), ("reserved", ctypes.c_char * 64)]

    return Spec, KernelConf, Opts


def step_nvcomp(out: Path) -> dict:
    """nvCOMP's batched CRC32 configured for CRC-32C (poly 0x1EDC6F41, reflected, init/xorout ~0) through
    ctypes, on the same segments as the CRC kernel, checked against the CPU crc32c."""
    import ctypes

    try:
        lib = _nvcomp_library()
        fn = lib.nvcompBatchedCRC32Async
        conf_fn = lib.nvcompBatchedCRC32GetHeuristicConf
    except (OSError, AttributeError) as exc:
        return {"status": "skipped", "reason": f"libnvcomp with nvcompBatchedCRC32Async not loadable: {exc}"}
    if SIM:
        return {"status": "skipped", "reason": "simulator: libnvcomp and its CRC entry point load; no device to run"}
    import crc32c
    from numba import cuda

    from gpuckpt.kernels import crc_segments

    Spec, KernelConf, Opts = _nvcomp_types()
    total, seg = 1 << 30, 256 << 10
    rng = np.random.default_rng(4)
    host = rng.integers(0, 256, total, dtype=np.uint8)
    dev = cuda.to_device(host)
    base = dev.device_ctypes_pointer.value
    n = total // seg
    ptrs = cuda.to_device(np.arange(n, dtype=np.uint64) * seg + np.uint64(base))
    sizes = cuda.to_device(np.full(n, seg, np.uint64))
    crcs = cuda.device_array(n, np.uint32)
    stream = cuda.stream()
    handle = ctypes.c_void_p(stream.handle.value if hasattr(stream.handle, "value") else int(stream.handle))
    conf = KernelConf()
    p = lambda a: ctypes.c_void_p(a.device_ctypes_pointer.value)  # noqa: E731
    status = conf_fn(p(sizes), ctypes.c_size_t(n), ctypes.byref(conf), ctypes.c_size_t(seg), handle)
    opts = Opts(Spec(0x1EDC6F41, 0xFFFFFFFF, True, True, 0xFFFFFFFF), conf)
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p, Opts, ctypes.c_int,
                   ctypes.c_void_p, ctypes.c_void_p]

    def run():
        code = fn(p(ptrs), p(sizes), n, p(crcs), opts, 0, None, handle)
        if code != 0:
            raise RuntimeError(f"nvcompBatchedCRC32Async returned {code}")
        stream.synchronize()

    seconds = timed(run, 5)
    got = crcs.copy_to_host()
    sample = range(0, n, max(1, n // 64))
    mismatches = sum(int(got[i]) != crc32c.crc32c(host[i * seg : (i + 1) * seg]) for i in sample)
    offsets, lengths = np.arange(n, dtype=np.int64) * seg, np.full(n, seg, np.int64)
    ours = timed(lambda: crc_segments(dev, offsets, lengths, stream=stream), 5)
    return {"bytes": total, "segment_bytes": seg, "heuristic_status": int(status), "mismatches_sampled": mismatches,
            "nvcomp_crc32c_gbps": gbps(total, seconds), "gpuckpt_crc_kernel_gbps": gbps(total, ours)}


def _state(total: int, small: int):
    from numba import cuda

    rng = np.random.default_rng(2)
    large = total * 3 // 4
    arrays = {f"large{i}": rng.standard_normal(large // 4 // 4).astype(np.float32) for i in range(4)}
    count = max(1, (total - large) // (small * 4))
    arrays |= {f"small{i}": rng.standard_normal(small).astype(np.float32) for i in range(count)}
    return {k: cuda.to_device(v) for k, v in arrays.items()}, arrays


def step_engine(out: Path) -> dict:
    import gpuckpt

    total = (64 << 10) if SIM else (2 << 30)
    device, host = _state(total, 256 if SIM else 16 << 10)
    nbytes = sum(v.nbytes for v in host.values())
    with tempfile.TemporaryDirectory(dir="/dev/shm" if Path("/dev/shm").is_dir() else None) as tmp:
        ckpt = gpuckpt.Checkpoint(**{k: gpuckpt.Variable(v) for k, v in device.items()})
        ckpt.write(Path(tmp) / "warm")
        engine = ckpt._self_engines.gpu()
        before = engine.runtime.launches
        ckpt.write(Path(tmp) / "counted")
        launches = engine.runtime.launches - before  # kernel launches of one save
        slots = sum(len(ring._cache[1]) for ring in engine._rings.values() if ring._cache)
        save_s = timed(lambda: ckpt.write(Path(tmp) / "ck"), 1 if SIM else 3)
        restore_s = timed(lambda: ckpt.read(Path(tmp) / "ck").assert_consumed(), 1)
        opts = gpuckpt.CheckpointOptions(enable_async=True)
        start = time.perf_counter()
        ckpt.write(Path(tmp) / "async", options=opts)
        blocking = time.perf_counter() - start
        ckpt.sync()
        ckpt.close()
    return {"tensors": len(host), "bytes": nbytes, "launches_per_save": launches, "staging_slots_per_save": slots,
            "save_gbps": gbps(nbytes, save_s),
            "restore_gbps": gbps(nbytes, restore_s), "async_blocking_ms": round(blocking * 1e3, 3)}


def step_probes(out: Path) -> dict:
    """A save while torch writes on a side stream must hold before-or-after values; JAX readiness."""
    found = {}
    try:
        import torch

        if torch.cuda.is_available() and not SIM:
            import gpuckpt

            x = torch.zeros(1 << 24, device="cuda")
            side = torch.cuda.Stream()
            with torch.cuda.stream(side):
                for _ in range(50):
                    x.add_(1.0)  # queued, still running when the save starts
                with tempfile.TemporaryDirectory() as tmp:
                    ckpt = gpuckpt.Checkpoint(x=gpuckpt.Variable(x))
                    ckpt.write(Path(tmp) / "ck")
                    y = gpuckpt.load_checkpoint(Path(tmp) / "ck").get_tensor("x/.ATTRIBUTES/VARIABLE_VALUE")
            found["torch_side_stream_uniform"] = bool(np.unique(y).size == 1)
            found["torch_side_stream_value"] = float(y[0])
        else:
            found["torch"] = "no CUDA device for torch"
    except ImportError:
        found["torch"] = "not installed"
    try:
        import jax

        gpus = [d for d in jax.devices() if d.platform == "gpu"]
        if gpus and not SIM:
            import jax.numpy as jnp

            import gpuckpt

            a = jax.device_put(jnp.ones((4096, 4096), jnp.float32), gpus[0])
            y = a
            for _ in range(20):
                y = (y @ a) / 4096.0  # dispatched asynchronously: still running when the save starts
            with tempfile.TemporaryDirectory() as tmp:
                gpuckpt.Checkpoint(y=gpuckpt.Variable(y)).write(Path(tmp) / "ck")
                saved = gpuckpt.load_checkpoint(Path(tmp) / "ck").get_tensor("y/.ATTRIBUTES/VARIABLE_VALUE")
            found["jax_ready_before_copy"] = bool(np.array_equal(saved, np.asarray(y)))
        else:
            found["jax"] = f"{len(gpus)} GPU devices" if gpus else "no JAX GPU"
    except Exception as exc:
        found["jax"] = f"unavailable: {type(exc).__name__}"
    return found


def step_gather_options(out: Path) -> dict:
    """Per-call cost and GB/s of the three gather options (bench/gather_options.py) for 5,000 small
    tensors and 4 large ones; an option whose package is absent is skipped with its reason."""
    sys.path.insert(0, str(ROOT / "bench"))
    import gather_options

    return gather_options.compare(gather_options.default_states(5000, 16 << 10, 4, 64 << 20), 1 if SIM else 5)


STEPS = [("env", step_env, 30), ("pytest_gpu", step_pytest_gpu, 120), ("kernels", step_kernels, 90),
         ("fused", step_fused, 40), ("bandwidth", step_bandwidth, 40), ("gather_options", step_gather_options, 45),
         ("nvcomp", step_nvcomp, 60), ("engine", step_engine, 120), ("probes", step_probes, 40)]


def main(out: Path) -> int:
    out.mkdir(parents=True, exist_ok=True)
    budget = float(os.environ.get("GPU_CHECK_BUDGET_S", 470))
    start = time.monotonic()
    summary: dict = {"simulated": SIM, "note": "simulated: plumbing only, no figure is a measurement" if SIM
                     else "measured on this device", "steps": {}}
    for name, fn, cap in STEPS:
        if time.monotonic() - start + cap > budget:
            summary["steps"][name] = {"status": "skipped", "reason": "time budget spent"}
            continue
        t0 = time.monotonic()
        try:
            result = fn(out)
            status = result.pop("status", "ok") if isinstance(result, dict) else "ok"
            summary["steps"][name] = {"status": status, **result}
        except Exception as exc:
            summary["steps"][name] = {"status": "failed", "error": f"{type(exc).__name__}: {exc}",
                                      "traceback": traceback.format_exc()[-2000:]}
        summary["steps"][name]["seconds"] = round(time.monotonic() - t0, 2)
    summary["seconds"] = round(time.monotonic() - start, 2)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: v.get("status") for k, v in summary["steps"].items()}))
    return 0 if all(v["status"] != "failed" for v in summary["steps"].values()) else 1


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1] if len(sys.argv) > 1 else "gpu_check_out")))
