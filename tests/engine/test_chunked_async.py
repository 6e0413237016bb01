"""Asynchronous saves without spare device memory, on the reordering fake runtime: nothing is copied
at the call; the background save's ring copies chunk by chunk, and training that overwrites a value
waits (on the device) only until the chunk holding that value was gathered."""

from __future__ import annotations

import numpy as np
import pytest

from gpuckpt.testing.fake_cuda import FakeRuntime
from tests.engine.test_fake_cuda import Collecting, expect, save, state

gather = pytest.importorskip("gpuckpt.kernels.gather")
from gpuckpt.engine import gpu  # noqa: E402
from gpuckpt.engine.capture import SPARE_BYTES, CapturePool, ChunkedSnapshot  # noqa: E402

SEEDS = range(100)


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    monkeypatch.setattr(gather, "CHUNK_BYTES", 256)


@pytest.fixture
def gathers(monkeypatch):
    """How many gather launches have run so far (counted when they run, not when they are queued)."""
    ran = [0]
    real = gather.gather_host

    def counting(table, dst):
        ran[0] += 1
        real(table, dst)

    monkeypatch.setattr(gather, "gather_host", counting)
    return ran


def setup(seed: int, **kwargs):
    rng = np.random.default_rng(seed)
    rt = FakeRuntime(seed, devices=2, free_bytes=SPARE_BYTES, **kwargs)  # no spare device memory
    spec = state(rng)
    arrays = {k: rt.array(v, d, layout) for k, (v, d, layout) in spec.items()}
    side = rt.stream()
    rt.set_current_stream(0, side)
    before = rng.standard_normal(700).astype(np.float32)  # queued before the save: must be in it
    w = arrays["w"].host
    rt.launch(side, lambda: w.__setitem__(slice(0, 350), before[:350]))
    rt.launch(side, lambda: w.__setitem__(slice(350, None), before[350:]))
    return rt, spec, arrays, {k: v for k, (v, _, _) in spec.items()} | {"w": before}


def queued_copies(rt, monkeypatch) -> tuple[list, list]:
    """(names of the copies and kernels queued while the switch is on, the switch: a one-item list)."""
    queued: list = []
    on = [True]
    for name in ("gather", "gather_crc", "download", "copy", "upload"):
        real = getattr(rt, name)

        def recording(*args, _real=real, _name=name):
            if on[0]:
                queued.append(_name)
            return _real(*args)

        monkeypatch.setattr(rt, name, recording)
    return queued, on


def copied(ticket) -> bool:
    """Whether the ring has released the ticket on the device (its value's chunk was gathered)."""
    return ((int(ticket.flags.array[ticket.index]) - ticket.generation) & 0xFFFFFFFF) < 0x80000000


def overwrite_after(rt, arrays, stream_of, landed: dict, gathers, tickets=None) -> None:
    """Training's next step: every value overwritten on ``stream_of(key)``; notes how many gathers had run
    and, given the tickets, whether the value's chunk had been copied when the write landed."""
    for key, arr in arrays.items():
        def step(host=arr.host, key=key):
            landed[key] = (gathers[0], copied(tickets[key]) if tickets else None)
            host[...] = np.zeros((), host.dtype) if host.dtype.kind != "f" else -1
        rt.launch(stream_of(key, arr), step)


@pytest.mark.parametrize("seed", SEEDS)
def test_the_call_copies_nothing_and_training_waits_for_the_copy(seed, monkeypatch, gathers):
    rt, spec, arrays, values = setup(seed)
    pool = CapturePool()
    queued, recording = queued_copies(rt, monkeypatch)
    captured = pool.capture(arrays)
    recording[0] = False
    assert queued == [] and gathers[0] == 0  # the call's time holds no copy: none was even queued
    assert captured.buffer is None and not captured.device_buffers and not captured.pinned  # no state-sized memory
    assert all(isinstance(v, ChunkedSnapshot) for v in captured.tensors.values())
    landed: dict[str, tuple] = {}
    overwrite_after(rt, arrays, lambda key, arr: rt.current_stream(arr.device), landed, gathers, captured.tickets)
    engine = gpu.GpuEngine(staging_bytes=3 * 1024, runtime=rt, slots=1 + seed % 3)
    plan, crcs, writer = save(rt, engine, captured.tensors)
    expect(plan, crcs, writer, values)  # the values of the call: no training write landed before its copy
    pool.release(captured)
    rt.drain()
    assert rt.pending() == 0 and set(landed) == set(arrays)  # then training ran
    assert all(was_copied for _, was_copied in landed.values())
    assert all((a.host == -1).all() if a.host.dtype.kind == "f" else (a.host == 0).all() for a in arrays.values())


@pytest.mark.parametrize("seed", SEEDS)
def test_a_value_fenced_by_its_own_ticket_waits_only_for_its_chunk(seed, gathers):
    landed = save_with_per_value_fences(seed, gathers)
    assert all(was_copied for _, was_copied in landed.values())


def save_with_per_value_fences(seed: int, gathers) -> dict[str, tuple]:
    """A chunked save whose caller waits on each value's own ticket; checks the bytes, returns ``landed``."""
    rt, spec, arrays, values = setup(seed)
    pool = CapturePool()
    captured = pool.capture(arrays, fence=False)
    streams = {}

    def own_stream(key, arr):  # the caller waits on each value's ticket right before overwriting it
        with rt.activate(arr.device):
            streams[key] = rt.stream()
            captured.tickets[key].wait_on(streams[key])
        return streams[key]

    landed: dict[str, tuple] = {}
    overwrite_after(rt, arrays, own_stream, landed, gathers, captured.tickets)
    engine = gpu.GpuEngine(staging_bytes=3 * 1024, runtime=rt)
    plan, crcs, writer = save(rt, engine, captured.tensors)
    expect(plan, crcs, writer, values)
    pool.release(captured)
    rt.drain()
    assert rt.pending() == 0 and set(landed) == set(arrays)
    return landed


def test_some_values_are_overwritten_before_later_chunks_are_copied(gathers):
    """Over the seeds, training overwrites early values while later chunks are still to be gathered."""
    early = 0
    for seed in range(30):
        gathers[0] = 0
        landed = save_with_per_value_fences(seed, gathers)
        early += int(min(n for n, _ in landed.values()) < gathers[0])
    assert early > 0


def test_without_the_fence_the_fake_tears_the_snapshot(gathers):
    """The double must expose a missing wait: with no fence at all, training overwrites values first."""
    torn = 0
    for seed in range(30):
        rt, spec, arrays, values = setup(seed)
        pool = CapturePool()
        captured = pool.capture(arrays, fence=False)  # and no ticket waits by the caller either
        overwrite_after(rt, arrays, lambda key, arr: rt.current_stream(arr.device), {}, gathers)
        plan, crcs, writer = save(rt, gpu.GpuEngine(staging_bytes=3 * 1024, runtime=rt), captured.tensors)
        pool.release(captured)
        try:
            expect(plan, crcs, writer, values)
        except AssertionError:
            torn += 1
    assert torn > 0


@pytest.mark.parametrize("seed", range(30))
def test_a_write_error_in_the_ring_lets_training_go_on_and_the_next_save_works(seed, gathers):
    rt, spec, arrays, values = setup(seed)
    pool = CapturePool()
    engine = gpu.GpuEngine(staging_bytes=3 * 1024, runtime=rt)
    captured = pool.capture(arrays)
    with pytest.raises(OSError, match="No space"):
        save(rt, engine, captured.tensors, Collecting(fail_first=True))
    pool.release(captured)
    rt.drain()
    assert rt.pending() == 0 and engine.pool.in_use == 0  # no producer left waiting on a flag
    captured = pool.capture(arrays)  # the board's flags are reused: the next generation
    overwrite_after(rt, arrays, lambda key, arr: rt.current_stream(arr.device), {}, gathers)
    plan, crcs, writer = save(rt, engine, captured.tensors)
    expect(plan, crcs, writer, values)
    pool.release(captured)
    rt.drain()
    assert rt.pending() == 0


def test_a_save_that_never_reached_the_ring_releases_its_producers_too(gathers):
    rt, spec, arrays, values = setup(3)
    pool = CapturePool()
    captured = pool.capture(arrays)
    overwrite_after(rt, arrays, lambda key, arr: rt.current_stream(arr.device), landed := {}, gathers)
    rt.drain()
    assert not landed  # held: nothing has copied the values yet
    pool.release(captured)  # the save failed before its engine ran
    rt.drain()
    assert set(landed) == set(arrays) and rt.pending() == 0


def test_devices_without_flag_waits_snapshot_into_pinned_memory():
    rt = FakeRuntime(0, free_bytes=SPARE_BYTES, value_waits=False)
    captured = CapturePool().capture({"x": rt.array(np.ones(8, np.float32))})
    assert captured.pinned and not captured.tickets
