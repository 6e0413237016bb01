"""The error every rank raises when a distributed save or restore cannot complete."""

from __future__ import annotations

import os
from collections.abc import Iterable

from ..errors import CheckpointError


class DistributedError(CheckpointError):
    """A distributed save or restore failed on some rank, or a rank stopped answering in time.

    ``ranks`` names the ranks at fault (failed, or silent past the deadline); every rank of the
    group raises it, so no rank is left waiting. Nothing was committed or assigned.
    """

    def __init__(self, message: str, *, ranks: Iterable[int] = (), path: str | os.PathLike | None = None,
                 key: str | None = None):
        super().__init__(message, path=path, key=key)
        self.ranks = tuple(ranks)
