"""The GPU engine's save side: device tensors are gathered, checksummed by CUDA kernels and staged
through pinned host memory to the writer (restores run through ``gpu_restore.RestoreRing``).

Save runs through a ring of K staging slots per device (``RING_SLOTS``), each a device slot
and a pinned slot, allocated once and reused by every save (the pinned slots are leases of the
engine's :class:`StagingPool`, taken for the save and given back after it):

1. fence: the engine's compute stream waits on an event recorded on each producer's stream
   (torch's current stream, CuPy's, the array's declared stream; JAX arrays are waited for),
   so a value queued for update before the save is copied after that update, never half-way.
2. gather + CRC into device slot i: one launch of the fused kernel (``kernels.gather_crc``)
   copies every piece of the batch (any dtype, any strides) into the slot in file order and
   checksums each piece as it goes, one CRC value per table row; those values come back with
   one small download and are joined per piece on the host. One launch per slot, whatever the
   tensor count.
3. DMA: the copy stream waits on slot i's "gathered" event and moves it into pinned slot i.
4. write: the writer thread waits on slot i's "copied" event and writes the pinned bytes.
   The host waits only on events: while slot i is gathered, slot i-1 is copied and slot i-2
   is written. Slot i is gathered again only after its copy finished (a device-side wait) and
   its pinned bytes were written (the host waits for that before queueing slot i again).

The pointer table of a save (sources, slot offsets, layouts) is cached and rebuilt only when
the tensors' addresses, layouts or the plan change. On any error the engine waits for every
copy queued into staging before the staging is released, so the next save starts clean; every
wait ends in ``DeadlineExceededError`` after ``timeout`` seconds instead of hanging.

Restores run the other way through ``gpu_restore.RestoreRing`` (its own bounded ring, the same
batching helper, ``engine/batches.py``).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..arrays import DeviceTensor, HostTensor
from ..errors import DeadlineExceededError, InvalidArgumentError
from ..format import crc
from ..plan import SavePlan, WriteItem
from .batches import Piece, slot_batches
from .cpu import CpuEngine
from .cuda import WAIT_TIMEOUT_S, NumbaRuntime, check_kernel_toolchain, default_runtime, fence_producers
from .staging import DEFAULT_BYTES, StagingPool
from .writer import WriterThread

RING_SLOTS = 3
_SLOT_ALIGN = 256


@dataclass(frozen=True)
class _Write:
    """One positional write of a slot's bytes: ``nbytes`` at ``slot_offset`` go to ``offset`` of ``shard``."""

    shard: int
    offset: int
    slot_offset: int
    nbytes: int


@dataclass(frozen=True)
class _SlotPlan:
    """One batch: its pieces, the gather + CRC table, where each piece's rows start, and the merged writes."""

    pieces: tuple[Piece, ...]
    table: np.ndarray
    starts: np.ndarray  # first table row of each non-empty piece (``gather_crc.piece_starts``)
    nonempty: tuple[int, ...]  # positions in ``pieces`` of the non-empty pieces, in table order
    writes: tuple[_Write, ...]
    finishes: tuple[int, ...]  # tensors whose last byte is gathered in this slot

    @property
    def total(self) -> int:
        last = self.pieces[-1]
        return last.slot_offset + last.nbytes

    def piece_crcs(self, values: np.ndarray) -> list[int]:
        """Raw CRC-32C of every piece, from the kernel's per-row values (0 for an empty piece)."""
        from ..kernels import gather_crc

        out = [0] * len(self.pieces)
        for k, value in zip(self.nonempty, gather_crc.piece_crcs(values, self.starts)):
            out[k] = int(value)
        return out


def _layout_key(items: Sequence[WriteItem], tensors: Sequence[DeviceTensor], slot_bytes: int) -> tuple:
    return (slot_bytes,) + tuple(
        (t.view.address, t.view.dtype.str, t.view.shape, t.view.strides, item.shard, item.offset)
        for item, t in zip(items, tensors)
    )


def _slot_plans(items: Sequence[WriteItem], tensors: Sequence[DeviceTensor], slot_bytes: int) -> list[_SlotPlan]:
    from ..kernels import gather, gather_crc

    plans = []
    layouts = [t.view.runs() for t in tensors]
    for batch in slot_batches([t.nbytes for t in tensors], slot_bytes):
        entries = [
            (tensors[p.index].view.address, p.slot_offset, p.start, p.nbytes, tensors[p.index].view.itemsize,
             *layouts[p.index])
            for p in batch if p.nbytes
        ]
        writes: list[_Write] = []
        for p in (p for p in batch if p.nbytes):
            item = items[p.index]
            w = _Write(item.shard, item.offset + p.start, p.slot_offset, p.nbytes)
            last = writes[-1] if writes else None
            if last and last.shard == w.shard and last.offset + last.nbytes == w.offset \
                    and last.slot_offset + last.nbytes == w.slot_offset:
                writes[-1] = _Write(last.shard, last.offset, last.slot_offset, last.nbytes + w.nbytes)
            else:
                writes.append(w)
        table = gather.gather_table(entries)
        plans.append(_SlotPlan(
            tuple(batch), table, gather_crc.piece_starts(table), tuple(k for k, p in enumerate(batch) if p.nbytes),
            tuple(writes), tuple(p.index for p in batch if p.start + p.nbytes >= tensors[p.index].nbytes)))
    return plans


def _release(tensors: Sequence[DeviceTensor], which, stream, everything: bool = False) -> None:
    """Release the tickets of chunked snapshots (``capture.ChunkedSnapshot``) among ``tensors[which]`` once
    ``stream`` has gathered them; with ``everything``, also each device's "all gathered" ticket, and mark
    the boards written (the end of a save, whether or not it succeeded)."""
    boards = {}
    for k in which:
        owner = tensors[k].view.owner
        ticket = getattr(owner, "_gpuckpt_ticket", None)
        if ticket is None:
            continue
        ticket.release(stream)
        if everything:
            owner._gpuckpt_done.release(stream)
            boards[id(ticket.board)] = ticket.board
    for board in boards.values():
        board.mark_written(stream)


class DeviceRing:
    """One device's staging ring: K device slots, streams and events, made in that device's context
    once and reused by every save; the K pinned slots are leased from ``pool`` for each save."""

    def __init__(self, runtime, device: int, pool: StagingPool, slots: int = RING_SLOTS,
                 timeout: float = WAIT_TIMEOUT_S):
        if slots < 1:
            raise ValueError(f"a staging ring needs at least one slot, got {slots}")
        self.runtime, self.device, self.pool, self.timeout = runtime, device, pool, timeout
        self.slots = slots
        self.slot_bytes = min(pool.max_lease, pool.capacity // slots // _SLOT_ALIGN * _SLOT_ALIGN)
        with runtime.activate(device):
            self.compute = runtime.stream()
            self.dma = runtime.stream()
            self.arena = [runtime.device_buffer(self.slot_bytes) for _ in range(slots)]
            self.gathered = [runtime.event() for _ in range(slots)]
            self.copied = [runtime.event() for _ in range(slots)]
        self._tables: list = [None] * slots  # device table buffer of each slot
        self._resident: list = [None] * slots  # the host table last uploaded into it
        self._values: list = [None] * slots  # device uint32 per table row: the fused kernel's CRC values
        self._crc_host: list[np.ndarray | None] = [None] * slots
        self._cache: tuple[tuple, list[_SlotPlan]] | None = None
        self.table_builds = 0

    def plans(self, items: Sequence[WriteItem], tensors: Sequence[DeviceTensor]) -> list[_SlotPlan]:
        """The batches and pointer tables of a save: cached while addresses and layouts are unchanged."""
        key = _layout_key(items, tensors, self.slot_bytes)
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, _slot_plans(items, tensors, self.slot_bytes))
            self.table_builds += 1
        return self._cache[1]

    def save(self, items: Sequence[WriteItem], tensors: Sequence[DeviceTensor], out: WriterThread,
             parts: list[list[tuple[int, int, int]]], indices: Sequence[int]) -> None:
        """Queue every batch through the ring; the writer thread writes them and files each piece's
        (start, nbytes, raw crc) under ``parts[indices[tensor]]``. Returns once every slot is free."""
        rt = self.runtime
        with rt.activate(self.device):
            fence_producers(rt, [t.view for t in tensors], self.compute)
            plans = self.plans(items, tensors)
            leases = []
            free = [threading.Event() for _ in range(self.slots)]
            for event in free:
                event.set()
            try:
                for _ in range(min(self.slots, len(plans))):
                    leases.append(self.pool.lease(self.slot_bytes, timeout=self.timeout))
                for b, plan in enumerate(plans):
                    if out.error is not None:
                        break
                    i = b % self.slots
                    if not free[i].wait(self.timeout):
                        raise DeadlineExceededError(f"staging slot {i} was not written within {self.timeout} s")
                    free[i].clear()
                    try:
                        self._enqueue(i, plan, leases[i])
                    except BaseException:
                        self._settle(i)
                        free[i].set()
                        raise
                    _release(tensors, plan.finishes, self.compute)  # chunked snapshots: training may go on
                    out.put_job(self._job(i, plan, leases[i], out, parts, indices), self._done(i, leases[i], free[i]))
            finally:
                _release(tensors, range(len(tensors)), self.compute, everything=True)
                self._finish(leases, free)

    def _enqueue(self, i: int, plan: _SlotPlan, lease) -> None:
        """One gather + CRC launch into device slot i, its per-row CRC values downloaded, then the DMA
        into pinned slot i; events mark each step."""
        rt = self.runtime
        rows = plan.table.shape[0]
        if self._tables[i] is None or self._tables[i].shape[0] < rows:
            self._tables[i] = rt.table_buffer(rows)
            self._values[i] = rt.device_buffer(4 * max(rows, 1)).view(np.uint32)
            self._resident[i] = None
        crc_host = self._crc_host[i]
        if crc_host is None or crc_host.size < rows:
            crc_host = self._crc_host[i] = rt.pinned(4 * max(rows, 16)).view(np.uint32)
        rt.wait(self.compute, self.copied[i])  # the slot's previous bytes have left the device
        if rows:
            if self._resident[i] is not plan.table:
                rt.upload(plan.table, self._tables[i], self.compute)
                self._resident[i] = plan.table
            rt.gather_crc(self._tables[i], rows, self.arena[i], self._values[i], self.compute)
            rt.download(crc_host[:rows], self._values[i], self.compute)
        rt.record(self.gathered[i], self.compute)
        rt.wait(self.dma, self.gathered[i])
        if plan.total:  # a batch of empty tensors only has CRCs (all 0)
            rt.download(lease.view[: plan.total], self.arena[i], self.dma)
        rt.record(self.copied[i], self.dma)

    def _job(self, i: int, plan: _SlotPlan, lease, out: WriterThread, parts, indices):
        def job() -> None:
            self.runtime.host_wait(self.copied[i], self.timeout, f"staging slot {i}")
            crc_host = self._crc_host[i]
            assert crc_host is not None  # _enqueue filled it before queueing this job
            values = plan.piece_crcs(crc_host[: plan.table.shape[0]])
            for p, value in zip(plan.pieces, values):
                parts[indices[p.index]].append((p.start, p.nbytes, value))
            for w in plan.writes:
                out.write(w.shard, w.offset, lease.view[w.slot_offset : w.slot_offset + w.nbytes])

        return job

    def _done(self, i: int, lease, free: threading.Event):
        def done() -> None:  # runs whether or not the job ran: the slot is free once its copy is over
            self.runtime.host_wait(self.copied[i], self.timeout, f"staging slot {i}")
            self.runtime.release(lease.view)
            free.set()

        return done

    def _settle(self, i: int) -> None:
        """After a failed enqueue: wait until whatever was queued for slot i has run."""
        rt = self.runtime
        rt.record(self.gathered[i], self.compute)
        rt.wait(self.dma, self.gathered[i])
        rt.record(self.copied[i], self.dma)
        rt.host_wait(self.copied[i], self.timeout, f"staging slot {i}")

    def _finish(self, leases, free) -> None:
        """Give the pinned slots back once every copy into them has finished and been written."""
        for i, event in enumerate(free):
            if not event.wait(self.timeout):
                raise DeadlineExceededError(f"staging slot {i} still busy after {self.timeout} s; its pinned "
                                            "memory stays leased")
        for lease in leases:
            self.pool.release(lease)


class GpuEngine:
    """Saves device tensors through one staging ring per device (chosen from each tensor's own device);
    the pinned pool and the rings are sized once, ``close()`` releases them."""

    name = "gpu"

    def __init__(self, staging_bytes: int = DEFAULT_BYTES, runtime=None, slots: int = RING_SLOTS,
                 timeout: float = WAIT_TIMEOUT_S):
        self.runtime = runtime if runtime is not None else default_runtime()
        if isinstance(self.runtime, NumbaRuntime):
            check_kernel_toolchain()  # a clear error now rather than a JIT failure at the first launch
        self.pool = StagingPool(staging_bytes, allocator=self.runtime.pinned)
        self.slots, self.timeout = slots, timeout
        self._rings: dict[int, DeviceRing] = {}

    def ring(self, device: int) -> DeviceRing:
        """The staging ring of ``device``, made in that device's context on first use."""
        if device not in self._rings:
            self._rings[device] = DeviceRing(self.runtime, device, self.pool, self.slots, self.timeout)
        return self._rings[device]

    # -- save --------------------------------------------------------------------------------
    def write(self, plan: SavePlan, tensors: Sequence[HostTensor | DeviceTensor], writer) -> list[int]:
        """Write every planned tensor; device ones through the kernels, host ones as the CPU engine does."""
        device = [i for i, t in enumerate(tensors) if isinstance(t, DeviceTensor)]
        on_device = [t for t in tensors if isinstance(t, DeviceTensor)]  # on_device[m] is tensors[device[m]]
        masked: dict[int, int] = {}
        host_items = [(item, t) for item, t in zip(plan.items, tensors) if not isinstance(t, DeviceTensor)]
        if host_items:
            host_plan = SavePlan(plan.num_shards, tuple(i for i, _ in host_items), plan.shard_sizes)
            host_crcs = CpuEngine().write(host_plan, [t for _, t in host_items], writer)
            host_indices = [i for i, t in enumerate(tensors) if not isinstance(t, DeviceTensor)]
            masked.update(zip(host_indices, host_crcs))
        parts: list[list[tuple[int, int, int]]] = [[] for _ in device]
        out = WriterThread(writer, timeout=self.timeout)
        try:
            for ordinal, members in self._by_device(tensors, device).items():
                ring = self.ring(ordinal)
                ring.save([plan.items[device[m]] for m in members], [on_device[m] for m in members],
                          out, parts, members)
        finally:
            out.close()
        raw = [crc.join([(n, value) for _, n, value in sorted(p)]) for p in parts]
        masked.update((i, crc.mask(value)) for i, value in zip(device, raw))
        return [masked[i] for i in range(len(tensors))]

    def _by_device(self, tensors, device: list[int]) -> dict[int, list[int]]:
        """Positions in ``device`` grouped by CUDA ordinal; tensors of another runtime are refused."""
        groups: dict[int, list[int]] = {}
        for m, i in enumerate(device):
            view = tensors[i].view
            ours = view.runtime is self.runtime if view.runtime is not None else isinstance(self.runtime, NumbaRuntime)
            if not ours:
                raise InvalidArgumentError("a device array of another CUDA runtime was given to this engine")
            groups.setdefault(view.device, []).append(m)
        return groups

    def close(self) -> None:
        """Release the pinned pool and the device rings."""
        self.pool.close()
        self._rings.clear()
