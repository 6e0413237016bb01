"""POSIX storage: how checkpoint bytes reach the disk so that a checkpoint is whole or invisible.

Commit protocol of :class:`FileSystemWriter` (call order: ``write``* → ``commit`` | ``abort``):

1. Data shards are written under temporary names ``<final>.tmp-<token>`` beside their final
   names, so the later renames stay within one directory and are atomic.
2. ``commit``: each data file is fsynced and closed; the files of an older checkpoint at the
   same prefix are renamed ``<old>.old-<token>`` (aside), index first, so it becomes invisible
   rather than pointing at new data, and the directory is fsynced; data files are renamed to
   their final names and the directory fsynced; the index is written to a temporary name,
   fsynced, renamed, and the directory fsynced once more; only then are the aside files deleted.
   Each directory fsync orders the renames before it ahead of those after it on disk, so no
   power cut can leave an index naming data that is not in place.
3. ``abort`` (or any failure) deletes the temporary files and puts aside files back; nothing
   visible changes.

A distributed save (``gpuckpt.distributed``) splits this: each process writes one shard with
``FileSystemWriter(..., shard_ids=[r])`` and ``finish()``-es it (fsync, close, temporary name
kept); one process then runs step 2 over every process's files with :func:`commit_files`.

A ``<token>`` is ``<pid>-<host tag>-<random>`` (:func:`writer_token`): a later sweep
(``storage.recovery``) removes such files only once that process is gone.

TensorFlow itself issues no fsync; with ``fsync=False`` gpuckpt skips them too (faster, but a
power cut may leave an index that names data which never reached the disk). See
``docs/durability.md``.
"""

from __future__ import annotations

import errno
import glob
import hashlib
import os
import re
import secrets
import socket
import stat
from collections.abc import Sequence

from ..errors import CheckpointError, DataLossError, InvalidArgumentError
from ..format import statefile
from ..format.bundle import data_file_name

STATE_FILE = "checkpoint"
_PWRITE_MAX = 1 << 30
_IOV_MAX = 1024
HOST_TAG = hashlib.blake2s(socket.gethostname().encode(), digest_size=4).hexdigest()
MAX_STATE_BYTES = 64 << 20  # a state file listing a million checkpoints is far smaller
_KINDS = {stat.S_IFDIR: "a directory", stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a character device",
          stat.S_IFBLK: "a block device", stat.S_IFSOCK: "a socket"}
LEFTOVER = re.compile(r"(?P<original>.+)\.(?P<kind>tmp|old)-(?P<pid>\d+)-(?P<host>[0-9a-f]{8})-[0-9a-f]{8}")


class PosixIO:
    """The system calls the writer makes; tests substitute a subclass that injects faults."""

    open = staticmethod(os.open)
    close = staticmethod(os.close)
    fsync = staticmethod(os.fsync)
    replace = staticmethod(os.replace)

    @staticmethod
    def pwrite(fd: int, data, offset: int) -> None:
        pwrite_all(fd, data, offset)


DEFAULT_IO: PosixIO = PosixIO()  # what every writer uses unless given one; tests monkeypatch it


def _io(io: PosixIO | None) -> PosixIO:
    return io if io is not None else DEFAULT_IO


def writer_token() -> str:
    """``<pid>-<host tag>-<random>``: names one writer's temporary and aside files."""
    return f"{os.getpid()}-{HOST_TAG}-{secrets.token_hex(4)}"


def owner_alive(pid: int, host: str) -> bool:
    """Whether the writer that named a file may still be running (other hosts' writers: assume so)."""
    if host != HOST_TAG or pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _fsync_dir(directory: str, io: PosixIO | None = None) -> None:
    """Make the directory's entries (renames, new and deleted names) durable."""
    fd = os.open(directory or ".", os.O_RDONLY)
    try:
        _io(io).fsync(fd)
    finally:
        os.close(fd)


def _io_error(action: str, path: str, exc: OSError) -> CheckpointError:
    what = os.strerror(exc.errno) if exc.errno else str(exc)
    error = CheckpointError(f"could not {action} {path!r}: {what}", path=path)
    error.errno = exc.errno
    return error


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
        if len(views) > 1:
            n = os.pwritev(fd, views[:_IOV_MAX], offset)
        else:
            n = os.pwrite(fd, views[0][:_PWRITE_MAX], offset)
        if n == 0:
            raise OSError(errno.EIO, "write returned 0 bytes")
        views, offset = advance(views, n), offset + n


def make_dirs(directory: str, *, fsync: bool = True, io: PosixIO | None = None) -> None:
    """Create ``directory`` and its missing parents, fsyncing each new entry's parent."""
    missing = []
    path = os.path.abspath(directory)
    while not os.path.isdir(path) and path != os.path.dirname(path):
        missing.append(path)
        path = os.path.dirname(path)
    for path in reversed(missing):
        try:
            os.mkdir(path)
        except FileExistsError:
            continue
        except ValueError as exc:  # an embedded NUL
            raise InvalidArgumentError(f"cannot create directory {path!r}: {exc}", path=path) from None
        except OSError as exc:
            raise _io_error("create directory", path, exc) from exc
        if fsync:
            try:
                _fsync_dir(os.path.dirname(path), io)
            except OSError as exc:
                raise _io_error("sync directory", os.path.dirname(path), exc) from exc


class FileSystemWriter:
    """Writes one checkpoint's data shards and commits its index atomically.

    ``shard_ids`` makes it write only some of the ``num_shards`` data files: local shard ``i``
    (what ``write`` takes) is the file of shard ``shard_ids[i]``. One process of a distributed
    save writes its own shard this way, ``finish``-es it, and one process commits them all
    with :func:`commit_files`.
    """

    def __init__(self, prefix: str | os.PathLike, num_shards: int, *, fsync: bool = True, io: PosixIO | None = None,
                 shard_ids: Sequence[int] | None = None):
        self.prefix = os.fspath(prefix)
        self.num_shards = num_shards
        self.fsync = fsync
        self._io = _io(io)
        self._token = writer_token()
        self._directory = os.path.dirname(self.prefix)
        if self._directory:
            make_dirs(self._directory, fsync=fsync, io=self._io)
        shard_ids = range(num_shards) if shard_ids is None else shard_ids
        self._finals = [data_file_name(self.prefix, s, num_shards) for s in shard_ids]
        self._temps = [f"{f}.tmp-{self._token}" for f in self._finals]
        self._fds: list[int] = []
        try:
            for temp in self._temps:
                self._fds.append(self._io.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644))
        except ValueError as exc:  # an embedded NUL
            self.abort()
            raise InvalidArgumentError(f"cannot create data file {temp!r}: {exc}", path=temp) from None
        except OSError as exc:
            self.abort()
            raise _io_error("create data file", temp, exc) from exc

    @property
    def token(self) -> str:
        """The token in this writer's temporary names (see :func:`writer_token`)."""
        return self._token

    def write(self, shard: int, offset: int, data) -> None:
        """Write ``data`` (a buffer or a list of buffers) at ``offset`` of shard ``shard``; thread-safe."""
        try:
            self._io.pwrite(self._fds[shard], data, offset)
        except OSError as exc:
            raise _io_error("write data file", self._temps[shard], exc) from exc

    def finish(self) -> list[tuple[str, str]]:
        """Make the written data durable (fsync) and close it; return ``(temporary, final)`` name pairs.

        The files keep their temporary names: nothing is visible until :func:`commit_files`.
        """
        try:
            if self.fsync:
                for fd, temp in zip(self._fds, self._temps):
                    try:
                        self._io.fsync(fd)
                    except OSError as exc:
                        raise _io_error("sync data file", temp, exc) from exc
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
        except CheckpointError:
            self.abort()
            raise
        try:
            commit_files(self.prefix, files, index_bytes, fsync=self.fsync, io=self._io, token=self._token)
        except CheckpointError:
            self.abort()
            raise

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
    except (OSError, ValueError):
        pass


def _undo(placed: list[str], aside: list[tuple[str, str]]) -> None:
    """Roll a failed commit back: remove new files (index first), then return old ones (data first, index last)."""
    for final in placed:
        _unlink_quietly(final)
    for moved, original in sorted(aside, key=lambda pair: pair[1].endswith(".index")):
        try:
            os.replace(moved, original)
        except OSError:
            pass


def commit_files(prefix: str, files: Sequence[tuple[str, str]], index_bytes: bytes, *, fsync: bool = True,
                 io: PosixIO | None = None, token: str | None = None) -> None:
    """Rename finished data files (``(temporary, final)`` pairs, already fsynced) into place, then
    write the index atomically: the commit step of the protocol in this module's docstring.

    The index's temporary file ``<prefix>.index.tmp-<token>`` is created first and stays until the
    index is renamed into place: while it exists and its writer lives, no sweep or deletion touches
    the data files of ``prefix`` (:func:`commit_in_flight`), so they are never mistaken for orphans.
    Files of an older checkpoint at ``prefix`` are put aside first and deleted at the end; on
    failure every new file that was placed is removed and the old ones are put back. Temporary
    files that were not placed are left to the caller's ``abort``. Raises ``CheckpointError``.
    """
    io = _io(io)
    token = token or writer_token()
    directory = os.path.dirname(prefix)
    index = prefix + ".index"
    marker = f"{index}.tmp-{token}"
    aside: list[tuple[str, str]] = []
    placed: list[str] = []
    fd: int | None = None
    try:
        fd = io.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        for old in ([index] if os.path.lexists(index) else []) + shard_files(prefix):
            io.replace(old, f"{old}.old-{token}")
            aside.append((f"{old}.old-{token}", old))
        if aside and fsync:
            _fsync_dir(directory, io)
        for temp, final in files:
            io.replace(temp, final)
            placed.append(final)
        if fsync:
            _fsync_dir(directory, io)
        io.pwrite(fd, index_bytes, 0)
        if fsync:
            io.fsync(fd)
        closing: int = fd
        fd = None
        io.close(closing)
        placed.append(index)  # no old index is left at this name, so whatever appears there is ours
        io.replace(marker, index)
        if fsync:
            _fsync_dir(directory, io)
    except OSError as exc:
        if fd is not None:
            io.close(fd)
        _unlink_quietly(marker)
        _undo(placed[::-1], aside)
        raise _io_error("commit checkpoint", index, exc) from exc
    for moved, _ in aside:
        _unlink_quietly(moved)


def commit_in_flight(prefix: str) -> bool:
    """Whether a writer that may still be running is committing a checkpoint at ``prefix`` (its index's
    temporary file exists), so the data files there may be its own."""
    for temp in glob.glob(glob.escape(prefix) + ".index.tmp-*"):
        match = LEFTOVER.fullmatch(os.path.basename(temp))
        if match and owner_alive(int(match["pid"]), match["host"]):
            return True
    return False


def atomic_write(path: str, data: bytes, *, fsync: bool = True, io: PosixIO | None = None,
                 token: str | None = None) -> None:
    """Write a whole file under a temporary name, then rename it into place (and fsync the dir).

    Raises ``OSError``; callers turn it into a ``CheckpointError`` naming what they were writing.
    """
    io = _io(io)
    temp = f"{path}.tmp-{token or writer_token()}"
    try:
        fd = io.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            io.pwrite(fd, data, 0)
            if fsync:
                io.fsync(fd)
        finally:
            io.close(fd)
        io.replace(temp, path)
    except BaseException:
        _unlink_quietly(temp)
        raise
    if fsync:
        _fsync_dir(os.path.dirname(path), io)


def shard_files(prefix: str) -> list[str]:
    """The data files that exist for ``prefix``, whatever their shard count."""
    pattern = re.compile(re.escape(os.path.basename(prefix)) + r"\.data-\d{5,}-of-\d{5,}$")
    candidates = glob.glob(glob.escape(prefix) + ".data-*-of-*")
    return [p for p in candidates if pattern.match(os.path.basename(p))]


def remove_checkpoint(prefix: str | os.PathLike, *, fsync: bool = True, io: PosixIO | None = None) -> None:
    """Delete a checkpoint: its index first, durably (so it is invisible at once), then its data shards.

    A crash in between leaves only data files without an index, which the next sweep removes. Data
    files are left alone when another writer is committing a checkpoint at the same prefix.
    If the directory fsync fails, the data files are still deleted before the error is raised.
    """
    prefix = os.fspath(prefix)
    index = prefix + ".index"
    failure: CheckpointError | None = None
    try:
        existed = _unlink_missing_ok(index)
    except OSError as exc:
        raise _io_error("delete checkpoint", index, exc) from exc  # its data must stay while it is visible
    try:
        if existed and fsync:
            _fsync_dir(os.path.dirname(prefix), io)
    except OSError as exc:
        failure = _io_error("sync directory after deleting", index, exc)
    if commit_in_flight(prefix) or os.path.lexists(index):
        return  # another writer is committing a new checkpoint here: the data files are its own
    for path in shard_files(prefix):
        try:
            _unlink_missing_ok(path)
        except OSError as exc:
            failure = failure or _io_error("delete data file", path, exc)
    if failure is not None:
        raise failure


def _unlink_missing_ok(path: str) -> bool:
    """Unlink ``path``; False if it did not exist."""
    try:
        os.unlink(path)
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
        raise DataLossError(f"{what} {path!r} is a directory, not a regular file", path=path) from None
    except OSError as exc:
        raise _io_error(f"open {what}", path, exc) from exc
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        kind = _KINDS.get(stat.S_IFMT(st.st_mode), "not a regular file")
        raise DataLossError(f"{what} {path!r} is {kind}, not a regular file", path=path)
    return fd, st


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
            raise DataLossError(f"{what} {path!r} has more than the {limit} bytes it may have", path=path)
        return bytes(out)
    except OSError as exc:
        raise _io_error(f"read {what}", path, exc) from exc
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


def write_state(directory: str | os.PathLike, state: statefile.CheckpointState, *, fsync: bool = True,
                io: PosixIO | None = None) -> None:
    """Atomically replace the directory's ``checkpoint`` state file (CheckpointError on failure)."""
    path = os.path.join(os.fspath(directory), STATE_FILE)
    try:
        atomic_write(path, statefile.format(state).encode("utf-8"), fsync=fsync, io=io)
    except OSError as exc:
        raise _io_error("write state file", path, exc) from exc


def publish_state(directory: str | os.PathLike, state: statefile.CheckpointState, new_prefix: str, *,
                  fsync: bool = True) -> None:
    """Write the state file that names the just-committed ``new_prefix``.

    If that fails while the state file on disk does not name ``new_prefix`` yet, the new
    checkpoint is deleted again, so a failed save leaves nothing behind. The CheckpointError
    raised says which happened in ``.withdrawn``.
    """
    try:
        write_state(directory, state, fsync=fsync)
    except CheckpointError as exc:
        exc.withdrawn = not _state_names(directory, new_prefix)
        if exc.withdrawn:
            try:
                remove_checkpoint(new_prefix, fsync=fsync)
            except CheckpointError:
                pass  # it stays unlisted; the disk is failing and the error raised below says so
        raise


def _state_names(directory: str | os.PathLike, prefix: str) -> bool:
    try:
        state = read_state(directory)
    except CheckpointError:
        return False
    if state is None:
        return False
    named = (state.model_checkpoint_path, *state.all_model_checkpoint_paths)
    return os.path.abspath(prefix) in {os.path.abspath(os.path.join(directory, p)) for p in named}

