"""WriterThread, the seam both engines hand staged bytes to: order, the first error, and every
piece's release exactly once (written or not)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from gpuckpt.engine import writer as writer_module
from gpuckpt.engine.staging import StagingPool
from gpuckpt.engine.writer import WriterThread
from gpuckpt.errors import DeadlineExceededError


class RecordingWriter:
    """A StorageWriter's ``write``: records each call; ``fail_at`` (a call number) raises OSError there."""

    def __init__(self, fail_at: int | None = None):
        self.calls: list[tuple[int, int, bytes, str]] = []
        self.fail_at = fail_at

    def write(self, shard: int, offset: int, data) -> None:
        if len(self.calls) == self.fail_at:
            self.calls.append((shard, offset, b"", "failed"))
            raise OSError(5, "disk says no")
        self.calls.append((shard, offset, bytes(data), threading.current_thread().name))


def test_writes_run_in_queue_order_on_the_writer_thread_and_each_piece_is_released_once() -> None:
    target = RecordingWriter()
    out = WriterThread(target)
    released: list[int] = []
    for i in range(20):  # more than the queue holds: put waits for room, never drops
        out.put(i % 3, 10 * i, bytes([i]) * 3, lambda i=i: released.append(i))
    out.close()
    assert [(s, o, d) for s, o, d, _ in target.calls] == [(i % 3, 10 * i, bytes([i]) * 3) for i in range(20)]
    assert {name for *_, name in target.calls} == {"gpuckpt-writer"}
    assert released == list(range(20))
    assert out.error is None


def test_jobs_and_writes_share_one_order() -> None:
    target = RecordingWriter()
    out = WriterThread(target)
    seen: list[str] = []
    out.put(0, 0, b"a", lambda: seen.append("write a"))
    out.put_job(lambda: (seen.append("job"), out.write(0, 1, b"b")), lambda: seen.append("job done"))
    out.put(0, 2, b"c", lambda: seen.append("write c"))
    out.close()
    assert seen == ["write a", "job", "job done", "write c"]
    assert [d for _, _, d, _ in target.calls] == [b"a", b"b", b"c"]


def test_the_first_error_stops_later_writes_releases_everything_and_is_raised_by_close() -> None:
    pool = StagingPool(4096)
    target = RecordingWriter(fail_at=1)
    out = WriterThread(target)
    leases = [pool.lease(256) for _ in range(6)]
    for i, lease in enumerate(leases):
        lease.view[:] = i
        out.put(0, 256 * i, lease.view, lambda lease=lease: pool.release(lease))
    with pytest.raises(OSError, match="disk says no"):
        out.close()
    assert [o for _, o, _, _ in target.calls] == [0, 256]  # nothing after the failed write was written
    assert isinstance(out.error, OSError)
    assert pool.in_use == 0  # every lease came back, the unwritten ones too


def test_after_an_error_put_releases_at_once_and_raises_nothing() -> None:
    target = RecordingWriter(fail_at=0)
    out = WriterThread(target)
    failed = threading.Event()
    out.put(0, 0, b"x", failed.set)
    assert failed.wait(10)
    released: list[str] = []
    out.put(0, 1, b"y", lambda: released.append("y"))
    out.put_job(lambda: released.append("job ran"), lambda: released.append("job released"))
    assert released == ["y", "job released"]  # run by the caller's thread, before put returned
    with pytest.raises(OSError):
        out.close()
    assert len(target.calls) == 1


def test_an_error_in_a_release_is_raised_by_close() -> None:
    out = WriterThread(RecordingWriter())

    def bad_release() -> None:
        raise ValueError("release failed")

    out.put(0, 0, b"a", bad_release)
    with pytest.raises(ValueError, match="release failed"):
        out.close()


def test_a_writer_that_stops_taking_work_is_a_deadline_not_a_hang(monkeypatch) -> None:
    monkeypatch.setattr(writer_module, "QUEUE_DEPTH", 1)
    gate = threading.Event()
    started = threading.Event()

    class StuckWriter:
        def write(self, shard: int, offset: int, data) -> None:
            started.set()
            gate.wait(30)

    out = WriterThread(StuckWriter(), timeout=0.01)
    try:
        out.put(0, 0, np.zeros(1, np.uint8))
        assert started.wait(10)  # the thread holds the first write; the queue of one takes the next
        out.put(0, 1, b"q")
        with pytest.raises(DeadlineExceededError, match="took no new write"):
            out.put(0, 2, b"r")
        with pytest.raises(DeadlineExceededError):
            out.close()
    finally:
        gate.set()
        out._queue.put(None, timeout=10)  # the close that timed out never queued its end marker
        out._thread.join(10)
