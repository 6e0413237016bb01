"""AsyncSaver and SaveHandle, the seam of asynchronous saves: a bounded number in flight, jobs in
order on one background thread, and a background error raised once, at the next sync or save."""

from __future__ import annotations

import threading

import pytest

from gpuckpt.futures import AsyncSaver, SaveHandle
from tests.unit.signals import SignallingCondition


def start(saver: AsyncSaver, path: str, job, limit: int = 1) -> SaveHandle:
    saver.reserve(limit)
    handle = SaveHandle(path)
    handle._set_staged()
    return saver.submit(handle, job)


def test_jobs_run_in_submission_order_on_one_background_thread() -> None:
    saver = AsyncSaver()
    ran: list[tuple[int, str]] = []
    handles = [start(saver, f"p{i}", lambda i=i: ran.append((i, threading.current_thread().name)), limit=10)
               for i in range(5)]
    saver.sync()
    assert [i for i, _ in ran] == list(range(5))
    assert {name for _, name in ran} == {"gpuckpt-async-save"}
    assert all(h.done() and h.result(0) == h.path for h in handles)
    assert saver.in_flight() == 0


def test_with_a_limit_of_one_the_next_save_waits_for_the_one_in_flight() -> None:
    saver = AsyncSaver()
    saver._cond = cond = SignallingCondition()  # to know, without sleeping, that reserve waits
    gate = threading.Event()
    first = start(saver, "first", lambda: gate.wait(30))
    assert saver.in_flight() == 1 and not first.done()
    reserved = threading.Event()

    def second_save() -> None:
        saver.reserve(1)
        reserved.set()

    waiter = threading.Thread(target=second_save)
    waiter.start()
    assert cond.waiting.wait(10), "reserve did not wait for the save in flight"
    assert not reserved.is_set()
    gate.set()
    assert reserved.wait(10) and first.wait_committed(10) and first.result(0) == "first"
    waiter.join(10)
    saver.cancel()  # the second reservation, never submitted
    assert saver.in_flight() == 0


def test_a_cancelled_reservation_frees_its_place() -> None:
    saver = AsyncSaver()
    saver.reserve(1)
    saver.cancel()
    saver.reserve(1)  # would wait forever if the first place were still taken
    saver.cancel()


def test_a_background_error_surfaces_at_sync_once_and_on_its_handle() -> None:
    saver = AsyncSaver()

    def failing() -> None:
        raise OSError(28, "no space left")

    handle = start(saver, "p", failing)
    assert handle.wait_committed(10) and handle.wait_staged(0)  # a failure ends both waits
    with pytest.raises(OSError, match="no space left"):
        handle.result(0)
    with pytest.raises(OSError, match="no space left"):
        saver.sync()
    saver.sync()  # raised once, not again


def test_a_background_error_is_raised_by_the_next_reserve_and_later_jobs_still_run() -> None:
    saver = AsyncSaver()
    gate = threading.Event()
    ran: list[str] = []

    def failing() -> None:
        gate.wait(30)
        raise ValueError("write failed")

    first = start(saver, "a", failing, limit=2)
    second = start(saver, "b", lambda: ran.append("b"), limit=2)
    gate.set()
    saver.wait()  # waits, and keeps the error for the next caller
    assert ran == ["b"] and second.result(0) == "b"
    with pytest.raises(ValueError, match="write failed"):
        first.result(0)
    with pytest.raises(ValueError, match="write failed"):
        saver.reserve(1)
    saver.reserve(1)  # the error was reported; the next save may go ahead
    saver.cancel()


def test_result_times_out_while_the_save_is_in_flight() -> None:
    saver = AsyncSaver()
    gate = threading.Event()
    handle = start(saver, "slow", lambda: gate.wait(30))
    try:
        assert not handle.wait_committed(0) and not handle.done()
        with pytest.raises(TimeoutError, match="not committed"):
            handle.result(0)
    finally:
        gate.set()
    saver.sync()


def test_a_limit_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        AsyncSaver().reserve(0)
