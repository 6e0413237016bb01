"""FileSystemReader: positioned, parallel, CRC-verified reads of one checkpoint's data files.

The index and the data shards are opened as one version by ``storage.files.open_consistent``.
``read_verified`` cuts the requested byte ranges into tasks of up to ``READ_TASK_BYTES`` (runs of
adjacent small ranges share one vectored ``preadv``; large ranges are split and their CRCs
joined with the GF(2) combine) and runs them on a small process-wide thread pool, each thread
reading its own contiguous part of the file in order (``run_in_lanes``). Each thread
checksums what it has just read, ``READ_CACHE_BYTES`` at a time, while the bytes are still in the
CPU cache (``crc32c`` releases the GIL), so the bytes land in their destination once and are
read from memory once more by the CRC, never copied.

The pool lives as long as the process; a reader owns only file descriptors, which ``close``
(or, as a last resort, collection) releases without waiting on anything.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any, NamedTuple

from ..errors import DataLossError, DataLossReason, InvalidArgumentError
from ..format import crc
from ..format.bundle import BundleEntry, BundleIndex, parse_index
from .base import ReadReport, ReadTarget
from .files import ShardFiles, open_consistent
from .filesystem import SPARSE_CHECK_BYTES, check_sparse_range
from .posixio import IOV_MAX as _IOV_MAX
from .posixio import advance

READ_TASK_BYTES = 8 << 20
READ_CACHE_BYTES = 512 << 10
READ_THREADS = 2

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def read_pool() -> ThreadPoolExecutor:
    """The process-wide reader threads (created on first use, never shut down by a reader)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(READ_THREADS, thread_name_prefix="gpuckpt-read")
        return _pool


def run_in_lanes(jobs: Sequence[tuple[Callable[[Any], Any], Any]], starts: Sequence[tuple[int, int]],
                 sizes: Sequence[int]) -> list[Any]:
    """Run ``function(argument)`` for each job on the reader threads; return the outcomes in job order.

    Each job reads ``sizes[i]`` bytes from ``starts[i]`` (shard, offset). Sorted by position, the jobs are cut
    into one contiguous lane per thread of about equal bytes, and each thread takes its lane's jobs front
    to back, so each reads its part of the file in order, as the kernel's readahead expects (threads
    taking jobs in turn made cold reads about 1.7x slower here: docs/performance.md, fourth round). A thread
    whose lane is done takes jobs from the back of the longest other lane, so a lane of costlier jobs
    (thousands of small tensors) does not leave the other thread idle. Every job has finished before
    this returns or raises."""
    count = len(jobs)
    threads = min(READ_THREADS, count)
    if threads <= 1:
        return [_call(job) for job in jobs]
    lanes = _lanes(sorted(range(count), key=starts.__getitem__), sizes, threads)
    outcomes: list[Any] = [None] * count
    lock = threading.Lock()

    def work(me: int) -> None:
        own = lanes[me]
        while True:
            with lock:
                if own:
                    i = own.popleft()
                else:
                    other = max(lanes, key=len)
                    if not other:
                        return
                    i = other.pop()
            outcomes[i] = _call(jobs[i])

    pool = read_pool()
    futures = [pool.submit(work, me) for me in range(threads)]
    wait(futures)
    for future in futures:
        future.result()  # raises what a job raised (each catches its own I/O errors)
    return outcomes


def _lanes(order: list[int], sizes: Sequence[int], count: int) -> list[deque[int]]:
    """``order`` cut into ``count`` contiguous lanes of about equal total size."""
    total = sum(sizes) or 1
    lanes: list[deque[int]] = [deque() for _ in range(count)]
    done = 0
    for i in order:
        lanes[min(count - 1, done * count // total)].append(i)
        done += sizes[i]
    return lanes


# (shard, file offset, target index, destination view)
_Piece = tuple[int, int, int, memoryview]


def _group_tasks(pieces: list[_Piece], task_bytes: int) -> list[list[_Piece]]:
    """Merge sorted pieces into tasks that each cover one contiguous range of one shard."""
    tasks: list[list[_Piece]] = []
    task: list[_Piece] = []
    size = end = 0
    shard = -1
    for piece in pieces:
        p_shard, offset, _, view = piece
        if task and (p_shard != shard or offset != end or size + view.nbytes > task_bytes):
            tasks.append(task)
            task, size = [], 0
        task.append(piece)
        shard, end = p_shard, offset + view.nbytes
        size += view.nbytes
    if task:
        tasks.append(task)
    return tasks


_EMPTY_CRC = crc.mask(0)  # the stored CRC of an empty tensor
GAP_BYTES = 64 << 10  # a hole this small between two wanted ranges is read into scratch rather than cut a run
_SCRATCH = memoryview(bytearray(GAP_BYTES))  # gap bytes land here and are never read (shared by every thread)


class Run(NamedTuple):
    """One range of one shard read by vectored reads: ``items`` are ``(buffer, target index, stored CRC)``
    back to back from ``offset``, ``nbytes`` in all; an index of -1 marks a gap read into scratch and not checked."""

    shard: int
    offset: int
    items: list[tuple[Any, int, int]]
    nbytes: int


def coalesce_runs(targets: Sequence[ReadTarget], task_bytes: int, small_limit: int,
                  gap_bytes: int = GAP_BYTES) -> tuple[list[Run], list[int], list[int]]:
    """Group the small targets (non-empty, at most ``small_limit`` bytes) into runs: consecutive in file
    order, in one shard, at most ``task_bytes`` each, holes of up to ``gap_bytes`` read into scratch.

    Returns the runs, the indices of the empty targets (nothing to read; their CRC is that of no bytes)
    and those of the larger ones. Raises InvalidArgumentError naming the key when a destination's size
    is not its length, before anything is read. A run's items point straight at the destinations'
    memory: no copy is made anywhere.
    """
    order: list[int] = []
    empty: list[int] = []
    large: list[int] = []
    in_order = True
    last = (-1, -1)
    for i, (key, shard, offset, length, _, dest) in enumerate(targets):
        if dest.nbytes != length:
            raise InvalidArgumentError(f"buffer of {dest.nbytes} bytes for {length} stored bytes of key {key!r}",
                                       key=key)
        if 0 < length <= small_limit:
            order.append(i)
            if in_order:
                in_order = last <= (shard, offset)
                last = (shard, offset)
        else:
            (large if length else empty).append(i)
    if not in_order:
        order.sort(key=lambda i: (targets[i][1], targets[i][2]))  # plans come in file order already
    runs: list[Run] = []
    items: list[tuple[Any, int, int]] = []
    shard = end = start = -1
    size = 0
    for i in order:
        _, t_shard, offset, length, stored, dest = targets[i]
        gap = offset - end
        if t_shard != shard or gap < 0 or gap > gap_bytes or size + gap + length > task_bytes:
            if items:
                runs.append(Run(shard, start, items, size))
            items = []
            shard, start, size = t_shard, offset, 0
        elif gap:
            items.append((_SCRATCH[:gap], -1, 0))
            size += gap
        items.append((dest, i, stored))
        end = offset + length
        size += length
    if items:
        runs.append(Run(shard, start, items, size))
    return runs, empty, large


def _call(job: tuple[Callable[[Any], Any], Any]) -> Any:
    function, argument = job
    return function(argument)


def read_run(fd: int, run: Run, batch_bytes: int = READ_CACHE_BYTES) -> tuple[list[int], int]:
    """Read ``run`` from ``fd`` with ``os.preadv`` (up to ``IOV_MAX`` buffers and about ``batch_bytes``
    a call, so each batch is checksummed while still in the CPU cache), then one CRC32C per target on
    its own destination. Returns the targets whose CRC differs and the number of items read whole
    (``len(run.items)`` unless the file ended first; the rest were not checked)."""
    items = run.items
    offset = run.offset
    bad: list[int] = []
    masked_crc32c = crc.masked_crc32c
    start = 0
    count = len(items)
    while start < count:
        stop, size = start, 0
        while stop < count and stop - start < _IOV_MAX and size < batch_bytes:
            size += items[stop][0].nbytes
            stop += 1
        done = _preadv_all(fd, [item[0] for item in items[start:stop]], offset, size)
        if done < size:  # the file ended: check what was read whole, report where it ended
            stop = _whole_items(items, start, stop, done)
        for buf, i, stored in items[start:stop]:
            if i >= 0 and masked_crc32c(buf) != stored:
                bad.append(i)
        if done < size:
            return bad, stop
        offset += size
        start = stop
    return bad, count


def _preadv_all(fd: int, bufs: list[Any], offset: int, size: int) -> int:
    """Fill ``bufs`` (``size`` bytes in all) from ``offset``; the bytes read, fewer only at the file's end."""
    n = os.preadv(fd, bufs, offset)
    if n == size or n == 0:
        return n
    done = n
    views = advance([_flat(b) for b in bufs], n)  # a short read: go on from where it stopped
    while views:
        n = os.preadv(fd, views, offset + done)
        if n == 0:
            break
        done += n
        views = advance(views, n)
    return done


def _whole_items(items: list[tuple[Any, int, int]], start: int, stop: int, done: int) -> int:
    """The end of the items of ``items[start:stop]`` that lie wholly in the first ``done`` bytes."""
    for j in range(start, stop):
        done -= items[j][0].nbytes
        if done < 0:
            return j
    return stop


def _flat(buf: Any) -> memoryview:
    """A flat byte view of a C-contiguous buffer (a memoryview or a NumPy array, ml_dtypes included)."""
    if isinstance(buf, memoryview) and buf.ndim == 1 and buf.itemsize == 1:
        return buf
    try:
        return memoryview(buf).cast("B")
    except (TypeError, ValueError):
        return buf.reshape(-1).view("uint8").data


class FileSystemReader:
    """A :class:`gpuckpt.storage.base.StorageReader` over POSIX files (see the module docstring)."""

    def __init__(self, prefix: str | os.PathLike):
        self.prefix = os.fspath(prefix)
        self.index_path = self.prefix + ".index"
        index, files = open_consistent(self.prefix, parse_index)
        self.index: BundleIndex = index
        self._files: ShardFiles = files
        self._closer = weakref.finalize(self, files.close)  # closing descriptors never blocks
        self._closer.atexit = False

    # -- 2. planning ------------------------------------------------------------------------
    def _open(self, shard: int) -> tuple[int, int]:
        if not self._closer.alive:
            raise InvalidArgumentError(f"the reader of checkpoint {self.prefix!r} is closed", path=self.prefix)
        return self._files.open(shard)

    def shard_size(self, shard: int) -> int:
        """The size in bytes of data shard ``shard`` (opened now if it was not yet)."""
        return self._open(shard)[1]

    def shard_path(self, shard: int) -> str:
        return self._files.path(shard)

    def check_present(self, key: str, entry: BundleEntry) -> None:
        """Before memory is allocated for a large unsliced entry: DataLossError if its bytes are a sparse
        file's hole that fails the CRC (``filesystem.check_sparse_range``)."""
        if entry.size >= SPARSE_CHECK_BYTES and not entry.is_sliced:
            fd, _ = self._open(entry.shard_id)
            check_sparse_range(fd, self.shard_path(entry.shard_id), key, entry.offset, entry.size, entry.crc32c)

    # -- 3. reading ------------------------------------------------------------------------
    def read_verified(self, targets: Sequence[ReadTarget], *, task_bytes: int | None = None) -> ReadReport:
        """Fill every target's destination and check its CRC; report the targets that failed.

        Small targets (up to ``READ_CACHE_BYTES`` and ``task_bytes``) are read in runs (see
        :func:`coalesce_runs`) and checked on the thread that read them; larger ones are cut into
        pieces whose CRCs are joined (:meth:`_large_tasks`). Runs and pieces share the pool."""
        task_bytes = task_bytes or READ_TASK_BYTES
        for shard in {t[1] for t in targets}:
            self._open(shard)
        runs, empty, large = coalesce_runs(targets, task_bytes, min(task_bytes, READ_CACHE_BYTES))
        large_targets = [targets[i] for i in large]
        tasks, split = self._large_tasks(large_targets, task_bytes)
        jobs: list[tuple[Callable[[Any], Any], Any]] = [(self._run, r) for r in runs]
        jobs += [(self._run_task, t) for t in tasks]
        starts = [(r.shard, r.offset) for r in runs] + [(t[0][0], t[0][1]) for t in tasks]
        sizes = [r.nbytes for r in runs] + [sum([piece[3].nbytes for piece in t]) for t in tasks]
        outcomes = run_in_lanes(jobs, starts, sizes)
        failed: dict[int, DataLossError] = {}
        for run, (bad, cut, error) in zip(runs, outcomes):
            for i in bad:
                failed[i] = self.crc_error(targets[i].key, run.shard, targets[i].crc32c)
            if cut < len(run.items):
                self._fail_rest(targets, run, cut, error, failed)
        for i in empty:
            if targets[i].crc32c != _EMPTY_CRC:
                failed[i] = self.crc_error(targets[i].key, targets[i].shard, targets[i].crc32c)
        if large:
            report = self._verify(large_targets, tasks, outcomes[len(runs):], split)
            failed.update((large[j], error) for j, error in report.failed)
        return ReadReport(tuple(sorted(failed.items())))

    def _run(self, run: Run) -> tuple[list[int], int, OSError | None]:
        """Read and check one run (:func:`read_run`) on a pool thread; an OSError fails all of it."""
        try:
            fd, _ = self._files.open(run.shard)
            bad, cut = read_run(fd, run)
            return bad, cut, None
        except OSError as exc:
            return [], 0, exc

    def _fail_rest(self, targets: Sequence[ReadTarget], run: Run, cut: int, error: OSError | None,
                   failed: dict[int, DataLossError]) -> None:
        """Every target of ``run`` from item ``cut`` on failed: the file could not be read, or ended there."""
        rest = [i for _, i, _ in run.items[cut:] if i >= 0]
        path = self.shard_path(run.shard)
        if error is not None:
            exc = DataLossError(f"cannot read data file {path!r}: {error.strerror}", path=path,
                                key=targets[rest[0]].key)
        else:
            exc = DataLossError(f"data file {path!r} ended while reading key {targets[rest[0]].key!r} (it is "
                                "shorter than when it was opened)", path=path, key=targets[rest[0]].key,
                                reason=DataLossReason.TRUNCATED)
        for i in rest:
            failed[i] = exc

    @staticmethod
    def _large_tasks(targets: Sequence[ReadTarget], task_bytes: int) -> tuple[list[list[_Piece]], set[int]]:
        """Targets larger than a small one, as tasks for :meth:`_run_task`: cut into pieces of at most
        ``task_bytes`` (each checksummed ``READ_CACHE_BYTES`` at a time, the CRCs joined), adjacent pieces
        grouped. Returns the tasks and the targets read in several pieces."""
        pieces: list[_Piece] = []
        append = pieces.append
        split: set[int] = set()
        for i, (_, shard, offset, length, _, dest) in enumerate(targets):
            dest = _flat(dest)
            if length <= task_bytes:
                append((shard, offset, i, dest))
                continue
            split.add(i)
            for start in range(0, length, task_bytes):
                append((shard, offset + start, i, dest[start : start + task_bytes]))
        if any(a[0] > b[0] or a[0] == b[0] and a[1] > b[1] for a, b in zip(pieces, pieces[1:])):
            pieces.sort(key=lambda p: (p[0], p[1]))  # plans come in file order already
        return _group_tasks(pieces, task_bytes), split

    def _verify(self, targets: Sequence[ReadTarget], tasks: list[list[_Piece]], results: list,
                split: set[int]) -> ReadReport:
        """Compare each target's CRC (its pieces' joined) with the stored one."""
        values = [0] * len(targets)  # raw CRC of each target (0: an empty one)
        parts: dict[int, list[tuple[int, int]]] = {}
        broken: dict[int, DataLossError] = {}
        for task, outcome in zip(tasks, results):
            if isinstance(outcome, DataLossError):
                for _, _, i, _ in task:
                    broken.setdefault(i, outcome)
                continue
            for (_, _, i, view), value in zip(task, outcome):
                if i in split:
                    parts.setdefault(i, []).append((view.nbytes, value))
                else:
                    values[i] = value
        for i, pieces in parts.items():
            value = 0
            for length, part in pieces:
                value = crc.combine(value, part, length)
            values[i] = value
        masked = crc.mask
        failed = []
        for i, (t, value) in enumerate(zip(targets, values)):
            if masked(value) != t.crc32c or i in broken:
                failed.append((i, broken[i] if i in broken else self.crc_error(t.key, t.shard, t.crc32c)))
        return ReadReport(tuple(failed))

    def crc_error(self, key: str, shard: int, stored: int, where: str = "") -> DataLossError:
        """The error for bytes of ``key`` that fail their CRC. It names the stored value, the key and
        the file, never a CRC computed over the bytes read (which would disclose them)."""
        path = self.shard_path(shard)
        return DataLossError(f"checksum mismatch for key {key!r} in {path!r}{where}: the bytes read do not match "
                             f"the stored CRC32C {stored:#010x}", path=path, key=key,
                             reason=DataLossReason.CRC_MISMATCH)

    def _run_task(self, task: list[_Piece]) -> list[int] | DataLossError:
        """Read one contiguous file range into its views and checksum them, ``READ_CACHE_BYTES`` at a
        time, so each byte is checksummed while it is still in the CPU cache."""
        shard, offset = task[0][0], task[0][1]
        try:
            fd, _ = self._files.open(shard)
            crcs = [0] * len(task)
            batch: list[tuple[int, memoryview]] = []
            size = 0
            for i, (_, _, _, view) in enumerate(task):
                if view.nbytes <= READ_CACHE_BYTES:
                    batch.append((i, view))
                    size += view.nbytes
                else:
                    for start in range(0, view.nbytes, READ_CACHE_BYTES):
                        sub = view[start : start + READ_CACHE_BYTES]
                        batch.append((i, sub))
                        size += sub.nbytes
                        if size >= READ_CACHE_BYTES:
                            offset = self._read_batch(fd, shard, offset, batch, crcs)
                            batch, size = [], 0
                    continue
                if size >= READ_CACHE_BYTES:
                    offset = self._read_batch(fd, shard, offset, batch, crcs)
                    batch, size = [], 0
            if batch:
                self._read_batch(fd, shard, offset, batch, crcs)
            return crcs
        except DataLossError as exc:
            return exc
        except OSError as exc:
            path = self.shard_path(shard)
            return DataLossError(f"cannot read data file {path!r}: {exc.strerror}", path=path)

    def _read_batch(self, fd: int, shard: int, offset: int, batch: list[tuple[int, memoryview]],
                    crcs: list[int]) -> int:
        pending = [v for _, v in batch]
        while pending:
            chunk = pending[:_IOV_MAX]
            n = os.preadv(fd, chunk, offset)
            if n == 0:
                path = self.shard_path(shard)
                raise DataLossError(f"data file {path!r} ended at offset {offset} while reading", path=path,
                                    reason=DataLossReason.TRUNCATED)
            offset += n
            if n == sum(v.nbytes for v in chunk):  # the usual case: the whole chunk read at once
                pending = pending[len(chunk):]
            else:
                pending = advance(pending, n)
        crc32c = crc.crc32c
        for i, view in batch:
            crcs[i] = crc32c(view, crcs[i])
        return offset

    def read_raw(self, shard: int, offset: int, dest: memoryview, key: str) -> None:
        """Fill ``dest`` from ``offset`` of ``shard``, unverified (the caller checks the CRC)."""
        fd, _ = self._open(shard)
        view = dest
        try:
            while view:
                n = os.preadv(fd, [view], offset)
                if n == 0:
                    path = self.shard_path(shard)
                    raise DataLossError(f"data file {path!r} ended while reading key {key!r}", path=path, key=key,
                                        reason=DataLossReason.TRUNCATED)
                view, offset = view[n:], offset + n
        except OSError as exc:
            path = self.shard_path(shard)
            raise DataLossError(f"cannot read data file {path!r}: {exc.strerror}", path=path, key=key) from exc

    # -- 4. closing ------------------------------------------------------------------------
    def close(self) -> None:
        """Close every file; safe to call twice."""
        self._closer()

    @property
    def closed(self) -> bool:
        return not self._closer.alive

    def __enter__(self) -> FileSystemReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
