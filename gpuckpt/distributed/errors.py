"""The error every rank raises when a distributed save or restore cannot complete."""

from __future__ import annotations

import os
from collections.abc import Iterable

from ..errors import CheckpointError


class DistributedError(CheckpointError):
    """A distributed save or restore failed on some rank, or a rank stopped answering in time.

    ``ranks`` names the ranks at fault (failed, or silent past the deadline); every rank of the
    group raises it, so no rank is left waiting. Nothing was committed or assigned (except by a
    restore that raises :class:`PartialDistributedRestoreError`, which says what it assigned).
    """

    def __init__(self, message: str, *, ranks: Iterable[int] = (), path: str | os.PathLike | None = None,
                 key: str | None = None):
        super().__init__(message, path=path, key=key)
        self.ranks = tuple(ranks)


class PartialDistributedRestoreError(DistributedError):
    """A distributed restore failed on some rank after every rank had verified its values, while they were
    read into the variables' own memory (bytes that changed between the two reads, or a rank that died).

    Every rank raises it. On this rank, ``restored`` names the checkpoint keys whose values were
    verified and assigned, ``failed`` those whose bytes failed verification (their destinations
    were zero-filled, so no variable holds unverified bytes); all others keep their previous
    values. Restore with ``CheckpointOptions(atomic_restore=True)`` to change nothing even then.
    """

    def __init__(self, message: str, *, ranks: Iterable[int] = (), restored: tuple[str, ...] = (),
                 failed: tuple[str, ...] = (), path: str | os.PathLike | None = None, key: str | None = None):
        super().__init__(message, ranks=ranks, path=path, key=key)
        self.restored = restored
        self.failed = failed
