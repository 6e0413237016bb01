"""Storage fault injection: make the Nth open, write, fsync, rename, unlink or mkdir fail with a chosen errno.

A save uses the PosixIO of its ``StorageConfig``, which by default is the process's installed
one (``gpuckpt.storage.posixio``). :func:`injected` installs a PosixIO for a ``with`` block, so a
test reaches ``Checkpoint.save``/``write``, ``CheckpointManager.save``, its retention and a
sweep without passing anything down::

    with faults.injected(FaultyIO("fsync", 2, errno.EIO)):
        manager.save()

A child process that should run with one for its whole life calls :func:`install` instead.
"""

from __future__ import annotations

import contextlib
import errno as errno_codes
import os
from collections.abc import Iterator

from ..storage import posixio
from ..storage.posixio import PosixIO

OPS = ("open", "pwrite", "fsync", "replace", "unlink", "mkdir")


@contextlib.contextmanager
def injected(io: PosixIO) -> Iterator[PosixIO]:
    """Install ``io`` as the process's PosixIO for the block (saves configured inside it use it)."""
    previous = posixio.install(io)
    try:
        yield io
    finally:
        posixio.install(previous)


def install(io: PosixIO) -> PosixIO:
    """Install ``io`` as the process's PosixIO from now on; return the previous one."""
    return posixio.install(io)


class FaultyIO(PosixIO):
    """PosixIO that fails call number ``after`` (0-based) of ``op`` with ``OSError(err)``, and the
    ``times - 1`` calls of ``op`` after it (``times=None``: every later one, a fault that persists).

    ``op="any"`` counts every call; ``after=None`` never fails (the object only records).
    ``log`` lists every call as ``(op, file)``, so a test can tell where its fault landed;
    a directory fsync is logged as ``(fsync, "<directory>")``.
    """

    def __init__(self, op: str = "pwrite", after: int | None = 0, err: int = errno_codes.ENOSPC,
                 times: int | None = 1):
        if op not in (*OPS, "any"):
            raise ValueError(f"cannot inject faults into {op!r}")
        self.op, self.after, self.err, self.times = op, after, err, times
        self.calls = 0
        self.failed = 0
        self.log: list[tuple[str, str]] = []
        self._paths: dict[int, str] = {}

    def _maybe_fail(self, op: str, target: str) -> None:
        self.log.append((op, target))
        if op == self.op or self.op == "any":
            self.calls += 1
            if self.after is not None and self.calls > self.after and (self.times is None or self.failed < self.times):
                self.failed += 1
                self.fail(op, target)

    def fail(self, op: str, target: str) -> None:
        """What happens at the chosen call; subclasses may do something harsher than raising."""
        raise OSError(self.err, f"{os.strerror(self.err)} (injected into {op} of {target})")

    def open(self, path, *args, **kwargs):  # type: ignore[override]
        self._maybe_fail("open", os.fspath(path))
        fd = os.open(path, *args, **kwargs)
        self._paths[fd] = os.fspath(path)
        return fd

    def close(self, fd: int) -> None:  # type: ignore[override]
        self._paths.pop(fd, None)
        os.close(fd)

    def pwrite(self, fd: int, data, offset: int) -> None:  # type: ignore[override]
        self._maybe_fail("pwrite", self._paths.get(fd, "<unknown>"))
        super().pwrite(fd, data, offset)

    def fsync(self, fd: int) -> None:  # type: ignore[override]
        self._maybe_fail("fsync", self._paths.get(fd, "<directory>"))
        os.fsync(fd)

    def replace(self, src, dst) -> None:  # type: ignore[override]
        self._maybe_fail("replace", os.fspath(dst))
        os.replace(src, dst)

    def unlink(self, path) -> None:  # type: ignore[override]
        self._maybe_fail("unlink", os.fspath(path))
        os.unlink(path)

    def mkdir(self, path, mode: int = 0o777) -> None:  # type: ignore[override]
        self._maybe_fail("mkdir", os.fspath(path))
        os.mkdir(path, mode)
