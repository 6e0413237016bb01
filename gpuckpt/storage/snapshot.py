"""Reading one version of a checkpoint while another process may be replacing it.

:func:`open_snapshot` opens the index and every data shard together, and checks that the
index did not change meanwhile; see its docstring for why that is enough.
"""

from __future__ import annotations

import glob
import os
import time
from collections.abc import Callable
from typing import Any

from ..errors import DataLossError, NotFoundError
from ..format.bundle import data_file_name
from .filesystem import LEFTOVER, _io_error, owner_alive

OVERWRITE_WAIT_S = 2.0  # how long a reader waits for a live writer's overwrite of the same prefix
_RETRY_SLEEP_S = 0.002


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
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                raise NotFoundError(f"data file {path!r} of checkpoint {self.prefix!r} is missing", path=path) from None
            except OSError as exc:
                raise _io_error("open data file", path, exc) from exc
            self._fds[shard] = (fd, os.fstat(fd).st_size)
        return self._fds[shard]

    def open_present(self) -> None:
        """Open every shard that exists now; a missing one raises only when it is read."""
        for shard in range(self.num_shards):
            try:
                self.open(shard)
            except NotFoundError:
                pass

    def close(self) -> None:
        for fd, _ in self._fds.values():
            os.close(fd)
        self._fds.clear()


def open_snapshot(prefix: str, parse: Callable[[bytes, str], Any]) -> tuple[Any, ShardFiles]:
    """Read ``prefix.index`` (``parse(bytes, path)``) and open its data shards as one consistent version.

    A writer replacing the checkpoint at this prefix renames the old index aside before it
    touches any data file. So if the index path still holds the same file after the shards
    are open, the open descriptors hold the data that index describes (later renames and
    deletions do not change open files); otherwise the attempt is repeated. While a live
    writer's overwrite has the index aside, the reader waits up to ``OVERWRITE_WAIT_S``.
    """
    index_path = prefix + ".index"
    deadline = time.monotonic() + OVERWRITE_WAIT_S
    while True:
        try:
            data, stamp = _read_stamped(index_path)
        except FileNotFoundError:
            if time.monotonic() < deadline and _overwrite_in_flight(index_path):
                time.sleep(_RETRY_SLEEP_S)
                continue
            raise NotFoundError(
                f"checkpoint not found: no file {index_path!r} (failed to find any matching files for {prefix})",
                path=index_path) from None
        index = parse(data, index_path)
        files = ShardFiles(prefix, index.num_shards)
        files.open_present()
        if _stamp(index_path) == stamp:
            return index, files
        files.close()
        if time.monotonic() >= deadline:
            raise NotFoundError(f"checkpoint {prefix!r} was replaced again and again while being opened; "
                                "no version stayed in place long enough to read", path=index_path)


def _stamp(path: str) -> tuple[int, ...] | None:
    """What identifies one version of a file: device, inode, size and change time (renames update it)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_ctime_ns


def _read_stamped(path: str) -> tuple[bytes, tuple[int, ...]]:
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            return f.read(), (st.st_dev, st.st_ino, st.st_size, st.st_ctime_ns)
    except IsADirectoryError:
        raise DataLossError(f"{path!r} is a directory, not a checkpoint index", path=path) from None
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise _io_error("read index", path, exc) from exc


def _overwrite_in_flight(index_path: str) -> bool:
    """Whether a running writer has moved this index aside to replace the checkpoint."""
    for aside in glob.glob(glob.escape(index_path) + ".old-*"):
        match = LEFTOVER.fullmatch(os.path.basename(aside))
        if match and owner_alive(int(match["pid"]), match["host"]):
            return True
    return False
