"""The atomic commit of one checkpoint: it appears whole, or not at all and the old one stays as it was.

:class:`AtomicCommit` owns the names and the order (call order: ``temporary`` names for the
writer's files → ``run`` | ``rollback``):

1. Data shards are written under temporary names ``<final>.tmp-<token>`` beside their final
   names, so the later renames stay within one directory and are atomic.
2. ``run``: the index's temporary file ``<prefix>.index.tmp-<token>`` is created first (while it
   exists and its writer lives, no sweep or deletion touches the data files of the prefix); the
   files of an older checkpoint at the same prefix are renamed aside to ``<old>.old-<token>``,
   index first, so it becomes invisible rather than pointing at new data, and the directory is
   fsynced; data files are renamed to their final names and the directory fsynced; the index is
   written, fsynced, renamed into place, and the directory fsynced once more; only then are the
   aside files deleted, by the process's background deleter, so ``run`` returns without waiting
   for the unlinks (:func:`settle` waits for them; a commit at a prefix first waits for that
   prefix's pending deletions, so a prefix never has two writers' aside files). Each directory
   fsync orders the renames before it ahead of those after it on disk, so no power cut can leave
   an index naming data that is not in place.
3. ``rollback`` (after any failure) removes the new files placed (index first) and puts the
   aside files back (data first, index last), stopping at the first step that fails, since each
   later one assumes it; what it could not undo is left to a sweep (``storage.recovery``).

A ``<token>`` is ``<pid>-<host tag>-<random>`` (:func:`writer_token`): a sweep removes or puts
back such files only once that writer is gone: its process has exited, or (in this process) its
commit gave up with files it could not clean up (:func:`abandoned`). A pending deletion's files
carry its living writer's token, so no sweep touches them; one that fails abandons the token
(logged) for a sweep to settle, and the queue is drained at interpreter exit. Every system call
goes through the ``StorageConfig``'s ``PosixIO``, so fault injection reaches each step.
"""

from __future__ import annotations

import atexit
import collections
import glob
import hashlib
import logging
import os
import re
import secrets
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import CheckpointError
from ..options import StorageConfig
from .posixio import PosixIO

log = logging.getLogger(__name__)

HOST_TAG = hashlib.blake2s(socket.gethostname().encode(), digest_size=4).hexdigest()
LEFTOVER = re.compile(r"(?P<original>.+)\.(?P<kind>tmp|old)-(?P<pid>\d+)-(?P<host>[0-9a-f]{8})-[0-9a-f]{8}")
EXIT_WAIT_S = 60.0  # how long interpreter exit waits for pending deletions of replaced files
_abandoned: set[str] = set()  # tokens of this process's writers that gave up with files left behind


def writer_token() -> str:
    """``<pid>-<host tag>-<random>``: names one writer's temporary and aside files."""
    return f"{os.getpid()}-{HOST_TAG}-{secrets.token_hex(4)}"


def abandon(token: str) -> None:
    """Declare that this process's writer ``token`` is finished but left files behind, so a sweep
    in this process may settle them (a live writer's files are otherwise never touched)."""
    _abandoned.add(token)


def abandoned(token: str) -> bool:
    """Whether this process's writer ``token`` gave up with files left behind (see :func:`abandon`)."""
    return token in _abandoned


def owner_alive(pid: int, host: str, token: str | None = None) -> bool:
    """Whether the writer that named a file may still be running (other hosts' writers: assume so)."""
    if host != HOST_TAG:
        return True
    if pid == os.getpid():
        return token is None or not abandoned(token)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def token_of(name: str) -> str | None:
    """The writer token in a temporary or aside file name, None for other names."""
    base = os.path.basename(name)
    match = LEFTOVER.fullmatch(base)
    return base[len(match["original"]) + len(".tmp-"):] if match else None


def shard_files(prefix: str) -> list[str]:
    """The data files that exist for ``prefix``, whatever their shard count."""
    pattern = re.compile(re.escape(os.path.basename(prefix)) + r"\.data-\d{5,}-of-\d{5,}$")
    candidates = glob.glob(glob.escape(prefix) + ".data-*-of-*")
    return [p for p in candidates if pattern.match(os.path.basename(p))]


class AtomicCommit:
    """The commit of one checkpoint at ``prefix``: its temporary and aside names, the ordered renames
    and fsyncs of ``run``, and ``rollback``; every call through ``storage.io``."""

    def __init__(self, prefix: str | os.PathLike, storage: StorageConfig, token: str | None = None):
        self.prefix = os.fspath(prefix)
        self.storage = storage
        self.token = token or writer_token()
        self.directory = os.path.dirname(self.prefix)
        self.index = self.prefix + ".index"
        self._aside: list[tuple[str, str]] = []  # (aside name, original name), in the order moved
        self._placed: list[str] = []  # final names of new files, in the order placed
        self._marker_fd: int | None = None

    def temporary(self, final: str) -> str:
        """Where a file is written before it is renamed to ``final``."""
        return f"{final}.tmp-{self.token}"

    def aside(self, original: str) -> str:
        """Where an older checkpoint's file waits until the new index is in place."""
        return f"{original}.old-{self.token}"

    @property
    def marker(self) -> str:
        """The index's temporary file, which announces the commit until it becomes the index."""
        return self.temporary(self.index)

    def run(self, files: Sequence[tuple[str, str]], index_bytes: bytes) -> None:
        """Rename finished data files (``(temporary, final)`` pairs, already fsynced) into place, then
        write the index atomically; on failure roll back and raise a CheckpointError naming the index."""
        settle(prefix=self.prefix)  # an earlier overwrite's aside files go first: one writer's aside files per prefix
        try:
            self._announce()
            self._move_old_aside()
            self._place(files)
            self._write_index(index_bytes)
        except OSError as exc:
            left = self.rollback()
            raise self._failure(exc, left) from exc
        self._discard_aside()

    def rollback(self) -> list[str]:
        """Undo what ``run`` did so far; return what could not be undone (a sweep settles it later)."""
        io = self.storage.io
        left: list[str] = []
        if self._marker_fd is not None:
            fd, self._marker_fd = self._marker_fd, None
            io.close(fd)
        _unlink_or_note(io, self.marker, left)
        for final in reversed(self._placed):
            if not _unlink_or_note(io, final, left) and final == self.index:
                break  # the new index stays: its data must too, and the old files cannot come back
        else:
            self._put_back(left)
        self._placed.clear()
        if left:
            abandon(self.token)
            log.warning("rolling back the commit of %s left: %s", self.prefix, "; ".join(left))
        return left

    # -- the steps of run -------------------------------------------------------------------------
    def _announce(self) -> None:
        self._marker_fd = self.storage.io.open(self.marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)

    def _move_old_aside(self) -> None:
        io = self.storage.io
        for old in ([self.index] if os.path.lexists(self.index) else []) + shard_files(self.prefix):
            try:
                io.replace(old, self.aside(old))
            except FileNotFoundError:
                continue  # deleted meanwhile (retention of another process): nothing to put aside
            self._aside.append((self.aside(old), old))
        if self._aside and self.storage.fsync:
            io.fsync_dir(self.directory)

    def _place(self, files: Sequence[tuple[str, str]]) -> None:
        io = self.storage.io
        for temp, final in files:
            io.replace(temp, final)
            self._placed.append(final)
        if self.storage.fsync:
            io.fsync_dir(self.directory)

    def _write_index(self, index_bytes: bytes) -> None:
        io = self.storage.io
        assert self._marker_fd is not None, "_announce opened the index's temporary file"
        io.pwrite(self._marker_fd, index_bytes, 0)
        if self.storage.fsync:
            io.fsync(self._marker_fd)
        fd, self._marker_fd = self._marker_fd, None
        io.close(fd)
        self._placed.append(self.index)  # no old index is left at this name, so whatever appears there is ours
        io.replace(self.marker, self.index)
        if self.storage.fsync:
            io.fsync_dir(self.directory)

    def _discard_aside(self) -> None:
        """After the commit: hand the old checkpoint's files to the background deleter."""
        if self._aside:
            _DELETER.submit(_Discard(self.prefix, self.token, tuple(moved for moved, _ in self._aside),
                                     self.storage.io))
        self._aside.clear()

    def _put_back(self, left: list[str]) -> None:
        """Return the old checkpoint's files, data first and index last; stop at the first that fails."""
        for moved, original in sorted(self._aside, key=lambda pair: pair[1].endswith(".index")):
            try:
                self.storage.io.replace(moved, original)
            except OSError as exc:
                left.append(f"{moved!r} not put back to {original!r} ({_strerror(exc)})")
                return
        self._aside.clear()

    def _failure(self, exc: OSError, left: list[str]) -> CheckpointError:
        message = f"could not commit checkpoint {self.index!r}: {_strerror(exc)}"
        if left:
            message += "; the rollback left " + "; ".join(left) + " (a later sweep settles them)"
        return CheckpointError(message, path=self.index, errno=exc.errno)


@dataclass(frozen=True)
class _Discard:
    """The aside files (in the order moved) of one committed overwrite, to delete after its commit."""

    prefix: str
    token: str
    paths: tuple[str, ...]
    io: PosixIO

    def run(self) -> None:
        """Delete the files; a failure abandons the token so a sweep settles what is left, and is logged."""
        left: list[str] = []
        try:
            for path in self.paths:
                _unlink_or_note(self.io, path, left)
        except Exception as exc:  # an unexpected error must not stop the deleter
            left.append(f"deletion stopped ({exc!r})")
        if left:
            abandon(self.token)
            log.warning("committed %s but could not delete the files it replaced: %s", self.prefix, "; ".join(left))


class _Deleter:
    """One daemon thread, started on first use, that deletes committed overwrites' aside files in order."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._jobs: collections.deque[_Discard] = collections.deque()
        self._pending: collections.Counter[str] = collections.Counter()  # prefix -> jobs queued or running
        self._thread: threading.Thread | None = None

    def submit(self, job: _Discard) -> None:
        with self._cond:
            self._jobs.append(job)
            self._pending[job.prefix] += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="gpuckpt-deleter", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def settle(self, timeout: float | None, prefix: str | None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            if threading.current_thread() is self._thread:
                return not self._busy(prefix)  # the deleter never waits for itself
            while self._busy(prefix):
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

    def _busy(self, prefix: str | None) -> bool:
        return bool(self._jobs) if prefix is None else self._pending[prefix] > 0

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._jobs:
                    self._cond.wait()
                job = self._jobs[0]  # stays queued while it runs, so settle() waits for it
            job.run()
            with self._cond:
                self._jobs.popleft()
                self._pending[job.prefix] -= 1
                if not self._pending[job.prefix]:
                    del self._pending[job.prefix]
                self._cond.notify_all()


_DELETER = _Deleter()


def settle(timeout: float | None = None, *, prefix: str | os.PathLike | None = None) -> bool:
    """Wait until the replaced files of committed overwrites (of ``prefix`` only, if given) are deleted;
    return whether they are (False: ``timeout`` seconds passed first). Failed deletions are logged."""
    return _DELETER.settle(timeout, None if prefix is None else os.fspath(prefix))


def _drain_at_exit() -> None:
    if not settle(EXIT_WAIT_S):
        log.warning("exiting with replaced checkpoint files not yet deleted; a later sweep removes them")


def _forget_in_child() -> None:
    global _DELETER
    _DELETER = _Deleter()  # the parent's thread and queue stay the parent's; it deletes those files


atexit.register(_drain_at_exit)
os.register_at_fork(after_in_child=_forget_in_child)


def _strerror(exc: OSError) -> str:
    return os.strerror(exc.errno) if exc.errno else str(exc)


def _unlink_or_note(io, path: str, left: list[str]) -> bool:
    """Unlink ``path`` through ``io`` (a missing file is fine); note a failure in ``left``."""
    try:
        io.unlink(path)
    except FileNotFoundError:
        return True
    except (OSError, ValueError) as exc:
        left.append(f"{path!r} not removed ({_strerror(exc) if isinstance(exc, OSError) else exc})")
        return False
    return True
