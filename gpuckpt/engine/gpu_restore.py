"""GPU restore: file bytes reach device variables through a bounded ring, verified on the device.

The save path's pinned staging in reverse. The ring is ``slots`` pairs of (pinned host slot,
device slot) of ``ring_bytes / slots`` each, allocated once and reused by every restore, so the
device memory a restore holds is the ring's, whatever the size of the checkpoint. For each
batch of planned ranges that fits one slot:

1. read: the ranges are read (positioned reads, no CRC) into the pinned slot, by a reader
   thread while the previous slot is on the device;
2. DMA: one host-to-device copy moves the slot to its device slot;
3. verify: one ``gpuckpt.kernels.crc_segments`` call checksums every range in the slot
   (ranges of one tensor split over slots are joined on the host with the GF(2) combine);
4. assign: only then does one scatter launch (``kernels.gather``'s pointer table, slot to
   destinations) copy every range of the slot into its destination's memory.

Verification and assignment are not fused into one kernel on purpose: a scatter that checksummed
as it wrote would put bytes into a variable before their CRC is known.

A tensor that fits in one slot never reaches its variable unverified. A larger one is copied
piece by piece as each slot verifies; if a later piece fails, the session zero-fills that
destination (it reports which). The first failing slot stops the ring: ranges not yet copied
are reported untouched, so a restore that fits in one slot is all-or-nothing at no cost.
Uses Numba's CUDA API only, so the same code runs on Numba's CUDA simulator in CI.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._deps import import_optional
from ..errors import DataLossError
from ..format import crc
from ..restore_plan import ReadItem
from ..storage.reader import read_pool
from .batches import Piece, slot_batches
from .cuda import device_of_pointer, numba_cuda, simulated

DEFAULT_RING_BYTES = 256 << 20
SLOTS = 2


@dataclass(frozen=True)
class RingOutcome:
    """Requests whose bytes failed verification, and requests whose destination was never written."""

    failed: dict[int, DataLossError]
    untouched: frozenset[int]


class RestoreRing:
    """Pinned and device slots of a bounded GPU restore; created once, reused, ``close()``-d."""

    def __init__(self, ring_bytes: int = DEFAULT_RING_BYTES, slots: int = SLOTS):
        self._cuda = numba_cuda()
        self._kernels = import_optional("gpuckpt.kernels", extra="gpu")
        self.ring_bytes = ring_bytes
        self.slot_bytes = max(ring_bytes // slots, 1)
        self._pinned = [self._cuda.pinned_array(self.slot_bytes, np.uint8) for _ in range(slots)]
        self._device = [self._cuda.device_array(self.slot_bytes, np.uint8) for _ in range(slots)]
        self._stream = self._cuda.stream()
        self._table: Any = None  # the scatter's device table, grown as needed and reused for every slot
        self._table_host: np.ndarray | None = None
        self._ordinal = 0 if simulated() else int(self._cuda.get_current_device().id)  # the ring's GPU
        self._owners: dict[int, int] = {}  # destination address -> its GPU
        self.launches = 0  # scatter launches (one per slot that has bytes)

    @property
    def device_bytes(self) -> int:
        """Device memory the ring holds (and so the most a restore through it holds)."""
        return self.slot_bytes * len(self._device)

    def read(self, storage, items: Sequence[ReadItem], dests: Sequence) -> RingOutcome:
        """Fill device destinations (``dests[item.request]``: flat uint8 device arrays) with the
        planned ranges (all read in place), every CRC checked on the device before its bytes are copied.

        While one slot is on the device (DMA, kernel, copies), a reader thread fills the next
        slot's pinned memory."""
        parts: list[list[tuple[int, int]]] = [[] for _ in items]
        self._owners = {}  # destinations' GPUs, asked afresh for every restore
        written: set[int] = set()
        batches = slot_batches([it.length for it in items], self.slot_bytes)
        pool = read_pool()
        pending = pool.submit(self._fill, storage, items, batches[0], self._pinned[0]) if batches else None
        try:
            for number, batch in enumerate(batches):
                pinned, device = self._pinned[number % len(self._pinned)], self._device[number % len(self._device)]
                assert pending is not None  # this slot's fill was submitted before the loop or one batch earlier
                pending.result()  # 1. this slot's bytes are in pinned memory
                pending = None
                if number + 1 < len(batches):  # the next slot fills while this one is on the device
                    following = self._pinned[(number + 1) % len(self._pinned)]
                    pending = pool.submit(self._fill, storage, items, batches[number + 1], following)
                values = self._verify_on_device(batch, pinned, device)
                for p, value in zip(batch, values):
                    parts[p.index].append((p.nbytes, int(value)))
                failed = self._check_finished(storage, items, batch, parts)
                if failed:
                    return self._outcome(items, failed, written)
                self._assign(items, batch, dests, device)  # 4. verified (or still being verified): assigned
                written.update(items[p.index].request for p in batch)
                self._stream.synchronize()
        finally:
            if pending is not None:
                pending.result()  # never leave a thread writing into the ring after returning
        return self._outcome(items, {}, written)

    @staticmethod
    def _fill(storage, items: Sequence[ReadItem], batch: Sequence[Piece], pinned) -> None:
        """1. Read one slot's pieces (positioned reads, unverified) into pinned memory."""
        for p in batch:
            if p.nbytes:
                it = items[p.index]
                view = memoryview(pinned[p.slot_offset:p.slot_offset + p.nbytes])
                storage.read_raw(it.shard, it.offset + p.start, view, it.key)

    def _verify_on_device(self, batch: Sequence[Piece], pinned, device):
        """2. one DMA of the slot to the device, 3. one CRC launch over its pieces; raw CRCs."""
        total = batch[-1].slot_offset + batch[-1].nbytes
        if not total:
            return [0] * len(batch)
        device[:total].copy_to_device(pinned[:total], stream=self._stream)
        offsets = np.array([p.slot_offset for p in batch], np.int64)
        sizes = np.array([p.nbytes for p in batch], np.int64)
        return self._kernels.crc_segments(device[:total], offsets, sizes, stream=self._stream)

    def _assign(self, items: Sequence[ReadItem], batch: Sequence[Piece], dests: Sequence, device) -> None:
        """4. One scatter launch copies every piece of the slot into its destination (``kernels.gather``'s
        table run backwards: slot bytes to the addresses the rows name). A destination on another GPU
        than the ring's (a kernel would need peer access to write there) is copied piece by piece instead."""
        from ..kernels import _launch, gather

        entries, elsewhere = [], []
        for p in batch:
            if p.nbytes:
                dest = dests[items[p.index].request]
                address = _launch.address(dest)
                if self._device_of(address) != self._ordinal:
                    elsewhere.append((p, dest))
                    continue
                entries.append((address, p.slot_offset, p.start, p.nbytes, 1, (dest.shape[0],), (1,)))
        for p, dest in elsewhere:  # device-to-device copies work across GPUs (unified addressing)
            dest[p.start:p.start + p.nbytes].copy_to_device(device[p.slot_offset:p.slot_offset + p.nbytes],
                                                            stream=self._stream)
        if not entries:
            return
        table = gather.gather_table(entries)
        rows = table.shape[0]
        if self._table is None or self._table.shape[0] < rows:
            self._table = self._cuda.device_array((rows, gather.COLUMNS), np.int64)
        self._table[:rows].copy_to_device(table, stream=self._stream)
        self._table_host = table  # the upload's source stays alive until the slot's synchronize
        gather.launch_scatter(self._table, rows, device, self._stream)
        self.launches += 1

    def _device_of(self, address: int) -> int:
        """The GPU that owns ``address`` (asked of the driver once per destination and restore)."""
        found = self._owners.get(address)
        if found is None:
            found = self._owners[address] = device_of_pointer(address)
        return found

    def _check_finished(self, storage, items: Sequence[ReadItem], batch: Sequence[Piece],
                        parts: list[list[tuple[int, int]]]) -> dict[int, DataLossError]:
        """CRC errors of the items whose last piece is in ``batch``."""
        failed = {}
        for p in batch:
            it = items[p.index]
            if p.start + p.nbytes < it.length:
                continue
            if crc.mask(crc.join(parts[p.index])) != it.crc32c:
                failed[it.request] = storage.crc_error(it.key, it.shard, it.crc32c, " (verified on the GPU)")
        return failed

    @staticmethod
    def _outcome(items: Sequence[ReadItem], failed: dict[int, DataLossError], written: set[int]) -> RingOutcome:
        requests = {it.request for it in items}
        return RingOutcome(failed, frozenset(requests - written))

    def close(self) -> None:
        self._pinned = []
        self._device = []
