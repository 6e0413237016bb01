"""Reading checkpoints: ``load_checkpoint``, ``list_variables``, ``latest_checkpoint``.

``CheckpointReader`` offers what users of ``tf.train.load_checkpoint`` expect, and nothing
more: it is TensorFlow's reader API over ``storage.reader.FileSystemReader`` (which owns the
files and the parallel, CRC-verified reads) and ``restore_plan`` (which checks each request
against the index and lays out its reads). Every tensor is verified before it is returned.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import numpy as np

from .arrays import aligned_empty
from .engine.cpu import read_host
from .errors import InvalidArgumentError, NotFoundError
from .format.bundle import BundleEntry
from .restore_plan import ReadItem, Request, build_restore_plan
from .session import read_string
from .storage.fallback import latest_in
from .storage.reader import FileSystemReader

log = logging.getLogger(__name__)


class CheckpointReader:
    """Random access to one checkpoint's tensors, by key (TensorFlow's ``CheckpointReader``)."""

    def __init__(self, prefix: str | os.PathLike):
        # the index and every data file are opened together, so a concurrent overwrite cannot mix versions
        self.storage = FileSystemReader(prefix)
        self.prefix = self.storage.prefix
        self.index_path = self.storage.index_path
        self.index = self.storage.index

    # -- TensorFlow's CheckpointReader surface ---------------------------------------------
    def keys(self) -> list[str]:
        """Every tensor key (header and slice entries excluded), in byte order."""
        return list(self.index.entries)

    def has_tensor(self, key: str) -> bool:
        return key in self.index.entries

    def entry(self, key: str) -> BundleEntry:
        try:
            return self.index.entries[key]
        except KeyError:
            raise NotFoundError(
                f"Key {key} not found in checkpoint {self.prefix!r}", path=self.index_path, key=key
            ) from None

    def get_variable_to_shape_map(self) -> dict[str, list[int]]:
        return {k: list(e.shape) for k, e in self.index.entries.items()}

    def get_variable_to_dtype_map(self) -> dict:
        return {k: e.dtype for k, e in self.index.entries.items()}

    def get_tensor(self, key: str):
        """The tensor's value: a NumPy array, ``bytes`` for a scalar string, object array of ``bytes`` for strings."""
        entry = self.entry(key)
        plan = self._plan([Request(key, repr(key), entry.dtype, entry.shape)])  # bounds checked before allocating
        if plan.strings:
            return read_string(self.storage, plan.strings[0])
        assert entry.dtype.numpy is not None  # string tensors were read above
        self.storage.check_present(key, entry)  # a sparse file's hole is not allocated for
        try:
            out = aligned_empty(entry.shape, entry.dtype.numpy)
        except MemoryError:  # a sparse data file can hold more bytes than this machine has memory
            raise InvalidArgumentError(f"cannot allocate {entry.num_elements * entry.dtype.itemsize} bytes for key "
                                       f"{key!r} of checkpoint {self.prefix!r}: not enough memory", key=key,
                                       path=self.index_path) from None
        self._run(plan.reads, [out])
        return out

    def debug_string(self) -> bytes:
        """TF's listing: ``KEY (DT_NAME) [d0,d1]`` per stored entry; slice pieces in, sliced wholes out."""
        rows = list(self.index.slice_entries.items())
        rows += [(k.encode("utf-8", "surrogateescape"), e) for k, e in self.index.entries.items() if not e.is_sliced]
        return b"".join(
            key + f" ({e.dtype.tf_enum_name}) [{','.join(map(str, e.shape))}]\n".encode() for key, e in sorted(rows)
        )

    # -- filling existing arrays ----------------------------------------------------------
    def read_into(self, key: str, out: np.ndarray) -> None:
        """Fill a C-contiguous array of the entry's dtype and shape with the verified tensor."""
        self.read_tensors([(key, out)])

    def read_tensors(self, pairs: Sequence[tuple[str, np.ndarray]]) -> None:
        """Fill many writable C-contiguous numeric arrays (of their entries' dtype and shape) at once, in
        place, every CRC verified; DataLossError names the first key that fails."""
        requests = []
        for key, out in pairs:
            entry = self.entry(key)
            if entry.dtype.is_string or out.dtype != entry.dtype.numpy or tuple(out.shape) != entry.shape \
                    or not out.flags.c_contiguous or not out.flags.writeable:
                kind = "non-contiguous " if not out.flags.c_contiguous else "read-only " if not out.flags.writeable \
                    else ""
                raise InvalidArgumentError(
                    f"cannot read key {key!r} ({entry.dtype.name} {list(entry.shape)}) into a "
                    f"{kind}{out.dtype} array of shape {list(out.shape)}", key=key)
            requests.append(Request(key, repr(key), entry.dtype, entry.shape))
        plan = self._plan(requests)
        self._run(plan.reads, [out for _, out in pairs])

    def read_unverified(self, key: str, entry: BundleEntry, start: int, out) -> None:
        """Raw bytes ``[start, start + len(out))`` of an entry, bounds-checked but not CRC-checked:
        for engines that verify elsewhere."""
        view = memoryview(out).cast("B")
        if start < 0 or start + view.nbytes > entry.size:
            raise InvalidArgumentError(f"byte range outside key {key!r}", key=key)
        self._plan([Request(key, repr(key), entry.dtype, entry.shape)])  # the bytes must exist in the file
        self.storage.read_raw(entry.shard_id, entry.offset + start, view, key)

    def _plan(self, requests: Sequence[Request]):
        return build_restore_plan(self.index, requests, self.storage.shard_size, prefix=self.prefix,
                                  shard_path=self.storage.shard_path)

    def _run(self, reads: Sequence[ReadItem], dests: Sequence[np.ndarray]) -> None:
        failed = read_host(self.storage, reads, dests)
        if failed:
            raise failed[min(failed)]

    def close(self) -> None:
        """Close every file (also done when the reader is collected)."""
        self.storage.close()

    def __enter__(self) -> CheckpointReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def latest_checkpoint(checkpoint_dir: str | os.PathLike) -> str | None:
    """The newest checkpoint named by ``checkpoint_dir/checkpoint``, if its index exists; else None.

    A damaged state file is never taken for "no checkpoint": the newest checkpoint that verifies is
    returned with a warning, or the DataLossError raised (``storage.fallback.latest_in``).
    """
    return latest_in(os.fspath(checkpoint_dir))


def _resolve(path: str | os.PathLike) -> str:
    path = os.fspath(path)
    if os.path.isdir(path):
        latest = latest_checkpoint(path)
        if latest is None:
            raise NotFoundError(f"Couldn't find 'checkpoint' file or checkpoints in given directory {path}", path=path)
        return latest
    return path


def load_checkpoint(path: str | os.PathLike) -> CheckpointReader:
    """Open a checkpoint by prefix, or the latest one of a directory."""
    return CheckpointReader(_resolve(path))


def list_variables(path: str | os.PathLike) -> list[tuple[str, list[int]]]:
    """``(key, shape)`` of every tensor, sorted by key."""
    with load_checkpoint(path) as reader:
        return sorted(reader.get_variable_to_shape_map().items())
