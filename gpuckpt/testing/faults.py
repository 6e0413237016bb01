"""Storage fault injection: make the Nth open, write, fsync or rename fail with a chosen errno.

Every writer uses ``gpuckpt.storage.filesystem.DEFAULT_IO`` unless given one, so a test reaches
``Checkpoint.save``/``write`` and ``CheckpointManager.save`` by replacing it::

    monkeypatch.setattr(gpuckpt.storage.filesystem, "DEFAULT_IO", FaultyIO("fsync", 2, errno.EIO))
"""

from __future__ import annotations

import errno as errno_codes
import os

from ..storage.filesystem import PosixIO

OPS = ("open", "pwrite", "fsync", "replace")


class FaultyIO(PosixIO):
    """PosixIO that fails call number ``after`` (0-based) of ``op`` with ``OSError(err)``.

    ``op="any"`` counts every call; ``after=None`` never fails (the object only records).
    ``log`` lists every call as ``(op, file)``, so a test can tell where its fault landed;
    a directory fsync is logged as ``(fsync, "<directory>")``.
    """

    def __init__(self, op: str = "pwrite", after: int | None = 0, err: int = errno_codes.ENOSPC):
        if op not in (*OPS, "any"):
            raise ValueError(f"cannot inject faults into {op!r}")
        self.op, self.after, self.err = op, after, err
        self.calls = 0
        self.log: list[tuple[str, str]] = []
        self._paths: dict[int, str] = {}

    def _maybe_fail(self, op: str, target: str) -> None:
        self.log.append((op, target))
        if op == self.op or self.op == "any":
            self.calls += 1
            if self.after is not None and self.calls > self.after:
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
