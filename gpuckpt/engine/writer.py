"""The writer thread both engines hand staged bytes to: positional writes, first error kept."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

QUEUE_DEPTH = 4


class WriterThread:
    """Drains ``(shard, offset, data, done)`` jobs into ``writer.write``; ``done()`` runs after each write
    (engines release staging there). The first error stops further writes and is raised by
    ``put`` or ``close``."""

    def __init__(self, writer):
        self._writer = writer
        self._queue: queue.Queue = queue.Queue(QUEUE_DEPTH)
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="gpuckpt-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (job := self._queue.get()) is not None:
            shard, offset, data, done = job
            try:
                if self.error is None:
                    self._writer.write(shard, offset, data)
            except BaseException as exc:  # surfaced by put() or close()
                self.error = exc
            finally:
                if done is not None:
                    done()

    def put(self, shard: int, offset: int, data, done: Callable[[], None] | None = None) -> None:
        if self.error is not None:
            if done is not None:
                done()
            raise self.error
        self._queue.put((shard, offset, data, done))

    def close(self) -> None:
        """Wait for every queued write; raise the first error."""
        self._queue.put(None)
        self._thread.join()
        if self.error is not None:
            raise self.error
