"""POSIX storage: how checkpoint bytes reach the disk so that a checkpoint is whole or invisible.

Commit protocol of :class:`FileSystemWriter` (call order: ``write``* → ``commit`` | ``abort``):

1. Data shards are written under temporary names ``<final>.tmp-<token>`` beside their final
   names, so the later renames stay within one directory and are atomic.
2. ``commit``: each data file is fsynced and closed; the files of an older checkpoint at the
   same prefix are renamed aside, index first (it becomes invisible rather than pointing at
   new data); data files are renamed to their final names; the index is written to a
   temporary name, fsynced and renamed; the directory is fsynced so the renames survive a
   power cut; only then are the old files deleted.
3. ``abort`` (or any failure) deletes the temporary files and puts aside files back; nothing
   visible changes.

TensorFlow itself issues no fsync; with ``fsync=False`` gpuckpt skips them too (faster, but a
power cut may leave an index that names data which never reached the disk).
"""

from __future__ import annotations

import errno
import glob
import os
import re
import secrets

from ..errors import CheckpointError, NotFoundError
from ..format import statefile
from ..format.bundle import data_file_name

STATE_FILE = "checkpoint"
_PWRITE_MAX = 1 << 30
_IOV_MAX = 1024


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory or ".", os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _io_error(action: str, path: str, exc: OSError) -> CheckpointError:
    what = os.strerror(exc.errno) if exc.errno else str(exc)
    error = CheckpointError(f"could not {action} {path!r}: {what}", path=path)
    error.errno = exc.errno
    return error


class PosixIO:
    """The system calls the writer makes; tests substitute a subclass that injects faults."""

    open = staticmethod(os.open)
    close = staticmethod(os.close)
    fsync = staticmethod(os.fsync)
    replace = staticmethod(os.replace)

    @staticmethod
    def pwrite(fd: int, data, offset: int) -> None:
        pwrite_all(fd, data, offset)


def advance(views: list[memoryview], n: int) -> list[memoryview]:
    """Drop the first ``n`` bytes from a list of byte views (after a short vectored I/O call)."""
    while n and views:
        if n >= views[0].nbytes:
            n -= views[0].nbytes
            views = views[1:]
        else:
            views = [views[0][n:], *views[1:]]
            n = 0
    return views


def pwrite_all(fd: int, data, offset: int) -> None:
    """Write every byte of ``data`` (a buffer, or a list of buffers written back to back) at ``offset``."""
    parts = data if isinstance(data, list) else [data]
    views = [memoryview(p).cast("B") for p in parts if memoryview(p).nbytes]
    while views:
        n = os.pwritev(fd, views[:_IOV_MAX], offset) if len(views) > 1 else os.pwrite(fd, views[0][:_PWRITE_MAX], offset)
        if n == 0:
            raise OSError(errno.EIO, "write returned 0 bytes")
        views, offset = advance(views, n), offset + n


class FileSystemWriter:
    """Writes one checkpoint's data shards and commits its index atomically."""

    def __init__(self, prefix: str | os.PathLike, num_shards: int, *, fsync: bool = True, io: PosixIO = PosixIO()):
        self.prefix = os.fspath(prefix)
        self.num_shards = num_shards
        self.fsync = fsync
        self._io = io
        self._token = secrets.token_hex(8)
        directory = os.path.dirname(self.prefix)
        if directory:
            try:
                os.makedirs(directory, exist_ok=True)
            except OSError as exc:
                raise _io_error("create directory", directory, exc) from exc
        self._finals = [data_file_name(self.prefix, s, num_shards) for s in range(num_shards)]
        self._temps = [f"{f}.tmp-{self._token}" for f in self._finals]
        self._fds: list[int] = []
        try:
            for temp in self._temps:
                self._fds.append(io.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644))
        except OSError as exc:
            self.abort()
            raise _io_error("create data file", temp, exc) from exc

    def write(self, shard: int, offset: int, data) -> None:
        """Write ``data`` (a buffer or a list of buffers) at ``offset`` of shard ``shard``; thread-safe."""
        try:
            self._io.pwrite(self._fds[shard], data, offset)
        except OSError as exc:
            raise _io_error("write data file", self._temps[shard], exc) from exc

    def commit(self, index_bytes: bytes) -> None:
        """Make the checkpoint visible: data durable and in place, then the index, atomically.

        Files of an older checkpoint at the same prefix are renamed aside first (its index
        before its data) and deleted only once the new index is in place; if any step fails
        they are put back, so a failed overwrite leaves the old checkpoint as it was.
        """
        index = self.prefix + ".index"
        aside: list[tuple[str, str]] = []
        placed: list[str] = []
        try:
            if self.fsync:
                for fd in self._fds:
                    self._io.fsync(fd)
            self._close_fds()
            for old in ([index] if os.path.lexists(index) else []) + _shard_files(self.prefix):
                self._io.replace(old, f"{old}.old-{self._token}")
                aside.append((f"{old}.old-{self._token}", old))
            for temp, final in zip(self._temps, self._finals):
                self._io.replace(temp, final)
                placed.append(final)
            atomic_write(index, index_bytes, fsync=self.fsync, io=self._io)
        except OSError as exc:
            _undo(placed, aside)
            self.abort()
            raise _io_error("commit checkpoint", index, exc) from exc
        for moved, _ in aside:
            _unlink_quietly(moved)

    def abort(self) -> None:
        """Remove temporary files; leaves any previously committed checkpoint untouched."""
        self._close_fds()
        for temp in self._temps:
            _unlink_quietly(temp)

    def _close_fds(self) -> None:
        while self._fds:
            self._io.close(self._fds.pop())


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _undo(placed: list[str], aside: list[tuple[str, str]]) -> None:
    """Roll a failed commit back: remove new files, then return old ones (data first, index last)."""
    for final in placed:
        _unlink_quietly(final)
    for moved, original in sorted(aside, key=lambda pair: pair[1].endswith(".index")):
        try:
            os.replace(moved, original)
        except OSError:
            pass


def atomic_write(path: str, data: bytes, *, fsync: bool = True, io: PosixIO = PosixIO()) -> None:
    """Write a whole file under a temporary name, then rename it into place (and fsync the dir)."""
    temp = f"{path}.tmp-{secrets.token_hex(8)}"
    try:
        fd = io.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            io.pwrite(fd, data, 0)
            if fsync:
                io.fsync(fd)
        finally:
            io.close(fd)
        io.replace(temp, path)
    except BaseException:
        try:
            os.unlink(temp)
        except OSError:
            pass
        raise
    if fsync:
        _fsync_dir(os.path.dirname(path))


def _shard_files(prefix: str) -> list[str]:
    pattern = re.compile(re.escape(os.path.basename(prefix)) + r"\.data-\d{5,}-of-\d{5,}$")
    candidates = glob.glob(glob.escape(prefix) + ".data-*-of-*")
    return [p for p in candidates if pattern.match(os.path.basename(p))]


def remove_checkpoint(prefix: str | os.PathLike) -> None:
    """Delete a checkpoint: its index first (so it is invisible at once), then its data shards."""
    prefix = os.fspath(prefix)
    try:
        os.unlink(prefix + ".index")
    except FileNotFoundError:
        pass
    for path in _shard_files(prefix):
        os.unlink(path)


def read_state(directory: str | os.PathLike) -> statefile.CheckpointState | None:
    """The directory's ``checkpoint`` state, or None when it is missing or cannot be parsed."""
    path = os.path.join(os.fspath(directory), STATE_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            return statefile.parse(f.read(), path)
    except (OSError, UnicodeDecodeError, CheckpointError):
        return None


def write_state(directory: str | os.PathLike, state: statefile.CheckpointState, *, fsync: bool = True) -> None:
    """Atomically replace the directory's ``checkpoint`` state file."""
    path = os.path.join(os.fspath(directory), STATE_FILE)
    atomic_write(path, statefile.format(state).encode("utf-8"), fsync=fsync)


class ShardFiles:
    """Read-only file descriptors of one checkpoint's data shards, opened on first use."""

    def __init__(self, prefix: str, num_shards: int):
        self.prefix = prefix
        self.num_shards = num_shards
        self._fds: dict[int, tuple[int, int]] = {}

    def path(self, shard: int) -> str:
        return data_file_name(self.prefix, shard, self.num_shards)

    def open(self, shard: int) -> tuple[int, int]:
        """(fd, file size) of a shard; NotFoundError naming the file when it is missing."""
        if shard not in self._fds:
            path = self.path(shard)
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                raise NotFoundError(f"data file {path!r} of checkpoint {self.prefix!r} is missing", path=path) from None
            except OSError as exc:
                raise _io_error("open data file", path, exc) from exc
            self._fds[shard] = (fd, os.fstat(fd).st_size)
        return self._fds[shard]

    def close(self) -> None:
        for fd, _ in self._fds.values():
            os.close(fd)
        self._fds.clear()
