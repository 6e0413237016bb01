"""The GPU engine's staging pool: one buffer allocated once, leased in FIFO order, never grown.

The GPU engine allocates it as pinned host memory (registered once, at its exact size);
``host_allocator``, page-aligned host memory, is the default elsewhere. A save leases one region
per staging-ring slot and gives them back when the save ends; a restore leases each batch while
its file bytes pass to the device. A lease larger than what is free waits for releases, so
memory stays bounded however large the checkpoint; a lease larger than ``max_lease`` is an error
the engine avoids by cutting tensors into pieces of at most that size.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..arrays import aligned_empty
from ..errors import DeadlineExceededError

DEFAULT_BYTES = 256 << 20
_ALIGN = 256
LEASE_TIMEOUT_S = 600.0  # staging is released by writes and copies that finish; waiting longer means a leak


def host_allocator(nbytes: int) -> np.ndarray:
    """Plain page-aligned host memory (the default allocator; the GPU engine passes a pinned one)."""
    return aligned_empty((nbytes,), np.uint8)


@dataclass(frozen=True)
class Lease:
    """A region ``[start, start + nbytes)`` of the pool; ``view`` is a uint8 array over it."""

    start: int
    nbytes: int
    view: np.ndarray


class StagingPool:
    """Fixed-size ring of staging memory; ``lease`` blocks until FIFO releases make room."""

    def __init__(self, nbytes: int = DEFAULT_BYTES, allocator: Callable[[int], np.ndarray] = host_allocator):
        if nbytes < 2 * _ALIGN:
            raise ValueError(f"staging pool of {nbytes} bytes is too small")
        self.capacity = nbytes
        self._buffer: np.ndarray | None = allocator(nbytes)
        self._live: deque[list] = deque()  # [start, end, released] in lease order
        self._head = 0  # next free byte
        self._cond = threading.Condition()

    @property
    def max_lease(self) -> int:
        """The largest single lease that can always be satisfied once earlier leases are released."""
        return self.capacity // 2 // _ALIGN * _ALIGN

    @property
    def in_use(self) -> int:
        with self._cond:
            return self._used()

    def _used(self) -> int:
        return sum(end - start for start, end, _ in self._live)

    def lease(self, nbytes: int, timeout: float | None = LEASE_TIMEOUT_S) -> Lease:
        """Reserve ``nbytes`` (waiting for releases if needed); DeadlineExceededError (a TimeoutError)
        after ``timeout`` seconds (None: no limit)."""
        if nbytes > self.max_lease:
            raise ValueError(f"lease of {nbytes} bytes exceeds the pool's max_lease {self.max_lease}")
        size = max(_ALIGN, -(-nbytes // _ALIGN) * _ALIGN)
        with self._cond:
            if self._buffer is None:
                raise RuntimeError("staging pool is closed")
            while (start := self._fit(size)) is None:
                if not self._cond.wait(timeout):
                    raise DeadlineExceededError(f"no {nbytes} bytes free in the staging pool after {timeout} s "
                                                f"({self.capacity - self._used()} of {self.capacity} free)")
            self._live.append([start, start + size, False])
            self._head = start + size
            return Lease(start, nbytes, self._buffer[start : start + nbytes])

    def _fit(self, size: int) -> int | None:
        if not self._live:
            return 0
        tail = self._live[0][0]
        if self._head > tail:  # used region [tail, head): free at the end, then at the start
            if self._head + size <= self.capacity:
                return self._head
            return 0 if size <= tail else None  # wrap to the start
        return self._head if self._head + size <= tail else None  # wrapped: free is [head, tail)

    def release(self, lease: Lease) -> None:
        """Give a region back; space is reclaimed in lease order."""
        with self._cond:
            for rec in self._live:
                if rec[0] == lease.start and not rec[2]:
                    rec[2] = True
                    break
            else:
                raise ValueError(f"lease at {lease.start} is not live")
            while self._live and self._live[0][2]:
                self._live.popleft()
            if not self._live:
                self._head = 0
            self._cond.notify_all()

    def close(self) -> None:
        """Drop the buffer (unpinning it on a GPU); later leases fail."""
        with self._cond:
            self._buffer = None
            self._live.clear()
            self._cond.notify_all()
