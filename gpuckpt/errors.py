"""gpuckpt's exceptions: one base class, a few kinds, each naming the file and key at fault.

    CheckpointError                 base; catch this to catch everything gpuckpt raises
     ├── NotFoundError              a prefix, file, shard or key that does not exist
     ├── DataLossError              bytes on disk are corrupt, truncated or not a checkpoint
     │    └── PartialRestoreError   ... found after a restore had begun assigning values
     ├── InvalidArgumentError       a request that cannot be honoured (bad dtype, shape, option)
     ├── DeadlineExceededError      a wait (staging, device copies, writes) that did not end in time
     ├── StatePublishError          a save's state file could not be written; its checkpoint was withdrawn
     └── CommittedSaveError         a save committed and listed its checkpoint, then a later step failed

What a failure carries is declared by its constructor: every CheckpointError has ``path``,
``key`` and ``errno`` (None where they do not apply); a DataLossError has a ``reason`` from
:class:`DataLossReason` that code (and ``gpuckpt verify``) matches instead of message text.
Lower-layer errors (OSError, protobuf's DecodeError) are converted at the seam where they
occur, with ``raise ... from exc`` so the original stays in the traceback; :func:`io_error`
is that conversion for an OSError.
"""

from __future__ import annotations

import enum
import os


class CheckpointError(Exception):
    """Base class of every error gpuckpt raises on purpose.

    ``path``: the file or prefix at fault; ``key``: the checkpoint key; ``errno``: the OS error
    number when the failure was an OSError (see :func:`io_error`).
    """

    def __init__(self, message: str, *, path: str | os.PathLike | None = None, key: str | None = None,
                 errno: int | None = None):
        self.path = os.fspath(path) if path is not None else None
        self.key = key
        self.errno = errno
        super().__init__(message)


class NotFoundError(CheckpointError):
    """Something that should exist does not: a checkpoint prefix, a data shard, a key."""


class DataLossReason(str, enum.Enum):
    """Why stored bytes were refused; compare with ``==`` (the values are plain strings too)."""

    CORRUPT = "corrupt"                    # malformed bytes not classified more precisely below
    CRC_MISMATCH = "crc_mismatch"          # bytes read do not match their stored CRC32C
    TRUNCATED = "truncated"                # a file ends before the bytes its index claims
    BAD_ENTRY = "bad_entry"                # an index entry that is malformed or contradicts the index
    BAD_INDEX = "bad_index"                # an index file that is not a well-formed table
    NOT_REGULAR_FILE = "not_regular_file"  # a directory, FIFO, device, socket or symbolic link
    TOO_LARGE = "too_large"                # a file larger than it may be (state file, index block)
    BAD_STATE_FILE = "bad_state_file"      # a ``checkpoint`` state file that fails its checksum or parse


class DataLossError(CheckpointError):
    """Stored bytes fail verification: bad CRC, bad magic, truncation, malformed records.

    ``reason`` (a :class:`DataLossReason`) says which, for code to match.
    """

    def __init__(self, message: str, *, path: str | os.PathLike | None = None, key: str | None = None,
                 errno: int | None = None, reason: DataLossReason = DataLossReason.CORRUPT):
        super().__init__(message, path=path, key=key, errno=errno)
        self.reason = DataLossReason(reason)


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
                 path: str | os.PathLike | None = None, key: str | None = None,
                 reason: DataLossReason = DataLossReason.CRC_MISMATCH):
        super().__init__(message, path=path, key=key, reason=reason)
        self.restored = restored
        self.failed = failed


class StatePublishError(CheckpointError):
    """The state file naming a just-committed checkpoint could not be written, and that checkpoint
    was deleted again (or, where even that failed, is left unlisted): the save committed nothing.

    ``checkpoint`` is the withdrawn prefix; ``path`` and ``errno`` those of the state file's failure.
    """

    def __init__(self, message: str, *, checkpoint: str, path: str | os.PathLike | None = None,
                 errno: int | None = None):
        super().__init__(message, path=path, errno=errno)
        self.checkpoint = checkpoint


class CommittedSaveError(CheckpointError):
    """A save committed its checkpoint and the state file names it, but a step after that failed
    (syncing the state file's directory, deleting checkpoints retention no longer keeps, ...).

    The checkpoint at ``checkpoint`` is whole and the latest; ``path`` and ``errno`` name what failed.
    """

    def __init__(self, message: str, *, checkpoint: str, path: str | os.PathLike | None = None,
                 errno: int | None = None):
        super().__init__(message, path=path, errno=errno)
        self.checkpoint = checkpoint


def io_error(action: str, path: str, exc: OSError) -> CheckpointError:
    """The CheckpointError for an OSError while doing ``action`` (``"write data file"``) on ``path``:
    it names the path and carries the errno."""
    what = os.strerror(exc.errno) if exc.errno else str(exc)
    return CheckpointError(f"could not {action} {path!r}: {what}", path=path, errno=exc.errno)
