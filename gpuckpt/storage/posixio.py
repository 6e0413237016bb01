"""The system calls a save makes, behind one seam: :class:`PosixIO`.

Every open, write, fsync, rename, unlink and mkdir of a save, its rollback and a manager's
retention goes through one ``PosixIO``, so a test can substitute one that records or fails
(``gpuckpt.testing.faults``). Which one a save uses is its ``StorageConfig.io``; a
``StorageConfig`` made without one takes the process's installed PosixIO (:func:`installed`),
which only :func:`install` (used by ``gpuckpt.testing``) replaces. This module imports nothing
from gpuckpt, so ``options`` can name it.
"""

from __future__ import annotations

import errno
import os

PWRITE_MAX = 1 << 30
IOV_MAX = 1024


class PosixIO:
    """The system calls storage makes; tests substitute a subclass that injects faults."""

    open = staticmethod(os.open)
    close = staticmethod(os.close)
    fsync = staticmethod(os.fsync)
    replace = staticmethod(os.replace)
    unlink = staticmethod(os.unlink)
    mkdir = staticmethod(os.mkdir)

    @staticmethod
    def pwrite(fd: int, data, offset: int) -> None:
        pwrite_all(fd, data, offset)

    def fsync_dir(self, directory: str) -> None:
        """Make the directory's entries (renames, new and deleted names) durable."""
        fd = os.open(directory or ".", os.O_RDONLY)
        try:
            self.fsync(fd)
        finally:
            os.close(fd)


_installed = PosixIO()


def installed() -> PosixIO:
    """The PosixIO a ``StorageConfig`` made without one uses."""
    return _installed


def install(io: PosixIO) -> PosixIO:
    """Make ``io`` the process's PosixIO for storage configured from now on; return the previous one.

    For fault injection and crash tests (``gpuckpt.testing.faults.injected``); a save already
    configured keeps the PosixIO it was configured with.
    """
    global _installed
    previous, _installed = _installed, io
    return previous


def advance(views: list[memoryview], n: int) -> list[memoryview]:
    """Drop the first ``n`` bytes from a list of byte views (after a short vectored I/O call)."""
    while n and views:
        if n >= views[0].nbytes:
            n -= views[0].nbytes
            views = views[1:]
        else:
            views = [views[0][n:], *views[1:]]
            n = 0
    return views


def pwrite_all(fd: int, data, offset: int) -> None:
    """Write every byte of ``data`` (a buffer, or a list of buffers written back to back) at ``offset``."""
    parts = data if isinstance(data, list) else [data]
    views = [memoryview(p).cast("B") for p in parts if memoryview(p).nbytes]
    while views:
        if len(views) > 1:
            n = os.pwritev(fd, views[:IOV_MAX], offset)
        else:
            n = os.pwrite(fd, views[0][:PWRITE_MAX], offset)
        if n == 0:
            raise OSError(errno.EIO, "write returned 0 bytes")
        views, offset = advance(views, n), offset + n
