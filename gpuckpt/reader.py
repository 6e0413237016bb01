"""Reading checkpoints: ``load_checkpoint``, ``list_variables``, ``latest_checkpoint``.

``CheckpointReader`` offers what users of ``tf.train.load_checkpoint`` expect. Every tensor is
read with one positional read into its (page-aligned) destination and its CRC verified before
it is returned; large tensors are read in chunks on a helper thread while the calling thread
checksums the previous chunk, so verification hides behind the read.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .arrays import aligned_empty
from .errors import DataLossError, InvalidArgumentError, NotFoundError
from .format import crc, strings
from .format.bundle import BundleEntry, parse_index
from .format.slices import slice_key
from .storage.fallback import latest_in
from .storage.filesystem import advance
from .storage.snapshot import open_snapshot

log = logging.getLogger(__name__)

READ_TASK_BYTES = 8 << 20
READ_CACHE_BYTES = 512 << 10
READ_THREADS = 2
_IOV_MAX = 1024


def _pread_exact(fd: int, view: memoryview, offset: int, path: str, key: str) -> None:
    while view:
        n = os.preadv(fd, [view], offset)
        if n == 0:
            raise DataLossError(f"data file {path!r} ended while reading key {key!r}", path=path, key=key)
        view, offset = view[n:], offset + n


def _group_tasks(pieces: list[tuple[int, int, int, memoryview]]) -> Iterator[list]:
    """Merge sorted pieces into tasks that each cover one contiguous range of one shard."""
    task: list = []
    size = 0
    for piece in pieces:
        shard, offset, _, view = piece
        if task and (shard != task[-1][0] or offset != task[-1][1] + task[-1][3].nbytes or size + view.nbytes > READ_TASK_BYTES):
            yield task
            task, size = [], 0
        task.append(piece)
        size += view.nbytes
    if task:
        yield task


class CheckpointReader:
    """Random access to one checkpoint's tensors, by key."""

    def __init__(self, prefix: str | os.PathLike):
        self.prefix = os.fspath(prefix)
        self.index_path = self.prefix + ".index"
        # the index and every data file are opened together, so a concurrent overwrite cannot mix versions
        self.index, self._files = open_snapshot(self.prefix, parse_index)
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

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
            raise NotFoundError(f"Key {key} not found in checkpoint {self.prefix!r}", path=self.index_path, key=key) from None

    def get_variable_to_shape_map(self) -> dict[str, list[int]]:
        return {k: list(e.shape) for k, e in self.index.entries.items()}

    def get_variable_to_dtype_map(self) -> dict:
        return {k: e.dtype for k, e in self.index.entries.items()}

    def get_tensor(self, key: str):
        """The tensor's value: a NumPy array, ``bytes`` for a scalar string, object array of ``bytes`` for strings."""
        entry = self.entry(key)
        if entry.dtype.is_string:
            if entry.is_sliced:
                raise InvalidArgumentError(f"sliced string tensor {key!r} is not supported", key=key)
            values = self._read_strings(entry, key)
            if not entry.shape:
                return values[0]
            out = np.empty(len(values), dtype=object)
            out[:] = values
            return out.reshape(entry.shape)
        self._check_bounds(key, entry)  # before allocating: a forged shape must not cost memory
        out = aligned_empty(entry.shape, entry.dtype.numpy)
        self.read_into(key, out)
        return out

    def read_into(self, key: str, out: np.ndarray) -> None:
        """Fill a C-contiguous array of the entry's dtype and shape with the verified tensor."""
        self.read_tensors([(key, out)])

    def read_tensors(self, pairs: Sequence[tuple[str, np.ndarray]]) -> None:
        """Fill many destination arrays at once, verifying every CRC.

        Byte ranges are cut into tasks of up to ``READ_TASK_BYTES``: adjacent small tensors share
        one vectored ``preadv``, large ones are split and their chunk CRCs combined. Two threads
        each read a task and checksum it while it is still in cache.
        """
        numeric = []
        for key, out in pairs:
            entry = self.entry(key)
            self._check_destination(key, entry, out)
            if entry.is_sliced:
                self._assemble(key, entry, out)
            else:
                numeric.append((key, entry, out.reshape(-1).view(np.uint8)))
        self._read_verified(numeric)

    def read_entries(self, items: Sequence[tuple[str, BundleEntry, np.ndarray]]) -> None:
        """Fill one C-contiguous buffer per stored entry (a whole tensor or one slice entry) and verify
        every CRC; ``key`` names the tensor in errors. For readers of single slices (resharding)."""
        flat = []
        for key, entry, out in items:
            if entry.is_sliced or entry.dtype.is_string:
                raise InvalidArgumentError(f"read_entries reads stored numeric entries, not {key!r}", key=key)
            if out.nbytes != entry.size or not out.flags.c_contiguous:
                raise InvalidArgumentError(f"buffer of {out.nbytes} bytes for an entry of {entry.size} bytes "
                                           f"of key {key!r}", key=key)
            flat.append((key, entry, out.reshape(-1).view(np.uint8)))
        self._read_verified(flat)

    def read_unverified(self, key: str, entry: BundleEntry, start: int, out) -> None:
        """Raw bytes ``[start, start + len(out))`` of an entry, bounds-checked but not CRC-checked:
        for engines that verify elsewhere (the GPU engine checks CRCs on the device)."""
        fd, path = self._locate(entry, key)
        view = memoryview(out).cast("B")
        if start < 0 or start + view.nbytes > entry.size:
            raise InvalidArgumentError(f"byte range outside key {key!r}", key=key)
        _pread_exact(fd, view, entry.offset + start, path, key)

    @staticmethod
    def _check_destination(key: str, entry: BundleEntry, out: np.ndarray) -> None:
        """InvalidArgumentError unless ``out`` is a C-contiguous array of the entry's dtype and shape."""
        if out.dtype != entry.dtype.numpy or tuple(out.shape) != entry.shape or not out.flags.c_contiguous:
            raise InvalidArgumentError(
                f"cannot read key {key!r} ({entry.dtype.name} {list(entry.shape)}) into a "
                f"{'non-contiguous ' if not out.flags.c_contiguous else ''}{out.dtype} array of shape {list(out.shape)}",
                key=key,
            )

    def _read_verified(self, items: list[tuple[str, BundleEntry, np.ndarray]]) -> None:
        """Read (key, entry, uint8 destination) triples and check each tensor's CRC."""
        pieces: list[tuple[int, int, int, memoryview]] = []  # (shard, file offset, tensor index, view)
        for i, (key, entry, dest) in enumerate(items):
            if entry.size:
                self._locate(entry, key)  # bounds: the bytes must exist before any read
            view = memoryview(dest)
            for start in range(0, entry.size, READ_TASK_BYTES):
                pieces.append((entry.shard_id, entry.offset + start, i, view[start : start + READ_TASK_BYTES]))
        pieces.sort(key=lambda p: (p[0], p[1]))
        tasks = list(_group_tasks(pieces))
        if len(tasks) > 1:
            with self._lock:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(READ_THREADS, thread_name_prefix="gpuckpt-read")
            results = list(self._pool.map(self._run_task, tasks))
        else:
            results = [self._run_task(t) for t in tasks]
        crcs: list[list[tuple[int, int]]] = [[] for _ in items]
        for task, task_crcs in zip(tasks, results):
            for (_, _, i, view), value in zip(task, task_crcs):
                crcs[i].append((view.nbytes, value))
        for (key, entry, _), parts in zip(items, crcs):
            value = parts[0][1] if len(parts) == 1 else 0
            for length, part in parts if len(parts) > 1 else ():
                value = crc.combine(value, part, length)
            self._check(value, entry, key, self._files.path(entry.shard_id))

    def _run_task(self, task: list[tuple[int, int, int, memoryview]]) -> list[int]:
        """Read one contiguous file range into its views and checksum them, ``READ_CACHE_BYTES`` at a
        time, so each byte is checksummed while it is still in the CPU cache."""
        shard, offset = task[0][0], task[0][1]
        fd, _ = self._files.open(shard)
        crcs = [0] * len(task)
        batch: list[tuple[int, memoryview]] = []
        size = 0
        for i, (_, _, _, view) in enumerate(task):
            for start in range(0, view.nbytes, READ_CACHE_BYTES):
                sub = view[start : start + READ_CACHE_BYTES]
                batch.append((i, sub))
                size += sub.nbytes
                if size >= READ_CACHE_BYTES:
                    offset = self._read_batch(fd, shard, offset, batch, crcs)
                    batch, size = [], 0
        if batch:
            self._read_batch(fd, shard, offset, batch, crcs)
        return crcs

    def _read_batch(self, fd: int, shard: int, offset: int, batch: list[tuple[int, memoryview]], crcs: list[int]) -> int:
        pending = [v for _, v in batch]
        while pending:
            n = os.preadv(fd, pending[:_IOV_MAX], offset)
            if n == 0:
                path = self._files.path(shard)
                raise DataLossError(f"data file {path!r} ended at offset {offset} while reading", path=path)
            offset += n
            pending = advance(pending, n)
        for i, view in batch:
            crcs[i] = crc.crc32c(view, crcs[i])
        return offset

    def debug_string(self) -> bytes:
        """TF's listing: ``KEY (DT_NAME) [d0,d1]`` per stored entry; slice pieces in, sliced wholes out."""
        rows = list(self.index.slice_entries.items())
        rows += [(k.encode("utf-8", "surrogateescape"), e) for k, e in self.index.entries.items() if not e.is_sliced]
        return b"".join(
            key + f" ({e.dtype.tf_enum_name}) [{','.join(map(str, e.shape))}]\n".encode() for key, e in sorted(rows)
        )

    def close(self) -> None:
        self._files.close()
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def __enter__(self) -> CheckpointReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    # -- reading bytes -----------------------------------------------------------------------
    def _locate(self, entry: BundleEntry, key: str) -> tuple[int, str]:
        fd, file_size = self._files.open(entry.shard_id)
        path = self._files.path(entry.shard_id)
        if entry.offset + entry.size > file_size:
            raise DataLossError(
                f"entry for key {key!r} points past the end of data file {path!r} "
                f"(offset {entry.offset} + size {entry.size} > {file_size} bytes): the file is truncated or the index corrupt",
                path=path,
                key=key,
            )
        return fd, path

    def _check_bounds(self, key: str, entry: BundleEntry) -> None:
        """Prove that the bytes a tensor claims exist on disk, for whole and sliced tensors alike."""
        if not entry.is_sliced:
            if entry.size:
                self._locate(entry, key)
            return
        stored = 0
        for extents in entry.slices:
            piece = self.index.slice_entries.get(slice_key(key, extents))
            if piece is not None and piece.size:
                self._locate(piece, key)
                stored += piece.size
        if stored < entry.num_elements * entry.dtype.itemsize:
            raise DataLossError(f"the slices of {key!r} hold fewer bytes than its shape {list(entry.shape)} needs", key=key)

    def _check(self, computed: int, entry: BundleEntry, key: str, path: str) -> None:
        if crc.mask(computed) != entry.crc32c:
            raise DataLossError(
                f"checksum mismatch for key {key!r} in {path!r}: stored {entry.crc32c:#010x}, "
                f"computed {crc.mask(computed):#010x} on the bytes read",
                path=path,
                key=key,
            )

    def _read_strings(self, entry: BundleEntry, key: str) -> list[bytes]:
        if entry.size == 0:
            return strings.decode(b"", entry.num_elements, entry.crc32c, path=self.index_path, key=key)
        fd, path = self._locate(entry, key)
        payload = bytearray(entry.size)
        _pread_exact(fd, memoryview(payload), entry.offset, path, key)
        values = strings.decode(bytes(payload), entry.num_elements, entry.crc32c, path=path, key=key)
        if len(values) != entry.num_elements:
            raise DataLossError(f"string tensor {key!r} in {path!r} has the wrong element count", path=path, key=key)
        return values

    def _assemble(self, key: str, entry: BundleEntry, out: np.ndarray) -> None:
        """Read each slice of a partitioned tensor and copy it into its region of ``out``."""
        covered = 0
        for extents in entry.slices:
            if len(extents) != len(entry.shape):
                raise DataLossError(f"slice of {key!r} has rank {len(extents)}, tensor has {len(entry.shape)}", key=key)
            region, shape = [], []
            for ext, dim in zip(extents, entry.shape):
                length = dim - ext.start if ext.length is None else ext.length
                if ext.start < 0 or length < 0 or ext.start + length > dim:
                    raise DataLossError(f"slice of {key!r} lies outside its shape {list(entry.shape)}", key=key)
                region.append(slice(ext.start, ext.start + length))
                shape.append(length)
            piece_key = slice_key(key, extents)
            piece = self.index.slice_entries.get(piece_key)
            if piece is None or piece.shape != tuple(shape) or piece.dtype != entry.dtype:
                raise DataLossError(f"slice entry {piece_key!r} of {key!r} is missing or malformed", path=self.index_path, key=key)
            buf = aligned_empty(piece.shape, entry.dtype.numpy)
            self._read_verified([(key, piece, buf.reshape(-1).view(np.uint8))])
            out[tuple(region)] = buf
            covered += buf.size
        if covered < out.size:
            raise DataLossError(f"the slices of {key!r} do not cover its shape {list(entry.shape)}", key=key)


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
