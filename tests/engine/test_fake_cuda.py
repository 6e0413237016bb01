"""The GPU engine on the reordering fake CUDA runtime, over many seeds: queued work runs in any
order CUDA allows, released staging is poisoned, two devices, channels_last, bf16, a producer
writing on a side stream, a write error followed by a good save."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from gpuckpt.arrays import as_tensor
from gpuckpt.format import crc
from gpuckpt.plan import TensorSpec, build_save_plan
from gpuckpt.testing.fake_cuda import POISON, FakeRuntime, WrongDeviceError

gather = pytest.importorskip("gpuckpt.kernels.gather")
from gpuckpt.engine import gpu  # noqa: E402

SEEDS = range(100)


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    monkeypatch.setattr(gather, "CHUNK_BYTES", 256)


class Collecting:
    """Storage that keeps what is written, per shard."""

    def __init__(self, fail_first: bool = False) -> None:
        self.shards: dict[int, bytearray] = {}
        self.fail_first = fail_first

    def write(self, shard, offset, data) -> None:
        if self.fail_first:
            self.fail_first = False
            raise OSError(28, "No space left on device")
        raw = b"".join(bytes(np.asarray(d)) for d in data) if isinstance(data, list) else bytes(np.asarray(data))
        buf = self.shards.setdefault(shard, bytearray())
        buf.extend(b"\0" * max(0, offset + len(raw) - len(buf)))
        buf[offset : offset + len(raw)] = raw


def state(rng: np.random.Generator) -> dict[str, tuple[np.ndarray, int, tuple[int, ...] | None]]:
    """name -> (values, device, layout): odd sizes, a tensor larger than a slot, bf16, channels_last."""
    return {
        "w": (rng.standard_normal(700).astype(np.float32), 0, None),  # 2800 B: spans slots of 1024 B
        "b16": (rng.standard_normal((3, 5)).astype(ml_dtypes.bfloat16), 1, None),
        "conv": (rng.standard_normal((2, 3, 4, 5)).astype(np.float32), 0, (0, 2, 3, 1)),  # channels_last
        "odd": (rng.integers(0, 255, 37).astype(np.uint8), 1, None),
        "f8": (rng.standard_normal(9).astype(ml_dtypes.float8_e4m3fn), 0, None),
        "empty": (np.zeros((0, 3), np.int64), 1, None),
        "i64": (rng.integers(-9, 9, (4, 6)).astype(np.int64), 1, (1, 0)),  # a transposed layout
    }


def save(rt: FakeRuntime, engine, arrays: dict, writer=None):
    tensors = [as_tensor(a, k) for k, a in arrays.items()]
    plan = build_save_plan([TensorSpec(k, t.dtype, t.shape, t.nbytes) for k, t in zip(arrays, tensors)])
    writer = writer or Collecting()
    crcs = engine.write(plan, tensors, writer)
    return plan, crcs, writer


def expect(plan, crcs, writer, values: dict[str, np.ndarray]) -> None:
    data = bytes(writer.shards.get(0, b""))
    for item, masked, (key, value) in zip(plan.items, crcs, values.items()):
        want = np.ascontiguousarray(value).tobytes()
        got = data[item.offset : item.offset + len(want)]
        assert got == want, f"bytes of {key} differ"
        assert masked == crc.masked_crc32c(np.frombuffer(want, np.uint8)), key


@pytest.mark.parametrize("seed", SEEDS)
def test_saves_are_exact_in_any_order_the_device_may_run_them(seed):
    rng = np.random.default_rng(seed)
    rt = FakeRuntime(seed, devices=2)
    engine = gpu.GpuEngine(staging_bytes=3 * 1024, runtime=rt, slots=1 + seed % 3)  # rings of 1, 2 and 3 slots
    spec = state(rng)
    arrays = {k: rt.array(v, d, layout) for k, (v, d, layout) in spec.items()}
    # training queues an update of "w" in two halves on a side stream of device 0, just before the save
    side = rt.stream()
    rt.set_current_stream(0, side)
    new_w = rng.standard_normal(700).astype(np.float32)
    w = arrays["w"].host
    rt.launch(side, lambda: w.__setitem__(slice(0, 350), new_w[:350]))
    rt.launch(side, lambda: w.__setitem__(slice(350, None), new_w[350:]))
    values = {k: v for k, (v, _, _) in spec.items()} | {"w": new_w}
    plan, crcs, writer = save(rt, engine, arrays)
    expect(plan, crcs, writer, values)  # the snapshot holds the update: queued before the save
    assert engine.pool.in_use == 0
    # a second save of the same tensors reuses the cached pointer tables
    builds = {d: r.table_builds for d, r in engine._rings.items()}
    plan, crcs, writer = save(rt, engine, arrays)
    expect(plan, crcs, writer, values)
    assert {d: r.table_builds for d, r in engine._rings.items()} == builds
    assert sorted(engine._rings) == [0, 1]


@pytest.mark.parametrize("seed", SEEDS)
def test_a_write_error_then_a_successful_save(seed):
    rng = np.random.default_rng(seed)
    rt = FakeRuntime(seed, devices=2)
    engine = gpu.GpuEngine(staging_bytes=3 * 1024, runtime=rt)
    spec = state(rng)
    arrays = {k: rt.array(v, d, layout) for k, (v, d, layout) in spec.items()}
    with pytest.raises(OSError, match="No space"):
        save(rt, engine, arrays, Collecting(fail_first=True))
    assert engine.pool.in_use == 0  # every pinned slot given back, each after its copy had run
    plan, crcs, writer = save(rt, engine, arrays)
    expect(plan, crcs, writer, {k: v for k, (v, _, _) in spec.items()})


def test_the_fake_catches_a_missing_producer_fence(monkeypatch):
    """Without the fence, some seeds copy the tensor mid-update: the double must expose it."""
    monkeypatch.setattr(gpu, "fence_producers", lambda *a: [])
    torn = 0
    for seed in range(40):
        rt = FakeRuntime(seed)
        engine = gpu.GpuEngine(staging_bytes=3 * 1024, runtime=rt)
        arr = rt.array(np.zeros(256, np.float32))
        side = rt.stream()
        rt.set_current_stream(0, side)
        rt.launch(side, lambda h=arr.host: h.__setitem__(slice(0, 128), 1.0))
        rt.launch(side, lambda h=arr.host: h.__setitem__(slice(128, None), 1.0))
        _, _, writer = save(rt, engine, {"x": arr})
        got = np.frombuffer(bytes(writer.shards[0]), np.float32)
        torn += int(0 < got.sum() < 256)
    assert torn > 0


def test_the_fake_catches_a_write_before_the_copy_lands(monkeypatch):
    """If the writer did not wait for the DMA event, it would write poisoned or stale bytes."""
    seen_poison = 0
    for seed in range(20):
        rt = FakeRuntime(seed, eager=0.0)
        monkeypatch.setattr(rt, "host_wait", lambda *a: None)
        engine = gpu.GpuEngine(staging_bytes=3 * 1024, runtime=rt)
        arr = rt.array(np.ones(200, np.float32))
        _, _, writer = save(rt, engine, {"x": arr})
        seen_poison += bytes(writer.shards[0]).count(bytes([POISON]))
    assert seen_poison > 0


def test_work_from_the_wrong_device_context_is_refused():
    rt = FakeRuntime(0, devices=2)
    with rt.activate(1):
        s1 = rt.stream()
    with pytest.raises(WrongDeviceError):
        rt.record(rt.event(), s1)  # device 0 is current here


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("mode", ["device", "pinned", "chunked"], ids=lambda m: f"{m}-snapshot")
def test_async_capture_holds_the_values_of_the_call(seed, mode):
    """Updates queued before the capture are in it; training queued after it returns is not."""
    from gpuckpt.engine.capture import SPARE_BYTES, CapturePool

    rng = np.random.default_rng(seed)
    room = mode == "device"
    rt = FakeRuntime(seed, devices=2, free_bytes=(1 << 40) if room else SPARE_BYTES, value_waits=mode == "chunked")
    spec = state(rng)
    arrays = {k: rt.array(v, d, layout) for k, (v, d, layout) in spec.items()}
    side = rt.stream()
    rt.set_current_stream(0, side)
    before = rng.standard_normal(700).astype(np.float32)
    w = arrays["w"].host
    rt.launch(side, lambda: w.__setitem__(slice(0, 350), before[:350]))
    rt.launch(side, lambda: w.__setitem__(slice(350, None), before[350:]))
    pool = CapturePool()
    captured = pool.capture(arrays)
    assert bool(captured.device_buffers) == room and captured.pinned == (mode == "pinned")
    assert bool(captured.tickets) == (mode == "chunked")
    conv = arrays["conv"].host
    rt.launch(side, lambda: w.__setitem__(slice(None), -1.0))  # the next training step
    rt.launch(rt.current_stream(0), lambda: conv.__setitem__(Ellipsis, -1.0))
    engine = gpu.GpuEngine(staging_bytes=3 * 1024, runtime=rt)
    if mode != "pinned":
        plan, crcs, writer = save(rt, engine, captured.tensors)
    else:
        tensors = [as_tensor(v, k) for k, v in captured.tensors.items()]
        plan = build_save_plan([TensorSpec(k, t.dtype, t.shape, t.nbytes) for k, t in zip(arrays, tensors)])
        writer = Collecting()
        crcs = engine.write(plan, tensors, writer)
    expect(plan, crcs, writer, {k: v for k, (v, _, _) in spec.items()} | {"w": before})
    pool.release(captured)
    rt.drain()
    assert (w == -1).all()  # training did run afterwards


@pytest.mark.parametrize("seed", range(20))
def test_scatter_on_the_fake_lands_after_the_copies_it_waits_for(seed):
    """The restore direction's building block: H2D into a slot, then one scatter into strided tensors."""
    rng = np.random.default_rng(seed)
    rt = FakeRuntime(seed)
    want = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    target = rt.array(np.zeros_like(want), 0, (0, 2, 3, 1))  # channels_last destination
    view = target.__gpuckpt_device_view__()
    table = gather.gather_table([(view.address, 0, 0, view.nbytes, view.itemsize, *view.runs())])
    stream = rt.stream()
    slot, table_dev = rt.device_buffer(view.nbytes), rt.table_buffer(table.shape[0])
    rt.upload(table, table_dev, stream)
    rt.upload(np.frombuffer(want.tobytes(), np.uint8), slot, stream)
    rt.scatter(table_dev, table.shape[0], slot, stream)
    done = rt.event()
    rt.record(done, stream)
    rt.host_wait(done, 10, "scatter")
    assert np.array_equal(target.host, want)
    other = rt.array(np.zeros(4, np.float32), 1)
    bad = other.__gpuckpt_device_view__()
    wrong = rt.table_buffer(1)
    rt.upload(gather.gather_table([(bad.address, 0, 0, 16, 4, *bad.runs())]), wrong, stream)
    with pytest.raises(WrongDeviceError, match="device 1"):  # when it runs (maybe at once: eager)
        rt.scatter(wrong, 1, slot, stream)
        rt.drain()


@pytest.mark.parametrize("seed", range(20))
def test_a_failed_capture_waits_for_its_copies_before_giving_the_buffer_back(seed, monkeypatch):
    from gpuckpt.engine.capture import SPARE_BYTES, CapturePool

    rt = FakeRuntime(seed, free_bytes=SPARE_BYTES, eager=0.0, value_waits=False)  # no room, no flag waits: pinned
    arrays = {f"x{i}": rt.array(np.full(64, i, np.float32)) for i in range(3)}
    real = rt.download
    calls = []

    def failing_download(host, dev, stream):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("copy refused")
        real(host, dev, stream)

    monkeypatch.setattr(rt, "download", failing_download)
    pool = CapturePool()
    with pytest.raises(RuntimeError, match="copy refused"):
        pool.capture(arrays)
    assert rt.pending() == 0  # the copy queued before the failure ran before the buffer went back
    (buffer, pinned), = pool._free
    assert pinned and (buffer[:256].view(np.float32) == 0).all()  # x0's bytes landed in it


@pytest.mark.parametrize("seed", range(20))
def test_a_pinned_snapshot_returns_before_its_copies_and_reading_it_waits(seed):
    from gpuckpt.engine.capture import SPARE_BYTES, CapturePool, PendingHostArray

    rt = FakeRuntime(seed, free_bytes=SPARE_BYTES, eager=0.0, value_waits=False)  # nothing runs until a wait
    values = {f"x{i}": np.full(64, i + 1, np.float32) for i in range(3)}
    pool = CapturePool()
    captured = pool.capture({k: rt.array(v) for k, v in values.items()})
    assert rt.pending() > 0  # capture returned with the copies still queued: no host wait
    assert all(isinstance(v, PendingHostArray) for v in captured.tensors.values())
    for k, v in values.items():
        assert np.array_equal(np.asarray(captured.tensors[k]), v)
    pool.release(captured)
    rt.drain()  # what is left is the producers' wait for the snapshot, which lets training go on
    assert rt.pending() == 0
