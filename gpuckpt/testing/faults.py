"""Storage fault injection: make the Nth write, fsync or rename fail with a chosen errno."""

from __future__ import annotations

import errno as errno_codes
import os

from ..storage.filesystem import PosixIO


class FaultyIO(PosixIO):
    """PosixIO that raises ``OSError(err)`` on call number ``after`` (0-based) of ``op``."""

    def __init__(self, op: str = "pwrite", after: int = 0, err: int = errno_codes.ENOSPC):
        if op not in ("open", "pwrite", "fsync", "replace"):
            raise ValueError(f"cannot inject faults into {op!r}")
        self.op, self.after, self.err = op, after, err
        self.calls = 0

    def _maybe_fail(self, op: str) -> None:
        if op == self.op:
            self.calls += 1
            if self.calls > self.after:
                raise OSError(self.err, os.strerror(self.err))

    def open(self, *args, **kwargs):  # type: ignore[override]
        self._maybe_fail("open")
        return os.open(*args, **kwargs)

    def pwrite(self, fd: int, data, offset: int) -> None:  # type: ignore[override]
        self._maybe_fail("pwrite")
        super().pwrite(fd, data, offset)

    def fsync(self, fd: int) -> None:  # type: ignore[override]
        self._maybe_fail("fsync")
        os.fsync(fd)

    def replace(self, src, dst) -> None:  # type: ignore[override]
        self._maybe_fail("replace")
        os.replace(src, dst)
