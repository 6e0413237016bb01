"""The GPU engine: device tensors are gathered, checksummed by a CUDA kernel and staged through
pinned host memory; restores stream file bytes back through the same staging to the device.

Save, one staging batch (at most ``pool.max_lease`` bytes) at a time, on one CUDA stream:

1. gather: each device tensor (or a piece of a large one) is copied device-to-device into the
   device arena. This is the only read of the user's memory, and the consistent snapshot.
2. checksum: one ``gpuckpt.kernels.crc_segments`` launch computes the CRC32C of every piece in
   the batch (pieces of one tensor are joined on the host with the GF(2) combine).
3. stage: one copy-engine DMA moves the batch into a lease of the pinned staging pool.
4. write: the writer thread writes the lease to the data file and releases it, while the
   next batch is gathered.

Restore runs the other way: file bytes are read into pinned staging, DMA'd into a device
arena, and the kernel checks every CRC there before anything reaches a variable.
Uses Numba's CUDA API only, so the same code runs on Numba's CUDA simulator in CI.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .._deps import import_optional
from ..arrays import DeviceTensor, HostTensor
from ..errors import DataLossError
from ..format import crc
from ..format.bundle import BundleEntry
from ..plan import SavePlan, WriteItem
from .cpu import CpuEngine
from .staging import DEFAULT_BYTES, StagingPool
from .writer import WriterThread


@dataclass(frozen=True)
class _Piece:
    """Bytes ``[start, start + nbytes)`` of tensor ``index``, at ``arena_offset`` in the batch."""

    index: int
    start: int
    nbytes: int
    arena_offset: int


def _batches(sizes: Sequence[tuple[int, int]], limit: int) -> list[list[_Piece]]:
    """Cut (tensor index, nbytes) into pieces of at most ``limit`` bytes, packed into batches."""
    batches: list[list[_Piece]] = [[]]
    used = 0
    for index, nbytes in sizes:
        for start in range(0, nbytes, limit):
            n = min(limit, nbytes - start)
            if used + n > limit:
                batches.append([])
                used = 0
            batches[-1].append(_Piece(index, start, n, used))
            used += n
    return [b for b in batches if b]


def _join(crcs: list[list[tuple[int, int]]]) -> list[int]:
    """One raw CRC per tensor from its pieces' (length, crc), in order."""
    out = []
    for parts in crcs:
        value = parts[0][1] if len(parts) == 1 else 0
        for length, part in parts if len(parts) > 1 else ():
            value = crc.combine(value, part, length)
        out.append(value)
    return out


class GpuEngine:
    """Saves and restores device tensors through one device arena and one pinned staging pool,
    both sized once; ``close()`` (or garbage collection) releases them."""

    name = "gpu"

    def __init__(self, staging_bytes: int = DEFAULT_BYTES):
        self._cuda = import_optional("numba.cuda", extra="gpu")
        self._kernels = import_optional("gpuckpt.kernels", extra="gpu")
        self.pool = StagingPool(staging_bytes, allocator=lambda n: self._cuda.pinned_array(n, np.uint8))
        self._arena = self._cuda.device_array(self.pool.max_lease, np.uint8)
        self._stream = self._cuda.stream()

    # -- save --------------------------------------------------------------------------------
    def write(self, plan: SavePlan, tensors: Sequence[HostTensor | DeviceTensor], writer) -> list[int]:
        """Write every planned tensor; device ones through the kernels, host ones as the CPU engine does."""
        device = [i for i, t in enumerate(tensors) if isinstance(t, DeviceTensor)]
        masked: dict[int, int] = {}
        host_items = [(item, t) for item, t in zip(plan.items, tensors) if not isinstance(t, DeviceTensor)]
        if host_items:
            host_plan = SavePlan(plan.num_shards, tuple(i for i, _ in host_items), plan.shard_sizes)
            host_crcs = CpuEngine().write(host_plan, [t for _, t in host_items], writer)
            host_indices = [i for i, t in enumerate(tensors) if not isinstance(t, DeviceTensor)]
            masked.update(zip(host_indices, host_crcs))
        out = WriterThread(writer)
        try:
            raw = self._stage_device([plan.items[i] for i in device], [tensors[i] for i in device], out)
        finally:
            out.close()
        masked.update((i, crc.mask(value)) for i, value in zip(device, raw))
        return [masked[i] for i in range(len(tensors))]

    def _stage_device(self, items: Sequence[WriteItem], tensors: Sequence[DeviceTensor], out: WriterThread) -> list[int]:
        parts: list[list[tuple[int, int]]] = [[] for _ in tensors]
        for batch in _batches([(i, t.nbytes) for i, t in enumerate(tensors)], self.pool.max_lease):
            total = batch[-1].arena_offset + batch[-1].nbytes
            for p in batch:  # 1. gather: the snapshot of the user's memory
                src = tensors[p.index].data[p.start : p.start + p.nbytes]
                self._arena[p.arena_offset : p.arena_offset + p.nbytes].copy_to_device(src, stream=self._stream)
            offsets = np.array([p.arena_offset for p in batch], np.int64)
            sizes = np.array([p.nbytes for p in batch], np.int64)
            crcs = self._kernels.crc_segments(self._arena[:total], offsets, sizes, stream=self._stream)  # 2.
            lease = self.pool.lease(total)
            self._arena[:total].copy_to_host(lease.view, stream=self._stream)  # 3. DMA to pinned staging
            self._stream.synchronize()
            for p, value in zip(batch, crcs):
                parts[p.index].append((p.nbytes, int(value)))
            self._put_batch(batch, items, lease, out)  # 4. the writer thread releases the lease
        return _join(parts)

    def _put_batch(self, batch: list[_Piece], items: Sequence[WriteItem], lease, out: WriterThread) -> None:
        remaining = [len(batch)]

        def done() -> None:
            remaining[0] -= 1
            if remaining[0] == 0:
                self.pool.release(lease)

        for p in batch:
            item = items[p.index]
            out.put(item.shard, item.offset + p.start, lease.view[p.arena_offset : p.arena_offset + p.nbytes], done)

    # -- restore -----------------------------------------------------------------------------
    def read(self, reader, items: Sequence[tuple[str, BundleEntry]]):
        """Read numeric, unsliced entries into new device arrays, every CRC verified on the device.

        Returns one typed, shaped device array per item, all views of one arena; nothing is
        returned (and so nothing reaches a variable) unless every checksum matched.
        """
        total = sum(e.size for _, e in items)
        arena = self._cuda.device_array(max(total, 1), np.uint8)
        starts = np.cumsum([0] + [e.size for _, e in items])
        parts: list[list[tuple[int, int]]] = [[] for _ in items]
        for batch in _batches([(i, e.size) for i, (_, e) in enumerate(items)], self.pool.max_lease):
            lease = self.pool.lease(batch[-1].arena_offset + batch[-1].nbytes)
            try:
                for p in batch:
                    key, entry = items[p.index]
                    reader.read_unverified(key, entry, p.start, lease.view[p.arena_offset : p.arena_offset + p.nbytes])
                for p in batch:
                    dst = int(starts[p.index]) + p.start
                    arena[dst : dst + p.nbytes].copy_to_device(
                        lease.view[p.arena_offset : p.arena_offset + p.nbytes], stream=self._stream
                    )
                offsets = np.array([int(starts[p.index]) + p.start for p in batch], np.int64)
                sizes = np.array([p.nbytes for p in batch], np.int64)
                crcs = self._kernels.crc_segments(arena, offsets, sizes, stream=self._stream)
                self._stream.synchronize()
            finally:
                self.pool.release(lease)
            for p, value in zip(batch, crcs):
                parts[p.index].append((p.nbytes, int(value)))
        for (key, entry), value in zip(items, _join(parts) if items else []):
            if crc.mask(value) != entry.crc32c:
                raise DataLossError(
                    f"checksum mismatch for key {key!r} in checkpoint {reader.prefix!r} (verified on the GPU): "
                    f"stored {entry.crc32c:#010x}, computed {crc.mask(value):#010x}",
                    path=reader.prefix,
                    key=key,
                )
        return [
            arena[int(s) : int(s) + e.size].view(e.dtype.numpy).reshape(e.shape)
            for s, (_, e) in zip(starts, items)
        ]

    def close(self) -> None:
        """Release the pinned pool and the device arena."""
        self.pool.close()
        self._arena = None
