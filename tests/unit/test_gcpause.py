"""``gcpause.paused``: the cycle collector is off inside, back as it was after (nested, threaded, errors),
and a restore leaves it as it found it."""

from __future__ import annotations

import gc
import threading

import numpy as np
import pytest

import gpuckpt
from gpuckpt import gcpause


@pytest.fixture(autouse=True)
def _collector_on():
    was = gc.isenabled()
    gc.enable()
    yield
    if not was:
        gc.disable()


def test_off_inside_on_after_even_when_nested_or_raising() -> None:
    with gcpause.paused():
        assert not gc.isenabled()
        with pytest.raises(ValueError), gcpause.paused():
            raise ValueError
        assert not gc.isenabled()  # the inner block ending does not turn it back on
    assert gc.isenabled()


def test_a_collector_the_program_turned_off_stays_off() -> None:
    gc.disable()
    with gcpause.paused():
        assert not gc.isenabled()
    assert not gc.isenabled()


def test_overlapping_pauses_on_two_threads_end_with_the_collector_on() -> None:
    inside, release = threading.Event(), threading.Event()

    def hold() -> None:
        with gcpause.paused():
            inside.set()
            release.wait(10)

    worker = threading.Thread(target=hold)
    worker.start()
    inside.wait(10)
    with gcpause.paused():
        pass
    assert not gc.isenabled()  # the other thread's pause still holds
    release.set()
    worker.join(10)
    assert gc.isenabled()


def test_a_restore_and_a_failed_one_leave_the_collector_on(tmp_path) -> None:
    prefix = gpuckpt.Checkpoint(v=gpuckpt.Variable(np.arange(4.0))).write(str(tmp_path / "c"))
    gpuckpt.Checkpoint(v=gpuckpt.Variable(np.zeros(4))).read(prefix)
    assert gc.isenabled()
    with pytest.raises(gpuckpt.CheckpointError):
        gpuckpt.Checkpoint(v=gpuckpt.Variable(np.zeros(5))).read(prefix)
    assert gc.isenabled()


def test_a_save_pauses_the_collector_on_the_callers_thread_only(tmp_path, monkeypatch) -> None:
    """A synchronous save runs paused; an asynchronous one only while capturing, its write with it on."""
    from gpuckpt import saver

    seen: list[tuple[str, bool]] = []
    real = saver.write_tensors

    def recording(*args, **kwargs):
        seen.append((threading.current_thread().name, gc.isenabled()))
        return real(*args, **kwargs)

    monkeypatch.setattr(saver, "write_tensors", recording)
    checkpoint = gpuckpt.Checkpoint(v=gpuckpt.Variable(np.arange(5.0)))
    checkpoint.write(str(tmp_path / "sync"))
    assert seen == [(threading.current_thread().name, False)] and gc.isenabled()
    seen.clear()
    checkpoint.write(str(tmp_path / "async"), options=gpuckpt.CheckpointOptions(enable_async=True))
    checkpoint.sync()
    assert len(seen) == 1 and seen[0][0] != threading.current_thread().name and seen[0][1]
    assert gc.isenabled()
