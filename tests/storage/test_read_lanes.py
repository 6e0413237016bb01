"""The reader threads' lanes (``storage.reader.run_in_lanes``): each thread reads its own contiguous part of
the file front to back, takes jobs from the back of another lane once its own is done, and every job has
finished before the call returns or raises; data files are opened with the advice that they are read in order."""

from __future__ import annotations

import errno
import os
import threading

import numpy as np
import pytest

import gpuckpt
from gpuckpt.storage import reader
from gpuckpt.storage.reader import _lanes, run_in_lanes


def test_lanes_are_contiguous_in_file_order_and_balanced_by_bytes() -> None:
    order = [3, 0, 2, 1, 4]  # job indices sorted by position
    sizes = [10, 10, 10, 10, 10]
    lanes = _lanes(order, sizes, 2)
    assert [list(lane) for lane in lanes] == [[3, 0, 2], [1, 4]]
    assert [list(lane) for lane in _lanes([0, 1, 2], [100, 1, 1], 2)] == [[0], [1, 2]]
    assert [list(lane) for lane in _lanes([0, 1], [0, 0], 2)] == [[0, 1], []]  # nothing to read: one lane


def test_outcomes_come_back_in_job_order_each_job_once() -> None:
    ran: list[int] = []
    lock = threading.Lock()

    def job(i: int) -> int:
        with lock:
            ran.append(i)
        return i * i

    starts = [(0, 100 - i) for i in range(40)]  # positions in reverse of job order
    assert run_in_lanes([(job, i) for i in range(40)], starts, [1] * 40) == [i * i for i in range(40)]
    assert sorted(ran) == list(range(40))
    assert run_in_lanes([], [], []) == [] and run_in_lanes([(job, 7)], [(0, 0)], [5]) == [49]


def test_a_thread_done_with_its_lane_takes_jobs_from_the_back_of_the_other(monkeypatch) -> None:
    monkeypatch.setattr(reader, "READ_THREADS", 2)
    done = {name: threading.Event() for name in "abc"}
    threads: dict[str, int] = {}

    def blocker(_: str) -> bool:
        threads["blocker"] = threading.get_ident()
        return all(event.wait(10) for event in done.values())  # a, b, c queue behind it in its own lane

    def quick(name: str) -> bool:
        threads[name] = threading.get_ident()
        if name in done:
            done[name].set()
        return True

    jobs = [(blocker, "blocker"), (quick, "a"), (quick, "b"), (quick, "c"), (quick, "d")]
    outcomes = run_in_lanes(jobs, [(0, i) for i in range(5)], [1, 1, 1, 1, 4])  # lanes [blocker a b c], [d]
    assert outcomes == [True] * 5  # the blocker saw a, b and c finish: another thread took them
    assert {threads[n] for n in "abc"} == {threads["d"]} != {threads["blocker"]}


def test_an_error_is_raised_only_once_every_job_has_finished(monkeypatch) -> None:
    monkeypatch.setattr(reader, "READ_THREADS", 2)
    finished = threading.Event()
    started = threading.Event()

    def slow(_: object) -> None:
        started.set()
        finished.wait(0.5)
        finished.set()

    def failing(_: object) -> None:
        started.wait(10)
        raise MemoryError("no memory for this job")

    with pytest.raises(MemoryError, match="no memory"):
        run_in_lanes([(slow, None), (failing, None)], [(0, 0), (0, 1)], [1, 1])
    assert finished.is_set()  # the other lane's job had ended before the error came back


needs_fadvise = pytest.mark.skipif(not hasattr(os, "posix_fadvise"), reason="no posix_fadvise on this platform")


def _saved(tmp_path) -> str:
    return gpuckpt.Checkpoint(v=gpuckpt.Variable(np.arange(6, dtype=np.float32))).write(str(tmp_path / "c"))


@needs_fadvise
def test_data_files_are_advised_to_be_read_front_to_back(tmp_path, monkeypatch) -> None:
    path = _saved(tmp_path)
    advised: list[int] = []
    real = os.posix_fadvise

    def recording(fd: int, offset: int, length: int, advice: int) -> None:
        advised.append(advice)
        real(fd, offset, length, advice)

    monkeypatch.setattr(os, "posix_fadvise", recording)
    live = gpuckpt.Checkpoint(v=gpuckpt.Variable(np.zeros(6, np.float32)))
    live.read(path)
    assert advised == [os.POSIX_FADV_SEQUENTIAL] and np.array_equal(live.v.numpy(), np.arange(6))


@needs_fadvise
def test_advice_the_file_system_refuses_changes_nothing(tmp_path, monkeypatch) -> None:
    path = _saved(tmp_path)

    def refusing(*args: object) -> None:
        raise OSError(errno.EINVAL, "not supported here")

    monkeypatch.setattr(os, "posix_fadvise", refusing)
    live = gpuckpt.Checkpoint(v=gpuckpt.Variable(np.zeros(6, np.float32)))
    live.read(path).assert_consumed()
    assert np.array_equal(live.v.numpy(), np.arange(6))
