"""Failure paths of the GPU engine on the simulator: a write error releases all staging, the next
save works, and no wait is unbounded (the old engine hung here: evidence/writer_error_lease_leak.py)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from gpuckpt.arrays import as_tensor
from gpuckpt.engine.writer import WriterThread
from gpuckpt.errors import DeadlineExceededError
from gpuckpt.plan import TensorSpec, build_save_plan

cuda = pytest.importorskip("numba.cuda")
pack = pytest.importorskip("gpuckpt.kernels.pack")


@pytest.fixture(autouse=True)
def quick_kernels(monkeypatch):
    monkeypatch.setattr(pack, "CHUNK_BYTES", 4096)
    monkeypatch.setattr(pack, "MAX_BLOCKS", 8)


class FailingOnce:
    """Storage whose first write fails as a full disk does."""

    def __init__(self) -> None:
        self.calls = 0

    def write(self, shard, offset, data) -> None:
        self.calls += 1
        if self.calls == 1:
            raise OSError(28, "No space left on device")


class Collecting:
    def __init__(self) -> None:
        self.shards: dict[int, bytearray] = {}

    def write(self, shard, offset, data) -> None:
        buf = self.shards.setdefault(shard, bytearray())
        raw = b"".join(bytes(np.asarray(d)) for d in data) if isinstance(data, list) else bytes(np.asarray(data))
        if len(buf) < offset + len(raw):
            buf.extend(b"\0" * (offset + len(raw) - len(buf)))
        buf[offset : offset + len(raw)] = raw


def planned(arrays):
    tensors = [as_tensor(a, f"t{i}") for i, a in enumerate(arrays)]
    specs = [TensorSpec(f"t{i}", t.dtype, t.shape, t.nbytes) for i, t in enumerate(tensors)]
    return build_save_plan(specs), tensors


def run_bounded(fn, seconds: float = 60.0):
    """fn() on a thread; fails the test (instead of hanging it) if it does not finish."""
    out: list = []
    thread = threading.Thread(target=lambda: out.append(fn()), daemon=True)
    thread.start()
    thread.join(seconds)
    assert out, "the call did not finish: a staging lease was leaked"
    return out[0]


def test_write_error_then_a_successful_save():
    from gpuckpt.engine.gpu import GpuEngine

    engine = GpuEngine(staging_bytes=64 << 10)  # 16 x 4 KiB: several batches, so several leases in flight
    host = [np.full(4096, i, np.uint8) for i in range(16)]
    plan, tensors = planned([cuda.to_device(h) for h in host])
    with pytest.raises(OSError, match="No space left"):
        engine.write(plan, tensors, FailingOnce())
    assert engine.pool.in_use == 0
    sink = Collecting()
    run_bounded(lambda: engine.write(plan, tensors, sink))
    assert bytes(sink.shards[0]) == b"".join(h.tobytes() for h in host)
    assert engine.pool.in_use == 0
    engine.close()


def test_writer_put_after_an_error_releases_the_piece_and_close_raises():
    released = []
    out = WriterThread(FailingOnce())
    out.put(0, 0, np.zeros(4, np.uint8), lambda: released.append(1))
    out.put(0, 4, np.zeros(4, np.uint8), lambda: released.append(2))  # may be queued or refused: released
    with pytest.raises(OSError):
        out.close()
    out2_released = sorted(released)
    assert out2_released == [1, 2]


def test_a_stuck_write_is_a_deadline_error_not_a_hang():
    gate = threading.Event()

    class Stuck:
        def write(self, *a):
            gate.wait(10)

    out = WriterThread(Stuck(), timeout=0.2)
    out.put(0, 0, np.zeros(1, np.uint8))
    with pytest.raises(DeadlineExceededError):
        out.close()
    gate.set()


def test_a_staging_lease_that_never_comes_is_a_deadline_error():
    from gpuckpt.engine.staging import StagingPool

    pool = StagingPool(4096)
    pool.lease(2048)
    pool.lease(2048)
    with pytest.raises(DeadlineExceededError, match="staging pool"):
        pool.lease(2048, timeout=0.05)
