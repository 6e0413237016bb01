"""DistributedCheckpointManager: numbered distributed saves in one directory, with retention.

Rank 0 keeps a :class:`gpuckpt.CheckpointManager` over the directory and hands it each new
checkpoint inside the commit (``save.commit``'s ``publish``), under the directory lock: the state
file names the new checkpoint, then the checkpoints the retention policy no longer keeps are
deleted, all before any rank hears that the save is committed. So retention is exactly the
single-process manager's (``max_to_keep``, ``keep_checkpoint_every_n_hours``, TF's state file).
The other ranks only read the state file, to find the latest checkpoint.
"""

from __future__ import annotations

import os
from typing import Any

from ..manager import CheckpointManager, _checked_number
from ..options import CheckpointOptions, StorageConfig
from ..reader import latest_checkpoint
from ..storage import filesystem, recovery
from .checkpoint import DistributedCheckpoint
from .restore import RestoreResult


class DistributedCheckpointManager:
    """Saves ``checkpoint`` (a :class:`DistributedCheckpoint`) as ``directory/checkpoint_name-N``, keeping
    the newest ``max_to_keep``. Every rank calls the same methods (they are collective)."""

    def __init__(self, checkpoint: DistributedCheckpoint, directory: str | os.PathLike, max_to_keep: int | None,
                 keep_checkpoint_every_n_hours: float | None = None, checkpoint_name: str = "ckpt"):
        self._checkpoint = checkpoint
        self._directory = os.path.abspath(os.fspath(directory))
        self._prefix = os.path.join(self._directory, checkpoint_name)
        self._manager = None if checkpoint.rank != 0 else CheckpointManager(
            checkpoint.checkpoint, self._directory, max_to_keep, keep_checkpoint_every_n_hours, checkpoint_name)
        self._fsync = True

    @property
    def checkpoint(self) -> DistributedCheckpoint:
        return self._checkpoint

    @property
    def directory(self) -> str:
        return self._directory

    @property
    def latest_checkpoint(self) -> str | None:
        """The newest committed checkpoint's prefix, from the state file (any rank), or None."""
        return latest_checkpoint(self._directory)

    @property
    def checkpoints(self) -> list[str]:
        """The managed checkpoints, oldest first, from the state file (any rank)."""
        state = filesystem.read_state(self._directory)
        if state is None:
            return []
        return [p if os.path.isabs(p) else os.path.join(self._directory, p) for p in state.all_model_checkpoint_paths]

    def save(self, checkpoint_number: Any = None, options: CheckpointOptions | None = None) -> str:
        """A distributed save of ``checkpoint_name-N`` (N: ``checkpoint_number``, else the next save
        count), then retention on rank 0, inside the commit. Asynchronous with ``options.enable_async``."""
        options = options or CheckpointOptions()
        self._fsync = options.fsync
        number = None if checkpoint_number is None else _checked_number(checkpoint_number)
        return self._checkpoint.save_numbered(f"{self._prefix}-{{}}", options, number=number, publish=self._publish)

    def _publish(self, path: str) -> None:
        """Rank 0, at the commit: list ``path`` in the state file and delete what retention drops."""
        manager = self._manager
        assert manager is not None, "only rank 0 commits"
        with recovery.DirectoryLock(self._directory):
            manager._forget_deleted()
            manager._record_and_delete_old(path, StorageConfig(fsync=self._fsync))

    def restore_or_initialize(self) -> RestoreResult | None:
        """Restore the latest checkpoint on every rank and return what was restored; None when there is none."""
        latest = self.latest_checkpoint
        return None if latest is None else self._checkpoint.restore(latest)

    def sync(self) -> None:
        """Wait for a pending asynchronous save; raise its error once."""
        self._checkpoint.sync()
