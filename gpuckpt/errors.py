"""gpuckpt's exceptions: one base class, three kinds, each naming the file and key at fault.

    CheckpointError                 base; catch this to catch everything gpuckpt raises
     ├── NotFoundError              a prefix, file, shard or key that does not exist
     ├── DataLossError              bytes on disk are corrupt, truncated or not a checkpoint
     ├── InvalidArgumentError       a request that cannot be honoured (bad dtype, shape, option)
     └── DeadlineExceededError      a wait (staging, device copies, writes) that did not end in time

Lower-layer errors (OSError, protobuf's DecodeError) are converted at the seam where they
occur, with ``raise ... from exc`` so the original stays in the traceback.
"""

from __future__ import annotations

import os


class CheckpointError(Exception):
    """Base class of every error gpuckpt raises on purpose."""

    # Set only where they apply (declared here, not defaulted): ``errno`` on errors converted
    # from an OSError by the storage layer; ``withdrawn`` on a failed publish of a new checkpoint,
    # True when that checkpoint was deleted again.
    errno: int | None
    withdrawn: bool

    def __init__(self, message: str, *, path: str | os.PathLike | None = None, key: str | None = None):
        self.path = os.fspath(path) if path is not None else None
        self.key = key
        super().__init__(message)


class NotFoundError(CheckpointError):
    """Something that should exist does not: a checkpoint prefix, a data shard, a key."""


class DataLossError(CheckpointError):
    """Stored bytes fail verification: bad CRC, bad magic, truncation, malformed records."""


class InvalidArgumentError(CheckpointError, ValueError):
    """A request gpuckpt cannot honour, such as restoring a float32 value into an int32 variable."""


class DeadlineExceededError(CheckpointError, TimeoutError):
    """A wait that did not finish in time: staging memory, a device copy, a write. Nothing hangs."""


class PartialRestoreError(DataLossError):
    """A restore found corrupt bytes after it had begun writing into variables' own memory.

    ``restored`` names the checkpoint keys whose values were verified and assigned; ``failed``
    those whose bytes failed verification (their in-place destinations were zero-filled, so no
    variable holds unverified bytes; values restored through ``_restore_tensors`` kept their
    old value). Restore with ``CheckpointOptions(atomic_restore=True)`` to change nothing instead.
    """

    def __init__(self, message: str, *, restored: tuple[str, ...], failed: tuple[str, ...],
                 path: str | os.PathLike | None = None, key: str | None = None):
        super().__init__(message, path=path, key=key)
        self.restored = restored
        self.failed = failed
