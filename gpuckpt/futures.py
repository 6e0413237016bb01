"""Asynchronous saves: each is *staged* (a consistent snapshot exists; variables may change)
and later *committed* (durable, and visible to ``latest_checkpoint``), or it fails.

:class:`SaveHandle` lets a caller wait for either signal. :class:`AsyncSaver` runs the
write-and-commit jobs of one Checkpoint in order on a background thread, which exists only
while there is work. A save first :meth:`~AsyncSaver.reserve`\\ s a place (waiting while
``limit`` saves are in flight, so host memory stays bounded), takes its snapshot, then
:meth:`~AsyncSaver.submit`\\ s the job. A background error is kept and raised once: by
``sync()``, by the next ``reserve()`` (the next save), or logged at interpreter exit, which
first waits for every save in flight.
"""

from __future__ import annotations

import atexit
import collections
import logging
import threading
import weakref
from collections.abc import Callable

log = logging.getLogger(__name__)


class SaveHandle:
    """One save: ``wait_staged()``, ``wait_committed()``, ``result()`` (its path, or its error)."""

    def __init__(self, path: str):
        self.path = path
        self._staged = threading.Event()
        self._committed = threading.Event()
        self._error: BaseException | None = None

    def wait_staged(self, timeout: float | None = None) -> bool:
        """Block until the snapshot is taken (variables may then change); False on timeout."""
        return self._staged.wait(timeout)

    def wait_committed(self, timeout: float | None = None) -> bool:
        """Block until the save has committed or failed; False on timeout. Never raises."""
        return self._committed.wait(timeout)

    def done(self) -> bool:
        """True once the save is committed or has failed."""
        return self._committed.is_set()

    def result(self, timeout: float | None = None) -> str:
        """Wait for the commit and return the path; raises the save's error, or TimeoutError."""
        if not self._committed.wait(timeout):
            raise TimeoutError(f"save of {self.path} not committed after {timeout} s")
        if self._error is not None:
            raise self._error
        return self.path

    def _set_staged(self) -> None:
        self._staged.set()

    def _finish(self, error: BaseException | None) -> None:
        self._error = error
        self._staged.set()
        self._committed.set()


class AsyncSaver:
    """Runs one Checkpoint's save jobs in order on a background thread, a bounded number at a time."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._jobs: collections.deque[tuple[SaveHandle, Callable[[], None]]] = collections.deque()
        self._pending: list[SaveHandle] = []
        self._reserved = 0
        self._running = False
        self._error: BaseException | None = None
        _LIVE.add(self)

    def reserve(self, limit: int) -> None:
        """Raise an earlier background error, else wait until fewer than ``limit`` saves are in flight."""
        if limit < 1:
            raise ValueError(f"the number of saves in flight must be at least 1, got {limit}")
        self.raise_pending_error()
        with self._cond:
            self._cond.wait_for(lambda: len(self._pending) + self._reserved < limit)
            self._reserved += 1

    def cancel(self) -> None:
        """Give back a reservation whose snapshot failed."""
        with self._cond:
            self._reserved -= 1
            self._cond.notify_all()

    def submit(self, handle: SaveHandle, job: Callable[[], None]) -> SaveHandle:
        """Queue ``job`` (write and commit) under a reservation; the thread starts if idle."""
        with self._cond:
            self._reserved -= 1
            self._pending.append(handle)
            self._jobs.append((handle, job))
            if not self._running:
                self._running = True
                threading.Thread(target=self._work, name="gpuckpt-async-save", daemon=True).start()
        return handle

    def _work(self) -> None:
        while True:
            with self._cond:
                if not self._jobs:
                    self._running = False
                    return
                handle, job = self._jobs.popleft()
            error = None
            try:
                job()
            except BaseException as exc:  # kept, raised once by sync()/reserve(), or logged at exit
                error = exc
            with self._cond:
                if error is not None and self._error is None:
                    self._error = error
            handle._finish(error)
            with self._cond:
                self._pending.remove(handle)
                self._cond.notify_all()

    def in_flight(self) -> int:
        """Saves submitted and not yet committed or failed."""
        with self._cond:
            return len(self._pending)

    def wait(self) -> None:
        """Wait until nothing is in flight; errors stay pending."""
        with self._cond:
            self._cond.wait_for(lambda: not self._pending)

    def sync(self) -> None:
        """Wait for every save in flight, then raise the first background error (once)."""
        self.wait()
        self.raise_pending_error()

    def raise_pending_error(self) -> None:
        with self._cond:
            error, self._error = self._error, None
        if error is not None:
            raise error


_LIVE: weakref.WeakSet[AsyncSaver] = weakref.WeakSet()


@atexit.register
def _commit_in_flight_at_exit() -> None:
    """The process waits for its in-flight saves; an error nobody collected is logged."""
    for saver in list(_LIVE):
        try:
            saver.sync()
        except BaseException as exc:
            log.error("gpuckpt: an asynchronous checkpoint save failed and was never reported: %s", exc)
