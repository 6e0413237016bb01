"""POSIX storage: how checkpoint bytes reach the disk so that a checkpoint is whole or invisible.

:class:`FileSystemWriter` writes a checkpoint's data shards under temporary names and commits
them with one :class:`~gpuckpt.storage.commit.AtomicCommit` (call order: ``write``* →
``commit`` | ``abort``), which holds the names, the ordered renames and fsyncs, and the
rollback (its module docstring states the protocol). ``abort`` (or any failure) deletes the
temporary files and puts aside files back; nothing visible changes.

A distributed save (``gpuckpt.distributed``) splits this: each process writes one shard with
``FileSystemWriter(..., shard_ids=[r])`` and ``finish()``-es it (fsync, close, temporary name
kept); one process then commits every process's files with :func:`commit_files`.

How storage writes comes in one ``StorageConfig(fsync, io)`` (``gpuckpt.options``): TensorFlow
itself issues no fsync; with ``fsync=False`` gpuckpt skips them too (faster, but a power cut may
leave an index that names data which never reached the disk; see ``docs/durability.md``), and
``io`` is the :class:`PosixIO` through which every open, write, fsync, rename, unlink and mkdir goes.
"""

from __future__ import annotations

import errno
import functools
import glob
import os
import stat
from collections.abc import Sequence

from ..errors import (
    CheckpointError,
    CommittedSaveError,
    DataLossError,
    DataLossReason,
    InvalidArgumentError,
    StatePublishError,
    io_error,
)
from ..format import crc, statefile
from ..format.bundle import data_file_name
from ..options import StorageConfig
from .commit import (
    HOST_TAG,
    LEFTOVER,
    AtomicCommit,
    abandon,
    owner_alive,
    settle,
    shard_files,
    token_of,
    writer_token,
)
from .posixio import IOV_MAX, PosixIO, advance, pwrite_all

__all__ = ["HOST_TAG", "LEFTOVER", "STATE_FILE", "FileSystemWriter", "PosixIO", "advance", "atomic_write",
           "commit_files", "commit_in_flight", "make_dirs", "open_regular", "owner_alive", "publish_state",
           "pwrite_all", "read_small_file", "read_state", "remove_checkpoint", "shard_files", "writer_token",
           "write_state", "IOV_MAX"]

STATE_FILE = "checkpoint"
MAX_STATE_BYTES = 64 << 20  # a state file listing a million checkpoints is far smaller
_KINDS = {stat.S_IFDIR: "a directory", stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a character device",
          stat.S_IFBLK: "a block device", stat.S_IFSOCK: "a socket"}


def make_dirs(directory: str, storage: StorageConfig | None = None) -> None:
    """Create ``directory`` and its missing parents (through ``storage.io``), fsyncing each new entry's parent."""
    storage = storage or StorageConfig()
    missing = []
    path = os.path.abspath(directory)
    while not os.path.isdir(path) and path != os.path.dirname(path):
        missing.append(path)
        path = os.path.dirname(path)
    for path in reversed(missing):
        try:
            storage.io.mkdir(path)
        except FileExistsError:
            continue
        except ValueError as exc:  # an embedded NUL
            raise InvalidArgumentError(f"cannot create directory {path!r}: {exc}", path=path) from None
        except OSError as exc:
            raise io_error("create directory", path, exc) from exc
        if storage.fsync:
            try:
                storage.io.fsync_dir(os.path.dirname(path))
            except OSError as exc:
                raise io_error("sync directory", os.path.dirname(path), exc) from exc


class FileSystemWriter:
    """Writes one checkpoint's data shards and commits its index atomically.

    ``shard_ids`` makes it write only some of the ``num_shards`` data files: local shard ``i``
    (what ``write`` takes) is the file of shard ``shard_ids[i]``. One process of a distributed
    save writes its own shard this way, ``finish``-es it, and one process commits them all
    with :func:`commit_files`.
    """

    def __init__(self, prefix: str | os.PathLike, num_shards: int, storage: StorageConfig | None = None, *,
                 shard_ids: Sequence[int] | None = None):
        self.prefix = os.fspath(prefix)
        self.num_shards = num_shards
        self.storage = storage or StorageConfig()
        self._io = self.storage.io
        self._commit = AtomicCommit(self.prefix, self.storage)
        self._directory = os.path.dirname(self.prefix)
        if self._directory:
            make_dirs(self._directory, self.storage)
        shard_ids = range(num_shards) if shard_ids is None else shard_ids
        self._finals = [data_file_name(self.prefix, s, num_shards) for s in shard_ids]
        self._temps = [self._commit.temporary(f) for f in self._finals]
        self._fds: list[int] = []
        try:
            for temp in self._temps:
                self._fds.append(self._io.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644))
        except ValueError as exc:  # an embedded NUL
            self.abort()
            raise InvalidArgumentError(f"cannot create data file {temp!r}: {exc}", path=temp) from None
        except OSError as exc:
            self.abort()
            raise io_error("create data file", temp, exc) from exc

    @property
    def token(self) -> str:
        """The token in this writer's temporary names (see :func:`writer_token`)."""
        return self._commit.token

    def write(self, shard: int, offset: int, data) -> None:
        """Write ``data`` (a buffer or a list of buffers) at ``offset`` of shard ``shard``; thread-safe."""
        try:
            self._io.pwrite(self._fds[shard], data, offset)
        except OSError as exc:
            raise io_error("write data file", self._temps[shard], exc) from exc

    def finish(self) -> list[tuple[str, str]]:
        """Make the written data durable (fsync) and close it; return ``(temporary, final)`` name pairs.

        The files keep their temporary names: nothing is visible until :func:`commit_files`.
        """
        try:
            if self.storage.fsync:
                for fd, temp in zip(self._fds, self._temps):
                    try:
                        self._io.fsync(fd)
                    except OSError as exc:
                        raise io_error("sync data file", temp, exc) from exc
        finally:
            self._close_fds()
        return list(zip(self._temps, self._finals))

    def commit(self, index_bytes: bytes) -> None:
        """Make the checkpoint visible: data durable and in place, then the index, atomically.

        Files of an older checkpoint at the same prefix are renamed aside first (its index
        before its data) and deleted only once the new index is in place; if any step fails
        they are put back, so a failed overwrite leaves the old checkpoint as it was.
        """
        try:
            files = self.finish()
            self._commit.run(files, index_bytes)
        except CheckpointError:
            self.abort()
            raise

    def abort(self) -> None:
        """Remove temporary files; leaves any previously committed checkpoint untouched."""
        self._close_fds()
        left = False
        for temp in self._temps:
            try:
                self._io.unlink(temp)
            except FileNotFoundError:
                pass
            except (OSError, ValueError):
                left = True
        if left:
            abandon(self.token)  # a sweep in this process may remove them now

    def _close_fds(self) -> None:
        while self._fds:
            self._io.close(self._fds.pop())


def commit_files(prefix: str, files: Sequence[tuple[str, str]], index_bytes: bytes,
                 storage: StorageConfig | None = None, *, token: str | None = None) -> None:
    """Commit finished data files (``(temporary, final)`` pairs, already fsynced) and the index at
    ``prefix`` with one :class:`AtomicCommit`. Temporary files that were not placed are left to the
    caller's ``abort``. Raises ``CheckpointError``."""
    AtomicCommit(prefix, storage or StorageConfig(), token).run(files, index_bytes)


def commit_in_flight(prefix: str) -> bool:
    """Whether a writer that may still be running is committing a checkpoint at ``prefix`` (its index's
    temporary file exists), so the data files there may be its own."""
    for temp in glob.glob(glob.escape(prefix) + ".index.tmp-*"):
        match = LEFTOVER.fullmatch(os.path.basename(temp))
        if match and owner_alive(int(match["pid"]), match["host"], token_of(temp)):
            return True
    return False


def atomic_write(path: str, data: bytes, storage: StorageConfig | None = None, *, token: str | None = None) -> None:
    """Write a whole file under a temporary name, then rename it into place (and fsync the dir).

    Raises ``OSError``; callers turn it into a ``CheckpointError`` naming what they were writing.
    """
    storage = storage or StorageConfig()
    io = storage.io
    token = token or writer_token()
    temp = f"{path}.tmp-{token}"
    try:
        fd = io.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            io.pwrite(fd, data, 0)
            if storage.fsync:
                io.fsync(fd)
        finally:
            io.close(fd)
        io.replace(temp, path)
    except BaseException:
        try:
            io.unlink(temp)
        except FileNotFoundError:
            pass
        except (OSError, ValueError):
            abandon(token)
        raise
    if storage.fsync:
        io.fsync_dir(os.path.dirname(path))


def remove_checkpoint(prefix: str | os.PathLike, storage: StorageConfig | None = None) -> None:
    """Delete a checkpoint: its index first, durably (so it is invisible at once), then its data shards.

    A crash in between leaves only data files without an index, which the next sweep removes. Data
    files are left alone when another writer is committing a checkpoint at the same prefix; and
    since such a writer may start at any moment, each data file is deleted only if it is still the
    file the index named (same inode, noted before the index was removed): it is first renamed to
    a temporary name of this deletion, checked, and deleted, or else put back if that name is free.
    If the directory fsync fails, the data files are still deleted before the error is raised. An
    overwrite's replaced files of this prefix still pending deletion are waited for first.
    """
    storage = storage or StorageConfig()
    prefix = os.fspath(prefix)
    settle(prefix=prefix)
    index = prefix + ".index"
    owned = {path: _inode(path) for path in shard_files(prefix)}  # while the index still names them
    failure: CheckpointError | None = None
    try:
        existed = _unlink_missing_ok(storage.io, index)
    except OSError as exc:
        raise io_error("delete checkpoint", index, exc) from exc  # its data must stay while it is visible
    try:
        if existed and storage.fsync:
            storage.io.fsync_dir(os.path.dirname(prefix))
    except OSError as exc:
        failure = io_error("sync directory after deleting", index, exc)
    if not (commit_in_flight(prefix) or os.path.lexists(index)):  # else the data files are another writer's
        token = writer_token()
        for path, inode in owned.items():
            try:
                _unlink_if_same(storage.io, path, inode, f"{path}.tmp-{token}")
            except OSError as exc:
                abandon(token)  # what is left under this deletion's name is the sweep's
                failure = failure or io_error("delete data file", path, exc)
    if failure is not None:
        raise failure


def _inode(path: str) -> tuple[int, int] | None:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _unlink_if_same(io: PosixIO, path: str, inode: tuple[int, int] | None, grabbed: str) -> None:
    """Delete ``path`` if it is still the file ``inode`` names; a file a writer put there meanwhile stays."""
    if inode is None:
        return
    try:
        io.replace(path, grabbed)  # atomic: whatever is at path now is ours to inspect
    except FileNotFoundError:
        return
    if _inode(grabbed) != inode:
        try:
            os.link(grabbed, path)  # back, unless yet another file took the name meanwhile
        except FileExistsError:
            pass
    io.unlink(grabbed)


def _unlink_missing_ok(io: PosixIO, path: str) -> bool:
    """Unlink ``path``; False if it did not exist."""
    try:
        io.unlink(path)
    except FileNotFoundError:
        return False
    return True


def open_regular(path: str, what: str) -> tuple[int, os.stat_result]:
    """Open ``path`` read-only if it is a regular file: ``(fd, fstat)``.

    Opened with ``O_NONBLOCK`` so a FIFO cannot block the open, then checked with ``fstat``;
    anything but a regular file is a DataLossError naming it. FileNotFoundError and NotADirectoryError
    (a parent that is a file) pass through: the file is not there.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        raise
    except ValueError as exc:  # an embedded NUL
        raise InvalidArgumentError(f"cannot open {what} {path!r}: {exc}", path=path) from None
    except IsADirectoryError:
        raise DataLossError(f"{what} {path!r} is a directory, not a regular file", path=path,
                            reason=DataLossReason.NOT_REGULAR_FILE) from None
    except OSError as exc:
        raise io_error(f"open {what}", path, exc) from exc
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        kind = _KINDS.get(stat.S_IFMT(st.st_mode), "not a regular file")
        raise DataLossError(f"{what} {path!r} is {kind}, not a regular file", path=path,
                            reason=DataLossReason.NOT_REGULAR_FILE)
    return fd, st


SPARSE_CHECK_BYTES = 64 << 20  # entries this large are checked for holes before memory is allocated for them
_SPARSE_CHUNK = 16 << 20


def check_sparse_range(fd: int, path: str, key: str, offset: int, size: int, stored_crc: int) -> None:
    """DataLossError (``crc_mismatch``) before anything is allocated, when the ``size`` bytes of ``key`` at
    ``offset`` span a hole of a sparse file and fail their CRC.

    A sparse data file can declare GiBs (or TiBs) that occupy no disk: this reads only the bytes
    actually present, 16 MiB at a time, and accounts for each hole by arithmetic (CRC-32C of zeros).
    A range without holes, as every writer leaves, costs one ``lseek``.
    """
    end = offset + size
    if size < SPARSE_CHECK_BYTES or _next(fd, offset, os.SEEK_HOLE, end) >= end:
        return
    value, pos = 0, offset
    buf = bytearray(min(_SPARSE_CHUNK, size))
    while pos < end:
        data = _next(fd, pos, os.SEEK_DATA, end)
        if data > pos:
            value = crc.combine(value, _zeros_crc(data - pos), data - pos)
            pos = data
        hole = _next(fd, pos, os.SEEK_HOLE, end)
        while pos < hole:
            n = os.preadv(fd, [memoryview(buf)[: min(len(buf), hole - pos)]], pos)
            if n == 0:
                raise DataLossError(f"data file {path!r} ended while reading key {key!r}", path=path, key=key,
                                    reason=DataLossReason.TRUNCATED)
            value = crc.crc32c(memoryview(buf)[:n], value)
            pos += n
    if crc.mask(value) != stored_crc:
        raise DataLossError(f"checksum mismatch for key {key!r} in {path!r}: the {size} bytes it declares are "
                            f"mostly a hole of a sparse file and do not match the stored CRC32C {stored_crc:#010x}",
                            path=path, key=key, reason=DataLossReason.CRC_MISMATCH)


def _next(fd: int, pos: int, whence: int, end: int) -> int:
    """The next data (``SEEK_DATA``) or hole (``SEEK_HOLE``) offset at or after ``pos``, at most ``end``;
    where the file system cannot tell, the whole file is data."""
    try:
        return min(os.lseek(fd, pos, whence), end)
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # no data after pos: the rest is a hole
            return end
        return pos if whence == os.SEEK_DATA else end


@functools.lru_cache(maxsize=256)
def _zeros_crc(n: int) -> int:
    """CRC-32C of ``n`` zero bytes, in O(log n) combines."""
    if n <= 1 << 16:
        return crc.crc32c(bytes(n))
    half = n // 2
    return crc.combine(_zeros_crc(half), _zeros_crc(n - half), n - half)


def read_small_file(path: str, what: str, limit: int) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes (by its real length); DataLossError otherwise."""
    fd, st = open_regular(path, what)
    try:
        out = bytearray()
        while st.st_size <= limit and len(out) <= limit:  # never more than limit + 1 bytes, even if it grows
            chunk = os.pread(fd, min(1 << 20, limit + 1 - len(out)), len(out))
            if not chunk:
                break
            out += chunk
        if st.st_size > limit or len(out) > limit:
            raise DataLossError(f"{what} {path!r} has more than the {limit} bytes it may have", path=path,
                                reason=DataLossReason.TOO_LARGE)
        return bytes(out)
    except OSError as exc:
        raise io_error(f"read {what}", path, exc) from exc
    finally:
        os.close(fd)


def read_state(directory: str | os.PathLike) -> statefile.CheckpointState | None:
    """The directory's ``checkpoint`` state; None when there is none.

    A state file that exists but is damaged (checksum mismatch, unparsable, empty, not a regular
    file, absurdly large) is a DataLossError naming it, never taken for "no checkpoint".
    """
    path = os.path.join(os.fspath(directory), STATE_FILE)
    try:
        raw = read_small_file(path, "checkpoint state file", MAX_STATE_BYTES)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return statefile.parse_bytes(raw, path)


def write_state(directory: str | os.PathLike, state: statefile.CheckpointState,
                storage: StorageConfig | None = None) -> None:
    """Atomically replace the directory's ``checkpoint`` state file (CheckpointError on failure)."""
    path = os.path.join(os.fspath(directory), STATE_FILE)
    try:
        atomic_write(path, statefile.format(state).encode("utf-8"), storage)
    except OSError as exc:
        raise io_error("write state file", path, exc) from exc


def publish_state(directory: str | os.PathLike, state: statefile.CheckpointState, new_prefix: str,
                  storage: StorageConfig | None = None) -> None:
    """Write the state file that names the just-committed ``new_prefix``.

    If that fails while the state file on disk does not name ``new_prefix`` yet, the new checkpoint
    is deleted again, so a failed save leaves nothing behind: :class:`StatePublishError`. If the
    state file does name it (a directory fsync failed after the rename), the save stays committed:
    :class:`CommittedSaveError`.
    """
    storage = storage or StorageConfig()
    try:
        write_state(directory, state, storage)
    except CheckpointError as exc:
        if _state_names(directory, new_prefix):
            raise CommittedSaveError(f"checkpoint {new_prefix!r} is committed and listed, but {exc}",
                                     checkpoint=new_prefix, path=exc.path, errno=exc.errno) from exc
        try:
            remove_checkpoint(new_prefix, storage)
        except CheckpointError:
            pass  # it stays unlisted; the disk is failing and the error raised below says so
        raise StatePublishError(f"{exc}; checkpoint {new_prefix!r} was withdrawn", checkpoint=new_prefix,
                                path=exc.path, errno=exc.errno) from exc


def _state_names(directory: str | os.PathLike, prefix: str) -> bool:
    try:
        state = read_state(directory)
    except CheckpointError:
        return False
    if state is None:
        return False
    named = (state.model_checkpoint_path, *state.all_model_checkpoint_paths)
    return os.path.abspath(prefix) in {os.path.abspath(os.path.join(directory, p)) for p in named}
