"""The CPU engine: checksums host tensors and hands their bytes to storage, overlapping the two;
on restore, has storage read file bytes straight into each destination's host memory.

CRC32C runs on the calling thread (the ``crc32c`` package releases the GIL) while one writer
thread issues positional writes, so checksumming hides behind the disk. Large tensors are
written straight from their own memory in ``CHUNK_BYTES`` pieces; runs of small tensors are
gathered into one vectored write, so thousands of variables cost a few system calls, not thousands.

Restore (:func:`read_host`) is the mirror: each planned range read in place goes straight into
its destination (the variable's own array when it offers one), verified by the storage reader's
threads; blocks that are only partly needed (slices, a rank's part of a tensor) go through a
scratch buffer of their own size, and the needed part is copied once verified.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..arrays import HostTensor, aligned_empty
from ..errors import DataLossError, DataLossReason
from ..format import crc
from ..plan import SavePlan
from ..restore_plan import ReadItem
from ..storage.base import ReadTarget
from ..storage.reader import run_in_lanes
from .writer import WriterThread

CHUNK_BYTES = 16 << 20
BATCH_BYTES = 4 << 20
SCRATCH_BYTES = 64 << 20  # scratch memory of a restore's partly needed blocks, at a time


class _Batch:
    """Gathers consecutive small tensors of one shard into a single vectored write."""

    def __init__(self, out: WriterThread):
        self.out = out
        self.shard = -1
        self.start = 0
        self.parts: list[np.ndarray] = []
        self.size = 0

    def add(self, shard: int, offset: int, data: np.ndarray) -> None:
        if self.parts and (
            shard != self.shard or offset != self.start + self.size or self.size + data.nbytes > BATCH_BYTES
        ):
            self.flush()
        if not self.parts:
            self.shard, self.start = shard, offset
        self.parts.append(data)
        self.size += data.nbytes

    def flush(self) -> None:
        if self.parts:
            self.out.put(self.shard, self.start, self.parts)  # one vectored write, no copy
            self.parts, self.size = [], 0


class CpuEngine:
    """Saves host tensors: computes each one's masked CRC and writes its bytes through ``writer``."""

    name = "cpu"

    def write(self, plan: SavePlan, tensors: Sequence[HostTensor], writer) -> list[int]:
        """Write every planned tensor via ``writer.write(shard, offset, data)``; return masked CRCs."""
        out = WriterThread(writer)
        batch = _Batch(out)
        crcs = []
        try:
            for item, tensor in zip(plan.items, tensors):
                crcs.append(self._write_one(item.shard, item.offset, tensor, out, batch))
            batch.flush()
        finally:
            out.close()
        return crcs

    @staticmethod
    def _write_one(shard: int, offset: int, tensor: HostTensor, out: WriterThread, batch: _Batch) -> int:
        """Hand one tensor's bytes over; its masked CRC is computed here unless already known
        (``string_crc``: a string payload's, or one an asynchronous save's capture computed)."""
        data, known = tensor.data, tensor.string_crc
        if data.nbytes < BATCH_BYTES // 4:
            batch.add(shard, offset, data)
            return known if known is not None else crc.masked_crc32c(data)
        batch.flush()
        value = 0
        for start in range(0, data.nbytes, CHUNK_BYTES):
            chunk = data[start : start + CHUNK_BYTES]
            if known is None:
                value = crc.crc32c(chunk, value)
            out.put(shard, offset + start, chunk)
        return known if known is not None else crc.mask(value)


def read_host(storage, items: Sequence[ReadItem], dests: Sequence[np.ndarray | None]) -> dict[int, DataLossError]:
    """Read planned ranges into host destinations (``dests[item.request]``, C-contiguous arrays),
    every CRC verified; return the failures by request index.

    Ranges read in place go straight into their destination, all in one parallel read. Blocks only
    partly needed go through scratch buffers, at most ``SCRATCH_BYTES`` of them at a time (a larger
    block alone), and only verified bytes are copied out of them.
    """
    failed: dict[int, DataLossError] = {}
    in_place = [item for item in items if item.src is None]
    if in_place:  # the destinations themselves are the read buffers (any C-contiguous array serves preadv)
        new = tuple.__new__  # one ReadTarget per tensor, without its generated __new__
        targets = [new(ReadTarget, (item.key, item.shard, item.offset, item.length, item.crc32c, dests[item.request]))
                   for item in in_place]
        for i, error in storage.read_verified(targets).failed:
            failed.setdefault(in_place[i].request, error)
    for group in _scratch_groups([item for item in items if item.src is not None]):
        group_dests = [_host_dest(dests, item.request) for item in group]
        buffers = [aligned_empty(item.block_shape, dest.dtype) for item, dest in zip(group, group_dests)]
        targets = [ReadTarget(item.key, item.shard, item.offset, item.length, item.crc32c,
                              buf.reshape(-1).view(np.uint8).data) for item, buf in zip(group, buffers)]
        for i, error in storage.read_verified(targets).failed:
            failed.setdefault(group[i].request, error)
        for item, buf, dest in zip(group, buffers, group_dests):
            if item.request not in failed:
                dest[item.dst] = buf[item.src]
    return failed


def _host_dest(dests: Sequence[np.ndarray | None], request: int) -> np.ndarray:
    """The host destination of a planned read (planned reads name only requests that have one)."""
    dest = dests[request]
    assert dest is not None
    return dest


def _scratch_groups(items: Sequence[ReadItem], limit: int | None = None) -> list[list[ReadItem]]:
    """Consecutive reads in groups of at most ``limit`` bytes (default ``SCRATCH_BYTES``; a larger block alone)."""
    limit = SCRATCH_BYTES if limit is None else limit
    groups: list[list[ReadItem]] = []
    size = 0
    for item in items:
        if not groups or size + item.length > limit:
            groups.append([])
            size = 0
        groups[-1].append(item)
        size += item.length
    return groups


VERIFY_JOB_BYTES = 8 << 20  # the ranges one verification job checks (one thread's share of the work)
VERIFY_WINDOW_BYTES = 512 << 10  # read and checksummed at a time, while still in the CPU cache


def verify_host(storage, items: Sequence[ReadItem]) -> dict[int, DataLossError]:
    """Check every planned range's CRC without placing its bytes anywhere; return the failures by request index.

    The ranges are cut into jobs of about ``VERIFY_JOB_BYTES``, all handed to the reader threads at
    once (one hand-off: a loaded host's scheduler makes every extra one cost), each thread taking a
    contiguous lane of them (``storage.reader.run_in_lanes``); each job reads its
    ranges through a scratch window of ``VERIFY_WINDOW_BYTES`` and checksums each window while it is
    in cache, so the memory is bounded by the threads' windows whatever the size of the checkpoint.
    A distributed restore verifies everything this way before any rank writes into a variable
    (``distributed/restore.py``).
    """
    jobs = _scratch_groups(items, VERIFY_JOB_BYTES)

    def run(job: list[ReadItem]) -> list[tuple[int, DataLossError]]:
        window = np.empty(max(1, min(VERIFY_WINDOW_BYTES, max(item.length for item in job))), np.uint8).data
        return [(item.request, error) for item in job if (error := _verify_one(storage, item, window)) is not None]

    outcomes = run_in_lanes([(run, job) for job in jobs], [(job[0].shard, job[0].offset) for job in jobs],
                            [sum(item.length for item in job) for job in jobs])
    failed: dict[int, DataLossError] = {}
    for outcome in outcomes:
        for request, error in outcome:
            failed.setdefault(request, error)
    return failed


def _verify_one(storage, item: ReadItem, window: memoryview) -> DataLossError | None:
    """The CRC check of one range, read through ``window`` piece by piece."""
    value = 0
    try:
        for start in range(0, item.length, window.nbytes):
            piece = window[: min(window.nbytes, item.length - start)]
            storage.read_raw(item.shard, item.offset + start, piece, item.key)
            value = crc.crc32c(piece, value)
    except DataLossError as exc:
        return exc
    if crc.mask(value) == item.crc32c:
        return None
    path = storage.shard_path(item.shard)
    return DataLossError(f"checksum mismatch for key {item.key!r} in {path!r}: the bytes read do not match the "
                         f"stored CRC32C {item.crc32c:#010x}", path=path, key=item.key,
                         reason=DataLossReason.CRC_MISMATCH)
