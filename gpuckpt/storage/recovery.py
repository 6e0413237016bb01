"""After a crash: the directory lock, and ``clean_leftovers``, which removes what dead writers left behind.

A writer killed mid-save leaves, beside the last committed checkpoint, at most:

* temporary files ``<final>.tmp-<token>`` (data shards, an index, a state file): deleted;
* files renamed aside ``<old>.old-<token>`` by an overwrite of the same prefix: put back when
  the prefix has no index (the overwrite never committed, so the old checkpoint is restored
  whole), deleted when it has one (the new checkpoint did commit);
* data files in place without an index (a commit or a deletion cut short): deleted, for the
  names of one manager only (``<name>-<N>``), only under the directory lock, and never while a
  live writer is committing that prefix (its ``<prefix>.index.tmp-<token>`` exists: a plain
  ``Checkpoint.save`` beside a manager takes no lock, but creates that file before its data).

Temporary and aside names carry their writer's PID and host tag (``filesystem.writer_token``),
so the sweep touches them only once that process is gone (or, in this process, once that writer
abandoned them; a committed overwrite's aside files awaiting the background deleter are not);
files of a live writer, or of a writer on another host, are left alone. Orphan data files carry
no owner; they are removed only under :class:`DirectoryLock`, which every manager holds across
its whole save, and only when no live writer's index temporary file announces a commit at their
prefix.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
import stat
from collections import defaultdict
from dataclasses import dataclass

from ..errors import CheckpointError, DataLossError, DataLossReason, io_error
from ..options import StorageConfig
from .commit import LEFTOVER, owner_alive, settle, shard_files, token_of
from .filesystem import commit_in_flight, make_dirs
from .posixio import PosixIO

log = logging.getLogger(__name__)

LOCK_FILE = ".gpuckpt.lock"


class DirectoryLock:
    """An exclusive ``flock`` on ``directory/.gpuckpt.lock``, for one save at a time per directory.

    ``flock`` locks belong to an open file, so two threads of one process exclude each other
    as two processes do, and the kernel drops the lock when its holder dies.
    """

    def __init__(self, directory: str | os.PathLike, storage: StorageConfig | None = None):
        self.directory = os.fspath(directory)
        self.storage = storage or StorageConfig()
        self.path = os.path.join(self.directory, LOCK_FILE)
        self._fd: int | None = None

    def __enter__(self) -> DirectoryLock:
        make_dirs(self.directory, self.storage)
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            fd = os.open(self.path, flags, 0o644)  # never through a symbolic link; a FIFO cannot block
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise DataLossError(f"lock file {self.path!r} is a symbolic link; refusing to follow it",
                                    path=self.path, reason=DataLossReason.NOT_REGULAR_FILE) from None
            raise io_error("open lock file", self.path, exc) from exc
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise DataLossError(f"lock file {self.path!r} is not a regular file", path=self.path,
                                reason=DataLossReason.NOT_REGULAR_FILE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as exc:
            os.close(fd)
            raise io_error("lock", self.path, exc) from exc
        self._fd = fd
        return self

    def __exit__(self, *exc_info: object) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # releases the lock


@dataclass(frozen=True)
class Leftover:
    """A temporary or aside file: ``path`` on disk, ``original`` the name it stands for."""

    path: str
    original: str
    kind: str  # "tmp" or "old"
    token: str
    alive: bool


def leftovers(directory: str) -> list[Leftover]:
    """Every temporary and aside file in ``directory``, with whether its writer may be running."""
    found = []
    for name in _listdir(directory):
        match = LEFTOVER.fullmatch(name)
        if match:
            path = os.path.join(directory, name)
            token = token_of(name)
            assert token is not None, "a LEFTOVER name carries a token"
            found.append(Leftover(path, os.path.join(directory, match["original"]), match["kind"], token,
                                  owner_alive(int(match["pid"]), match["host"], token)))
    return found


def clean_leftovers(directory: str | os.PathLike, checkpoint_name: str | None = None,
          storage: StorageConfig | None = None) -> list[str]:
    """Clean up after dead writers in ``directory``; return the paths removed or put back.

    Best effort: a file that cannot be removed is logged and left for the next sweep. With
    ``checkpoint_name``, data files of ``<checkpoint_name>-<N>`` without an index are removed
    too, which is safe only while holding the :class:`DirectoryLock`. Renames and unlinks go
    through ``storage.io``. It first waits for this process's pending deletions of replaced files
    (``commit.settle``), which no sweep may touch, so the directory it sees is clean.
    """
    io = (storage or StorageConfig()).io
    directory = os.fspath(directory)
    settle()
    dead = [item for item in leftovers(directory) if not item.alive]
    acted: list[str] = []
    by_token: dict[str, list[Leftover]] = defaultdict(list)
    for item in dead:
        if item.kind == "old":
            by_token[item.token].append(item)
        elif _remove(io, item.path):
            acted.append(item.path)
    for group in by_token.values():
        acted += _settle_overwrite(io, group)
    if checkpoint_name is not None:
        acted += [p for p in orphan_data_files(directory, checkpoint_name) if _remove(io, p)]
    if acted:
        log.info("removed or restored %d files left by interrupted saves in %s", len(acted), directory)
    return acted


def orphan_data_files(directory: str, checkpoint_name: str) -> list[str]:
    """Data files of ``<checkpoint_name>-<N>`` checkpoints whose index does not exist and that no live
    writer is committing.

    A writer creates its index's temporary file before it renames data into place and renames it to
    the index last; so data seen here belongs to a live commit if, after the index was found missing,
    that temporary file is still there, or the index has appeared meanwhile (checked in this order).
    """
    pattern = re.compile(re.escape(checkpoint_name) + r"-\d+(?=\.data-\d{5,}-of-\d{5,}$)")
    found: dict[str, list[str]] = defaultdict(list)
    for name in _listdir(directory):
        match = pattern.match(name)
        if match and len(name) > match.end():
            found[os.path.join(directory, match[0])].append(os.path.join(directory, name))
    out = []
    for prefix, paths in found.items():
        index = prefix + ".index"
        if os.path.lexists(index) or commit_in_flight(prefix) or os.path.lexists(index):
            continue
        out += paths
    return out


def _settle_overwrite(io: PosixIO, group: list[Leftover]) -> list[str]:
    """Finish a dead writer's overwrite of one prefix: restore the old files if the new index never
    appeared, else delete them. Data go back before the index, so a crash here is swept again."""
    index_aside = next((item for item in group if item.original.endswith(".index")), None)
    if index_aside is None or os.path.lexists(index_aside.original):
        return [item.path for item in group if _remove(io, item.path)]
    restored: list[str] = []
    for item in sorted(group, key=lambda i: i is index_aside):
        try:
            io.replace(item.path, item.original)
        except OSError as exc:
            log.warning("could not restore %s to %s: %s", item.path, item.original, exc)
            return restored
        restored.append(item.original)
    old_shards = {os.path.basename(p).rsplit("-of-", 1)[-1] for p in restored if p != index_aside.original}
    prefix = index_aside.original[: -len(".index")]
    stray = [p for p in shard_files(prefix) if old_shards and p.rsplit("-of-", 1)[-1] not in old_shards]
    return restored + [p for p in stray if _remove(io, p)]


def _remove(io: PosixIO, path: str) -> bool:
    try:
        io.unlink(path)
    except FileNotFoundError:
        return False
    except OSError as exc:
        log.warning("could not remove %s left by an interrupted save: %s", path, exc)
        return False
    return True


def _listdir(directory: str) -> list[str]:
    try:
        return os.listdir(directory or ".")
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            log.warning("could not list %s to clean up: %s", directory, exc)
        return []


def try_clean_leftovers(directory: str, checkpoint_name: str) -> None:
    """``clean_leftovers`` under the directory lock, skipped (with a log line) where the lock cannot be had."""
    try:
        with DirectoryLock(directory):
            clean_leftovers(directory, checkpoint_name)
    except CheckpointError as exc:
        log.warning("skipped cleaning up %s: %s", directory, exc)
