"""Save costs one kernel launch per staging slot, whatever the tensor count: the fused gather + CRC
(``kernels.gather_crc``) copies and checksums every piece of a slot, strided ones included. Counted on
the reordering fake (thousands of pieces) and on Numba's simulator (the real kernel), bytes and CRCs
checked against the CPU path and the ``crc32c`` package."""

from __future__ import annotations

import crc32c as crc32c_pkg
import ml_dtypes
import numpy as np
import pytest

from gpuckpt.engine.select import EngineCache
from gpuckpt.format import crc
from gpuckpt.saver import write_tensors
from gpuckpt.testing.fake_cuda import FakeRuntime
from tests.engine.test_fake_cuda import expect, save

gather = pytest.importorskip("gpuckpt.kernels.gather")
gather_crc = pytest.importorskip("gpuckpt.kernels.gather_crc")
cuda = pytest.importorskip("numba.cuda")
from gpuckpt.engine import gpu  # noqa: E402
from gpuckpt.engine.cuda import NumbaRuntime  # noqa: E402


def many_small(rng: np.random.Generator, count: int) -> dict[str, tuple[np.ndarray, tuple[int, ...] | None]]:
    """``count`` tensors of 0-9 bytes (and a few strided and narrow-float ones): one row each."""
    out: dict[str, tuple[np.ndarray, tuple[int, ...] | None]] = {}
    for i in range(count):
        out[f"t{i}"] = (rng.integers(0, 256, i % 10, dtype=np.uint8), None)
    out["conv"] = (rng.standard_normal((2, 3, 2, 2)).astype(np.float32), (0, 2, 3, 1))  # channels_last
    out["b16"] = (rng.standard_normal(5).astype(ml_dtypes.bfloat16), None)
    out["f8"] = (rng.standard_normal(3).astype(ml_dtypes.float8_e4m3fn), None)
    out["cols"] = (rng.integers(-9, 9, (3, 4)).astype(np.int64), (1, 0))  # transposed
    return out


@pytest.mark.parametrize("seed", range(5))
def test_thousands_of_pieces_in_one_slot_take_one_launch(seed):
    rng = np.random.default_rng(seed)
    rt = FakeRuntime(seed)
    spec = many_small(rng, 3000)
    arrays = {k: rt.array(v, 0, layout) for k, (v, layout) in spec.items()}
    engine = gpu.GpuEngine(staging_bytes=3 * 64 * 1024, runtime=rt, slots=3)  # 64 KiB slots: all in one
    plan, crcs, writer = save(rt, engine, arrays)
    expect(plan, crcs, writer, {k: v for k, (v, _) in spec.items()})
    plans = engine._rings[0]._cache[1]  # the save's slot plans
    assert len(plans) == 1 and len(plans[0].pieces) == len(arrays)
    assert rt.launches == 1  # gather, every CRC: one kernel
    before = rt.launches
    save(rt, engine, arrays)  # a second save: the cached table, one more launch
    assert rt.launches == before + 1


@pytest.mark.parametrize("seed", range(5))
def test_each_slot_is_one_launch_when_the_state_spans_several(seed):
    rng = np.random.default_rng(seed)
    rt = FakeRuntime(seed)
    spec = many_small(rng, 2000) | {"big": (rng.standard_normal(700).astype(np.float32), None)}
    arrays = {k: rt.array(v, 0, layout) for k, (v, layout) in spec.items()}
    engine = gpu.GpuEngine(staging_bytes=3 * 1024, runtime=rt, slots=1 + seed % 3)  # 1 KiB slots
    plan, crcs, writer = save(rt, engine, arrays)
    expect(plan, crcs, writer, {k: v for k, (v, _) in spec.items()})
    slots = len(engine._rings[0]._cache[1])
    assert slots > 5 and rt.launches == slots


def test_a_kernel_that_misses_one_row_is_caught():
    """The CRC of every piece comes from the kernel's row values: a lost row fails the save's check."""
    rng = np.random.default_rng(1)
    rt = FakeRuntime(1, eager=0.0)
    real = gather_crc.gather_crc_host

    def dropping(table, slot, out):
        real(table, slot, out)
        out[len(table) // 2] ^= 1

    spec = many_small(rng, 50)
    arrays = {k: rt.array(v, 0, layout) for k, (v, layout) in spec.items()}
    engine = gpu.GpuEngine(staging_bytes=3 * 64 * 1024, runtime=rt)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(gather_crc, "gather_crc_host", dropping)
        plan, crcs, writer = save(rt, engine, arrays)
    with pytest.raises(AssertionError):
        expect(plan, crcs, writer, {k: v for k, (v, _) in spec.items()})


def test_the_real_kernel_saves_one_launch_per_slot_on_the_simulator(tmp_path, monkeypatch):
    """NumbaRuntime with the fused kernel (simulated): files identical to the CPU path's, one launch a slot."""
    monkeypatch.setattr(gather, "CHUNK_BYTES", 512)  # rows of at most 512 B: pieces straddle rows
    rng = np.random.default_rng(7)
    spec = many_small(rng, 120) | {"big": (rng.standard_normal(900).astype(np.float32), None),
                                   "odd": (rng.integers(0, 256, 1001, dtype=np.uint8), None)}

    def device(v, layout):
        if layout is None:
            return cuda.to_device(v)
        inverse = tuple(int(k) for k in np.argsort(layout))
        return cuda.to_device(np.ascontiguousarray(v.transpose(layout))).transpose(inverse)

    runtime = NumbaRuntime()
    engines = EngineCache(staging_bytes=3 * 2048)
    engines._gpu = gpu.GpuEngine(staging_bytes=3 * 2048, runtime=runtime)  # the one the save uses
    write_tensors(tmp_path / "gpu", {k: device(v, layout) for k, (v, layout) in spec.items()}, engines=engines)
    write_tensors(tmp_path / "cpu", {k: np.ascontiguousarray(v) for k, (v, _) in spec.items()})
    for suffix in (".index", ".data-00000-of-00001"):
        assert (tmp_path / f"gpu{suffix}").read_bytes() == (tmp_path / f"cpu{suffix}").read_bytes()
    slots = len(engines.gpu().ring(0)._cache[1])
    assert slots >= 2 and runtime.launches == slots
    engines.close()


def test_row_values_join_to_the_crc_of_the_piece():
    """The host reference's contract, by itself: XOR of a piece's row values == crc32c of the piece."""
    rng = np.random.default_rng(3)
    data = rng.integers(0, 256, 1000, dtype=np.uint8)
    for cut in ([1000], [1, 999], [7, 0, 500, 493], [333, 333, 334]):
        value, local = 0, 0
        for n in cut:
            value ^= gather_crc.row_value_host(data[local : local + n], local, data.size)
            local += n
        assert value == crc32c_pkg.crc32c(data.tobytes()) == crc.crc32c(data)
    assert gather_crc.row_value_host(b"", 0, 0) == 0
