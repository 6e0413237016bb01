"""The GPU engine end to end on Numba device arrays (the simulator in CI): same bytes as the CPU
path, restores into device memory in place, verification before anything is written."""

from __future__ import annotations

import numpy as np
import pytest

import gpuckpt
from gpuckpt.engine.select import EngineCache
from gpuckpt.saver import write_tensors

cuda = pytest.importorskip("numba.cuda")
pack = pytest.importorskip("gpuckpt.kernels.pack")

DTYPES = ["float32", "float64", "int8", "uint16", "int64", "bool", "complex64", "float16", "bfloat16", "float8_e4m3fn"]


@pytest.fixture(autouse=True)
def quick_kernels(monkeypatch):
    monkeypatch.setattr(pack, "CHUNK_BYTES", 4096)
    monkeypatch.setattr(pack, "MAX_BLOCKS", 8)


def values() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    out = {}
    for i, name in enumerate(DTYPES):
        dt = gpuckpt.format.dtypes.BY_NAME[name].numpy
        shape = [(), (0,), (3,), (5, 7), (2, 0, 3)][i % 5]
        raw = rng.integers(0, 256, int(np.prod(shape)) * dt.itemsize, dtype=np.uint8)
        if name == "bool":
            raw &= 1
        out[f"v_{name}"] = raw.view(dt).reshape(shape)
    return out


def files(prefix) -> tuple[bytes, bytes]:
    return (open(f"{prefix}.index", "rb").read(), open(f"{prefix}.data-00000-of-00001", "rb").read())


def test_device_checkpoint_is_byte_identical_to_the_cpu_path(tmp_path) -> None:
    vals = values()
    on_gpu = gpuckpt.Checkpoint(**{k: gpuckpt.Variable(cuda.to_device(v)) for k, v in vals.items()})
    on_cpu = gpuckpt.Checkpoint(**{k: gpuckpt.Variable(v) for k, v in vals.items()})
    assert files(on_gpu.write(tmp_path / "gpu")) == files(on_cpu.write(tmp_path / "cpu"))
    forced = on_gpu.write(tmp_path / "forced", options=gpuckpt.CheckpointOptions(io_device="cpu"))
    assert files(forced) == files(tmp_path / "cpu")


def test_restore_writes_existing_device_memory(tmp_path) -> None:
    vals = values()
    path = gpuckpt.Checkpoint(**{k: gpuckpt.Variable(v) for k, v in vals.items()}).write(tmp_path / "ck")
    device = {k: cuda.to_device(np.zeros_like(v)) for k, v in vals.items()}
    live = {k: gpuckpt.Variable(d) for k, d in device.items()}
    gpuckpt.Checkpoint(**live).read(path).assert_consumed()
    for k, v in vals.items():
        assert device[k].copy_to_host().tobytes() == v.tobytes(), k  # the user's own arrays changed
        assert live[k].value() is device[k]


def test_either_engine_reads_what_the_other_wrote(tmp_path) -> None:
    vals = values()
    path = gpuckpt.Checkpoint(**{k: gpuckpt.Variable(cuda.to_device(v)) for k, v in vals.items()}).write(tmp_path / "g")
    host = {k: gpuckpt.Variable(np.zeros_like(v)) for k, v in vals.items()}
    gpuckpt.Checkpoint(**host).read(path).assert_consumed()
    assert all(host[k].numpy().tobytes() == v.tobytes() for k, v in vals.items())
    device = {k: gpuckpt.Variable(cuda.to_device(np.zeros_like(v))) for k, v in vals.items()}
    opts = gpuckpt.CheckpointOptions(io_device="cpu")  # device destinations through the host path
    gpuckpt.Checkpoint(**device).read(path, options=opts).assert_consumed()
    assert all(device[k].numpy().tobytes() == v.tobytes() for k, v in vals.items())


@pytest.fixture
def pinned_sizes(monkeypatch) -> list[int]:
    """The size of every pinned host buffer the CUDA runtime hands out from now on."""
    from gpuckpt.engine.cuda import NumbaRuntime

    sizes: list[int] = []
    pinned = NumbaRuntime.pinned

    def counting(self, nbytes: int):
        sizes.append(nbytes)
        return pinned(self, nbytes)

    monkeypatch.setattr(NumbaRuntime, "pinned", counting)
    return sizes


def test_tensors_larger_than_the_pool_stream_through_it(tmp_path, pinned_sizes) -> None:
    rng = np.random.default_rng(5)
    big = rng.standard_normal(5000).astype(np.float32)  # 20000 bytes through a 4096-byte pool
    small = [rng.integers(0, 9, n).astype(np.int32) for n in (1, 300, 17)]
    tensors = {"big": big, **{f"s{i}": s for i, s in enumerate(small)}}
    engines = EngineCache(staging_bytes=4096)
    write_tensors(tmp_path / "gpu", {k: cuda.to_device(v) for k, v in tensors.items()}, engines=engines)
    write_tensors(tmp_path / "cpu", tensors)
    assert files(tmp_path / "gpu") == files(tmp_path / "cpu")
    pool = engines.gpu().pool
    assert pool.capacity == 4096 and pinned_sizes.count(4096) == 1 and pool.in_use == 0
    restored = restore_through_ring(tmp_path / "cpu", tensors, engines.ring(4096))
    assert all(restored[k].copy_to_host().tobytes() == v.tobytes() for k, v in tensors.items())
    engines.close()


def restore_through_ring(prefix, tensors: dict[str, np.ndarray], ring) -> dict:
    """Read ``tensors``' keys from ``prefix`` into new device arrays through the restore ring's API."""
    from gpuckpt.restore_plan import Request, build_restore_plan
    from gpuckpt.storage.reader import FileSystemReader

    storage = FileSystemReader(prefix)
    requests = [Request(k, k, storage.index.entries[k].dtype, v.shape) for k, v in tensors.items()]
    plan = build_restore_plan(storage.index, requests, storage.shard_size, prefix=str(prefix))
    out = {k: cuda.device_array(v.shape, v.dtype) for k, v in tensors.items()}
    dests = [out[r.key].reshape(out[r.key].size).view(np.uint8) for r in requests]
    outcome = ring.read(storage, plan.reads, dests)
    assert not outcome.failed and not outcome.untouched
    return out


def test_corrupt_byte_is_caught_on_the_device_and_nothing_is_written(tmp_path) -> None:
    vals = {"a": np.arange(100, dtype=np.float32), "b": np.arange(50, dtype=np.int64)}
    path = gpuckpt.Checkpoint(**{k: gpuckpt.Variable(v) for k, v in vals.items()}).write(tmp_path / "ck")
    data = tmp_path / "ck.data-00000-of-00001"
    raw = bytearray(data.read_bytes())
    raw[vals["a"].nbytes + 9] ^= 0x20  # inside "b"
    data.write_bytes(bytes(raw))
    device = {k: cuda.to_device(np.full_like(v, 7)) for k, v in vals.items()}
    with pytest.raises(gpuckpt.DataLossError, match="'b/.ATTRIBUTES/VARIABLE_VALUE'.*verified on the GPU"):
        gpuckpt.Checkpoint(**{k: gpuckpt.Variable(d) for k, d in device.items()}).read(path)
    assert all((d.copy_to_host() == 7).all() for d in device.values())


def test_host_memory_stays_flat_over_100_saves(tmp_path, pinned_sizes) -> None:
    var = gpuckpt.Variable(cuda.to_device(np.arange(1024, dtype=np.float32)))  # small: the simulator is slow
    ckpt = gpuckpt.Checkpoint(v=var)
    ckpt.write(tmp_path / "warm")
    pool = ckpt._self_engines.gpu().pool
    warm = len(pinned_sizes)
    rss = []
    for i in range(100):
        ckpt.write(tmp_path / f"ck{i % 2}")
        assert pool.in_use == 0
        rss.append(_rss_bytes())
    assert pinned_sizes[warm:] == [], "saves after the first pinned more host memory"
    assert max(rss[10:]) - rss[10] < 4 << 20, "resident memory grew across saves"
    ckpt.close()


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def test_device_variable_api() -> None:
    var = gpuckpt.Variable(cuda.to_device(np.arange(4, dtype=np.int32)))
    assert var.on_device and var.shape == (4,) and var.dtype.name == "int32"
    var.assign(np.array([4, 3, 2, 1], np.int32))
    assert var.numpy().tolist() == [4, 3, 2, 1]
    var.assign(cuda.to_device(np.array([9, 9, 9, 9], np.int32)))
    var.assign_add(1)
    assert var.numpy().tolist() == [10] * 4
    with pytest.raises(gpuckpt.InvalidArgumentError, match="float32"):
        var.assign(cuda.to_device(np.zeros(4, np.float32)))


def test_io_device_gpu_without_a_gpu_is_a_clear_error(tmp_path, monkeypatch) -> None:
    import gpuckpt.engine.select as select

    monkeypatch.setattr(select, "gpu_usable", lambda: False)
    ckpt = gpuckpt.Checkpoint(v=gpuckpt.Variable(cuda.to_device(np.zeros(3, np.float32))))
    with pytest.raises(gpuckpt.InvalidArgumentError, match="io_device='gpu'"):
        ckpt.write(tmp_path / "ck", options=gpuckpt.CheckpointOptions(io_device="gpu"))


def test_non_contiguous_device_arrays_are_saved_in_c_order(tmp_path) -> None:
    rng = np.random.default_rng(11)
    nhwc = rng.standard_normal((2, 4, 5, 3)).astype(np.float32)  # channels_last memory of an NCHW weight
    nchw = nhwc.transpose(0, 3, 1, 2)
    cols = rng.integers(0, 9, (6, 8)).astype(np.int16)
    device = {"conv": cuda.to_device(nhwc).transpose((0, 3, 1, 2)), "cols": cuda.to_device(cols)[:, ::3]}
    host = {"conv": np.ascontiguousarray(nchw), "cols": np.ascontiguousarray(cols[:, ::3])}
    on_gpu = gpuckpt.Checkpoint(**{k: gpuckpt.Variable(v) for k, v in device.items()})
    on_cpu = gpuckpt.Checkpoint(**{k: gpuckpt.Variable(v) for k, v in host.items()})
    assert files(on_gpu.write(tmp_path / "gpu")) == files(on_cpu.write(tmp_path / "cpu"))
    forced = on_gpu.write(tmp_path / "forced", options=gpuckpt.CheckpointOptions(io_device="cpu"))
    assert files(forced) == files(tmp_path / "cpu")


def test_async_save_of_device_state_matches_a_synchronous_one(tmp_path) -> None:
    vals = values()
    device = {k: cuda.to_device(v) for k, v in vals.items()}
    ckpt = gpuckpt.Checkpoint(**{k: gpuckpt.Variable(d) for k, d in device.items()})
    path = ckpt.write(tmp_path / "async", options=gpuckpt.CheckpointOptions(enable_async=True))
    for d in device.values():  # training changes the variables while the save drains
        if d.size:
            d.copy_to_device(np.zeros(d.size * d.dtype.itemsize, np.uint8).view(d.dtype).reshape(d.shape))
    ckpt.sync()
    expected = gpuckpt.Checkpoint(**{k: gpuckpt.Variable(v) for k, v in vals.items()}).write(tmp_path / "sync")
    assert files(path) == files(expected)
    ckpt.close()
