"""The writer thread both engines hand staged bytes to: positional writes, first error kept."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

from ..errors import DeadlineExceededError

QUEUE_DEPTH = 4
WAIT_TIMEOUT_S = 600.0  # no single write, and no wait for the queue, takes longer on a working disk


class WriterThread:
    """Drains ``(shard, offset, data, done)`` jobs into ``writer.write``; ``done()`` runs after each job,
    written or not (engines release staging there), so every piece handed over is released exactly once.

    The first error stops further writes; ``put`` never raises for it (the piece is released at once,
    and the caller may stop early by checking :attr:`error`): ``close`` raises it after every queued
    job has released what it holds.
    """

    def __init__(self, writer, timeout: float = WAIT_TIMEOUT_S):
        self._writer = writer
        self._timeout = timeout
        self._queue: queue.Queue = queue.Queue(QUEUE_DEPTH)
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="gpuckpt-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            work, done = item
            try:
                if self.error is None:
                    work()
            except BaseException as exc:  # surfaced by close()
                if self.error is None:
                    self.error = exc
            finally:
                if done is not None:
                    try:
                        done()
                    except BaseException as exc:
                        if self.error is None:
                            self.error = exc

    def write(self, shard: int, offset: int, data) -> None:
        """A write on this thread (for jobs put with ``put_job``)."""
        self._writer.write(shard, offset, data)

    def put(self, shard: int, offset: int, data, done: Callable[[], None] | None = None) -> None:
        """Queue a write; after an error the piece is not written and ``done`` runs now."""
        if self.error is not None:
            if done is not None:
                done()
            return
        self._enqueue((lambda: self._writer.write(shard, offset, data), done))

    def put_job(self, job: Callable[[], None], done: Callable[[], None] | None = None) -> None:
        """Queue ``job()`` to run on the writer thread (skipped after an error); ``done`` runs after it."""
        if self.error is not None:
            if done is not None:
                done()
            return
        self._enqueue((job, done))

    def _enqueue(self, item) -> None:
        try:
            self._queue.put(item, timeout=self._timeout)
        except queue.Full:
            raise DeadlineExceededError(f"the writer thread took no new write for {self._timeout} s") from None

    def close(self) -> None:
        """Wait for every queued job (each releases what it holds); raise the first error."""
        self._enqueue(None)
        self._thread.join(self._timeout)
        if self._thread.is_alive():
            raise DeadlineExceededError(f"queued writes did not finish within {self._timeout} s")
        if self.error is not None:
            raise self.error
