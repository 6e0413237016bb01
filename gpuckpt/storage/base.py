"""The storage seam: what save and restore ask of the place where a checkpoint's bytes live.

Save and restore are mirror images above this line: save plans, checksums and hands bytes to
a :class:`StorageWriter`; restore plans (``gpuckpt.restore_plan``) and asks a
:class:`StorageReader` for verified bytes. ``gpuckpt.storage.filesystem.FileSystemWriter`` and
``gpuckpt.storage.reader.FileSystemReader`` implement them on POSIX files; any other store (an
object store, a test double) implements the same methods and must pass
``gpuckpt.testing.storage_conformance``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol, runtime_checkable

from ..errors import DataLossError
from ..format.bundle import BundleIndex


class ReadTarget(NamedTuple):
    """One stored byte range to read into ``dest`` (a writable C-contiguous buffer of exactly ``length``
    bytes: a memoryview, or a NumPy array read into directly), whose masked CRC32C must equal
    ``crc32c``; ``key`` names it in errors. A NamedTuple: a restore
    makes one per tensor, at a third of a frozen dataclass's cost."""

    key: str
    shard: int
    offset: int
    length: int
    crc32c: int
    dest: Any  # a writable C-contiguous buffer (memoryview, ndarray)


@dataclass(frozen=True)
class ReadReport:
    """What a verified read found: the indices (into the targets given) whose bytes failed
    verification, each with its error. Every other target holds its verified bytes."""

    failed: tuple[tuple[int, DataLossError], ...] = ()

    @property
    def ok(self) -> bool:
        return not self.failed


@runtime_checkable
class StorageWriter(Protocol):
    """Writes one checkpoint. Call order:

    1. construction with the checkpoint's prefix and shard count (nothing visible yet);
    2. ``write(shard, offset, data)`` any number of times, from any thread, in any order;
       ``data`` is a buffer or a list of buffers written back to back;
    3. exactly one of ``commit(index_bytes)`` (data made durable, then the index published
       atomically, last) or ``abort()`` (everything written is removed; an older checkpoint
       at the same prefix is left as it was). A failed ``commit`` has aborted already.
    """

    prefix: str
    num_shards: int

    def write(self, shard: int, offset: int, data) -> None: ...

    def commit(self, index_bytes: bytes) -> None: ...

    def abort(self) -> None: ...


@runtime_checkable
class StorageReader(Protocol):
    """Reads one version of one checkpoint. Call order:

    1. construction with the prefix: the index is read and every data file it needs is opened
       as one consistent version (a concurrent overwrite cannot mix two); ``index`` is the
       parsed index (``gpuckpt.format.bundle.BundleIndex``);
    2. ``shard_size(shard)`` for the planner's bounds checks (NotFoundError for a missing shard);
    3. ``read_verified(targets)`` and ``read_raw(shard, offset, dest)`` any number of times;
       ``read_verified`` reads every target (in parallel), checks each CRC and reports the ones
       that failed; ``read_raw`` is for engines that verify elsewhere (the GPU ring checks CRCs
       on the device);
    4. ``close()``: every file is closed; later reads raise. A reader is also a context manager.
    """

    prefix: str
    index: BundleIndex

    def shard_size(self, shard: int) -> int: ...

    def shard_path(self, shard: int) -> str: ...

    def read_verified(self, targets: Sequence[ReadTarget]) -> ReadReport: ...

    def read_raw(self, shard: int, offset: int, dest: memoryview, key: str) -> None: ...

    def close(self) -> None: ...

    def __enter__(self) -> StorageReader: ...

    def __exit__(self, *exc_info: object) -> None: ...
