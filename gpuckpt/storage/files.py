"""One consistent version of a checkpoint's files (index and data shards) while another process may replace it.

:func:`open_consistent` reads the index and opens the data shards its entries use, and checks
that the index did not change meanwhile; see its docstring for why that is enough. Every file
is opened with :func:`open_regular`: what is not a regular file (a directory, a FIFO, a device)
is refused before a byte is read, so nothing hangs and nothing is read without end.
"""

from __future__ import annotations

import glob
import os
import time
from collections.abc import Callable
from typing import Any

from ..errors import CheckpointError, DataLossError, DataLossReason, NotFoundError, io_error
from ..format.bundle import data_file_name
from ..format.sstable import FileSource
from .commit import LEFTOVER, owner_alive, token_of
from .filesystem import open_regular

__all__ = ["OVERWRITE_WAIT_S", "ShardFiles", "open_regular", "open_consistent", "read_index"]

OVERWRITE_WAIT_S = 2.0  # how long a reader waits for a live writer's overwrite of the same prefix
_RETRY_SLEEP_S = 0.002


class ShardFiles:
    """Read-only file descriptors of one checkpoint's data shards, opened on first use.

    ``extents`` maps a shard to the ``(offset, end, key)`` of each entry stored in it, sorted (the
    validated index's ``BundleIndex.extents``): a shard shorter than its entries claim is refused when
    opened, naming the first key cut off, before anything is read.
    """

    def __init__(self, prefix: str, num_shards: int, extents: dict[int, list[tuple[int, int, str]]] | None = None):
        self.prefix = prefix
        self.num_shards = num_shards
        self.extents = extents or {}
        self._fds: dict[int, tuple[int, int]] = {}

    def path(self, shard: int) -> str:
        return data_file_name(self.prefix, shard, self.num_shards)

    def open(self, shard: int) -> tuple[int, int]:
        """(fd, file size) of a shard; NotFoundError naming the file when it is missing."""
        if shard not in self._fds:
            if not 0 <= shard < self.num_shards:
                raise DataLossError(f"checkpoint {self.prefix!r} has no shard {shard} (it has {self.num_shards})",
                                    path=self.prefix, reason=DataLossReason.BAD_ENTRY)
            path = self.path(shard)
            try:
                fd, st = open_regular(path, "data file")
            except (FileNotFoundError, NotADirectoryError):
                raise NotFoundError(f"data file {path!r} of checkpoint {self.prefix!r} is missing", path=path) from None
            extents = self.extents.get(shard, [])  # disjoint, so in the order of their ends too
            if extents and st.st_size < extents[-1][1]:
                os.close(fd)
                _, end, key = next(item for item in extents if item[1] > st.st_size)
                raise DataLossError(f"entry for key {key!r} points past the end of data file {path!r} "
                                    f"(it ends at {end}, the file has {st.st_size} bytes): the file is truncated "
                                    "or the index corrupt", path=path, key=key, reason=DataLossReason.TRUNCATED)
            _advise_sequential(fd)
            self._fds[shard] = (fd, st.st_size)
        return self._fds[shard]

    def open_present(self) -> None:
        """Open every shard an entry uses that exists now; a missing one raises only when it is read."""
        for shard in sorted(self.extents):
            try:
                self.open(shard)
            except NotFoundError:
                pass

    def close(self) -> None:
        for fd, _ in self._fds.values():
            os.close(fd)
        self._fds.clear()


def read_index(index_path: str, parse: Callable[[Any, str], Any]) -> tuple[Any, tuple[int, ...]]:
    """``parse`` the index at ``index_path`` from an ``sstable.FileSource`` (footer first, only the blocks
    it names); return it with the stamp of the file read. FileNotFoundError and NotADirectoryError pass through."""
    fd, st = open_regular(index_path, "checkpoint index")
    try:
        return parse(FileSource(fd, st.st_size, index_path), index_path), _stamp_of(st)
    except OSError as exc:
        raise io_error("read index", index_path, exc) from exc
    finally:
        os.close(fd)


def _advise_sequential(fd: int) -> None:
    """Tell the kernel a data file is read front to back (each reader thread reads its lane in order,
    ``storage.reader.run_in_lanes``): Linux then reads ahead twice as far. Advice only: ignored where
    the call or the file system lacks it."""
    advise = getattr(os, "posix_fadvise", None)
    if advise is not None:
        try:
            advise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        except OSError:
            pass


def open_consistent(prefix: str, parse: Callable[[Any, str], Any]) -> tuple[Any, ShardFiles]:
    """Read ``prefix.index`` (``parse(source, path)``, see :func:`read_index`) and open the data shards its
    entries use, as one consistent version.

    A writer replacing the checkpoint at this prefix renames the old index aside before it
    touches any data file. So if the index path still holds the same file after the shards
    are open, the open descriptors hold the data that index describes (later renames and
    deletions do not change open files); otherwise the attempt is repeated, as it is when a shard
    does not match the index (it may be a newer version's) and the index changed meanwhile. While a live
    writer's overwrite has the index aside, the reader waits up to ``OVERWRITE_WAIT_S``; and an
    index missing with no overwrite in sight is looked for once more (the overwrite may have just
    finished), so a prefix that exists is never reported missing.
    """
    index_path = prefix + ".index"
    deadline = time.monotonic() + OVERWRITE_WAIT_S
    looked_again = False
    while True:
        try:
            index, stamp = read_index(index_path, parse)
        except (FileNotFoundError, NotADirectoryError):
            if time.monotonic() < deadline and _overwrite_in_flight(index_path):
                time.sleep(_RETRY_SLEEP_S)
                continue
            if not looked_again:
                looked_again = True
                continue
            raise NotFoundError(
                f"checkpoint not found: no file {index_path!r} (failed to find any matching files for {prefix})",
                path=index_path) from None
        files = ShardFiles(prefix, index.num_shards, index.extents)
        try:
            _check_shard_count(prefix, index, index_path)
            files.open_present()
        except CheckpointError:
            files.close()
            if _stamp(index_path) != stamp and time.monotonic() < deadline:
                continue  # the shards seen belong to a newer version: read that one
            raise
        except BaseException:
            files.close()
            raise
        if _stamp(index_path) == stamp:
            return index, files
        files.close()
        if time.monotonic() >= deadline:
            raise NotFoundError(f"checkpoint {prefix!r} was replaced again and again while being opened; "
                                "no version stayed in place long enough to read", path=index_path)


def _check_shard_count(prefix: str, index: Any, index_path: str) -> None:
    """DataLossError when the header declares more shards than its entries use and than files exist."""
    used = index.used_shards
    if index.num_shards <= max(len(used), 1):
        return
    present = len(glob.glob(glob.escape(prefix) + f".data-*-of-{index.num_shards:05d}"))
    if index.num_shards > present:
        raise DataLossError(f"index {index_path!r} declares {index.num_shards} data shards, but its entries use "
                            f"{len(used)} and {present} exist", path=index_path, reason=DataLossReason.BAD_INDEX)


def _stamp_of(st: os.stat_result) -> tuple[int, ...]:
    return st.st_dev, st.st_ino, st.st_size, st.st_ctime_ns


def _stamp(path: str) -> tuple[int, ...] | None:
    """What identifies one version of a file: device, inode, size and change time (renames update it)."""
    try:
        return _stamp_of(os.stat(path))
    except (FileNotFoundError, NotADirectoryError):
        return None


def _overwrite_in_flight(index_path: str) -> bool:
    """Whether a running writer has moved this index aside to replace the checkpoint."""
    for aside in glob.glob(glob.escape(index_path) + ".old-*"):
        match = LEFTOVER.fullmatch(os.path.basename(aside))
        if match and owner_alive(int(match["pid"]), match["host"], token_of(aside)):
            return True
    return False
