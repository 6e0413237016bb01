"""The background deleter of an overwrite's replaced files: after the commit, off its path, and never
racing a sweep; a failure abandons the token for a sweep, and a normal exit leaves nothing behind."""

from __future__ import annotations

import errno
import logging
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

import gpuckpt
from gpuckpt.storage import commit, recovery
from gpuckpt.testing.faults import FaultyIO

from .test_commit import NEW, OLD, read, write


class HeldUnlinks(FaultyIO):
    """Records every call; each unlink of an aside file waits until ``release`` is set."""

    def __init__(self) -> None:
        super().__init__("any", None)
        self.release = threading.Event()
        self.waiting = threading.Event()

    def _maybe_fail(self, op: str, target: str) -> None:
        super()._maybe_fail(op, target)
        if op == "unlink" and ".old-" in target:
            self.waiting.set()
            assert self.release.wait(30), "the test never released the deleter"


def aside(directory: Path) -> list[str]:
    return sorted(n for n in os.listdir(directory) if ".old-" in n)


@pytest.fixture
def held(tmp_path: Path):
    """An overwrite of ``tmp_path/ck`` that returned while its replaced files' deletion is held."""
    write(tmp_path / "ck", OLD)
    io = HeldUnlinks()
    write(tmp_path / "ck", NEW, io)
    try:
        yield io
    finally:
        io.release.set()
        assert commit.settle(30)


def test_write_returns_before_the_replaced_files_are_deleted_and_settle_waits_for_them(tmp_path: Path,
                                                                                    held: HeldUnlinks) -> None:
    assert len(aside(tmp_path)) == 3 and read(tmp_path / "ck") == NEW  # committed, old files still aside
    assert not commit.settle(0.05)
    held.release.set()
    assert commit.settle(30)
    assert aside(tmp_path) == [] and read(tmp_path / "ck") == NEW
    unlinked = [os.path.basename(t) for op, t in held.log if op == "unlink"]
    assert len(unlinked) == 3 and ".index.old-" in unlinked[0]  # in the order moved aside: index first


def test_a_sweep_while_deletions_are_pending_waits_and_touches_nothing(tmp_path: Path, held: HeldUnlinks) -> None:
    assert held.waiting.wait(30)
    assert all(item.alive for item in recovery.leftovers(str(tmp_path)))  # a live writer's: no sweep's to touch
    swept: list[list[str]] = []
    sweep = threading.Thread(target=lambda: swept.append(recovery.clean_leftovers(tmp_path, "ck")))
    sweep.start()
    sweep.join(0.2)
    assert sweep.is_alive() and len(aside(tmp_path)) == 3  # waiting for the deleter, not racing it
    held.release.set()
    sweep.join(30)
    assert swept == [[]] and aside(tmp_path) == [] and read(tmp_path / "ck") == NEW


def test_an_overwrite_of_the_same_prefix_waits_for_the_earlier_deletion(tmp_path: Path, held: HeldUnlinks) -> None:
    assert held.waiting.wait(30)
    first = {commit.token_of(n) for n in aside(tmp_path)}
    again = threading.Thread(target=write, args=(tmp_path / "ck", OLD))
    again.start()
    again.join(0.2)
    assert again.is_alive() and {commit.token_of(n) for n in aside(tmp_path)} == first  # nothing of its own aside
    held.release.set()
    again.join(30)
    assert commit.settle(30)
    assert aside(tmp_path) == [] and read(tmp_path / "ck") == OLD


def test_a_deletion_that_fails_is_logged_and_left_to_a_sweep(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write(tmp_path / "ck", OLD)
    io = FaultyIO("unlink", 0, errno.EIO)  # the first unlink of the overwrite: the old index, aside
    with caplog.at_level(logging.WARNING, logger="gpuckpt.storage.commit"):
        write(tmp_path / "ck", NEW, io)
        assert commit.settle(30)
    assert "could not delete the files it replaced" in caplog.text and "not removed" in caplog.text
    left = aside(tmp_path)
    assert len(left) == 1 and ".index.old-" in left[0] and io.failed == 1
    token = commit.token_of(left[0])
    assert token is not None and commit.abandoned(token)
    assert recovery.clean_leftovers(tmp_path) == [str(tmp_path / left[0])]  # the new index is there: deleted
    assert aside(tmp_path) == [] and read(tmp_path / "ck") == NEW


def test_a_process_that_exits_right_after_an_overwrite_leaves_no_replaced_files(tmp_path: Path) -> None:
    child = textwrap.dedent(f"""
        import os, sys, time
        sys.path.insert(0, {os.path.dirname(os.path.dirname(os.path.dirname(__file__)))!r})
        from gpuckpt.storage import commit
        from gpuckpt.testing.faults import FaultyIO
        from tests.storage.test_commit import NEW, OLD, write

        class SlowUnlinks(FaultyIO):
            def unlink(self, path):
                time.sleep(0.2)
                super().unlink(path)

        write({str(tmp_path / "ck")!r}, OLD)
        write({str(tmp_path / "ck")!r}, NEW, SlowUnlinks("any", None))
        print("pending", not commit.settle(0))
    """)
    done = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["pending", "True"]  # the deletion was still queued when the script ended
    assert aside(tmp_path) == [] and read(tmp_path / "ck") == NEW


def test_checkpoint_sync_waits_for_the_deletions(tmp_path: Path, held: HeldUnlinks) -> None:
    waiter = threading.Thread(target=gpuckpt.Checkpoint().sync)
    waiter.start()
    waiter.join(0.2)
    assert waiter.is_alive() and len(aside(tmp_path)) == 3
    held.release.set()
    waiter.join(30)
    assert not waiter.is_alive() and aside(tmp_path) == []
