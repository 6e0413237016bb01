"""POSIX storage: how checkpoint bytes reach the disk so that a checkpoint is whole or invisible.

Commit protocol of :class:`FileSystemWriter` (call order: ``write``* → ``commit`` | ``abort``):

1. Data shards are written under temporary names ``<final>.tmp-<token>`` beside their final
   names, so the later renames stay within one directory and are atomic.
2. ``commit``: each data file is fsynced and closed; an old ``prefix.index`` is unlinked first
   (an old checkpoint at the same prefix becomes invisible instead of pointing at new data);
   data files are renamed to their final names; the index is written to a temporary name,
   fsynced and renamed; finally the directory is fsynced so the renames survive a power cut.
3. ``abort`` (or any failure) deletes the temporary files; nothing visible changes.

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
    return CheckpointError(f"could not {action} {path!r}: {what}", path=path)


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

    def __init__(self, prefix: str | os.PathLike, num_shards: int, *, fsync: bool = True):
        self.prefix = os.fspath(prefix)
        self.num_shards = num_shards
        self.fsync = fsync
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
                self._fds.append(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644))
        except OSError as exc:
            self.abort()
            raise _io_error("create data file", temp, exc) from exc

    def write(self, shard: int, offset: int, data) -> None:
        """Write ``data`` (a buffer or a list of buffers) at ``offset`` of shard ``shard``; thread-safe."""
        try:
            pwrite_all(self._fds[shard], data, offset)
        except OSError as exc:
            raise _io_error("write data file", self._temps[shard], exc) from exc

    def commit(self, index_bytes: bytes) -> None:
        """Make the checkpoint visible: data durable and in place, then the index, atomically."""
        index = self.prefix + ".index"
        try:
            for fd, temp in zip(self._fds, self._temps):
                if self.fsync:
                    os.fsync(fd)
            self._close_fds()
            if os.path.lexists(index):
                os.unlink(index)
            for temp, final in zip(self._temps, self._finals):
                os.replace(temp, final)
            _remove_stale_shards(self.prefix, keep=set(self._finals))
            atomic_write(index, index_bytes, fsync=self.fsync)
        except OSError as exc:
            self.abort()
            raise _io_error("commit checkpoint", index, exc) from exc

    def abort(self) -> None:
        """Remove temporary files; leaves any previously committed checkpoint untouched."""
        self._close_fds()
        for temp in self._temps:
            try:
                os.unlink(temp)
            except OSError:
                pass

    def _close_fds(self) -> None:
        while self._fds:
            os.close(self._fds.pop())


def atomic_write(path: str, data: bytes, *, fsync: bool = True) -> None:
    """Write a whole file under a temporary name, then rename it into place (and fsync the dir)."""
    temp = f"{path}.tmp-{secrets.token_hex(8)}"
    try:
        with open(temp, "wb") as f:
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(temp, path)
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


def _remove_stale_shards(prefix: str, keep: set[str]) -> None:
    for path in _shard_files(prefix):
        if path not in keep:
            os.unlink(path)


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
