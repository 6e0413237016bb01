"""Distributed restore on any number of ranks: each rank reads what overlaps its own part, into its own memory.

For every live tensor the rank computes its *target* block (its ``Sharded`` block, or the whole
tensor when ``Replicated``) and the *stored* blocks of that key (the slices of a partitioned
entry, or the whole tensor). Each stored block that overlaps the target is read and its CRC
verified, and the common region lands in place, so any save layout restores into any restore
layout (resharding).

The reads are one ``restore_plan`` (each target a request for its block) run by the CPU
engine's ``read_host``, the same plan and reads as a single-process restore. Destinations are
the variables' own memory where they offer it (``_restore_destinations``: a DTensor's local
shard as a NumPy view), so a stored block that is exactly a rank's part is read straight into
it, with no staging buffer and no copy; other values (device tensors, strings) are read into new
buffers and handed over with ``_restore_tensors``.

Stages, each closed by an agreement of every rank (``comm.agree``):

1. **plan**: open the checkpoint, match live tensors by key, check dtypes, shapes and bounds,
   plan the reads (and those of values kept for objects created later, ``deferred.py``). A
   failure on any rank (missing key, mismatch, unreadable index) fails every rank with
   ``DistributedError`` and no variable changed anywhere.
2. **verify**: every planned range read and its CRC checked, before any rank writes into a
   variable: ranges bound for the variables' own memory are read through a 512 KiB window per
   reader thread (``engine/cpu.py``'s ``verify_host``, whatever the checkpoint's size) and only
   checked, the others (device tensors, strings, values kept for later objects) read into their
   new buffers. A failure on any rank (a bad CRC, an I/O error, a rank that died or stalled)
   fails every rank with ``DistributedError`` and no variable changed anywhere: all or nothing,
   with no copy of the state in memory.
3. **place**: the verified ranges read again, straight into the variables' memory (from the
   page cache, on any host whose memory holds the rank's part), their CRCs checked once more, so
   no variable ever holds bytes that were not verified. Only bytes that change between the two
   reads (a file modified during the restore, a failing disk) or a rank that dies in between
   can fail this stage; then every rank raises
   :class:`~.errors.PartialDistributedRestoreError`: verified values stay assigned,
   destinations whose bytes failed are zero-filled, and ``restored`` / ``failed`` name them.
   With ``atomic`` (``CheckpointOptions(atomic_restore=True)``) every value is read once into
   new buffers instead and this stage does not exist, so not even that can change a variable,
   at the price of one more host copy of the whole state.
4. **assign**: the values read into buffers are assigned, replicated values broadcast when
   asked, and values of saved objects not created yet kept for them.

Trade-off: a stored block's CRC covers the whole block, so a block that overlaps the target is
read *whole* even when only part of it is needed; bytes are never used unverified. With a
restore layout equal to (or coarser than, along the split axis) the save layout nothing extra
is read; a finer one reads up to one stored block per boundary more than it needs.

Replicated tensors are read by every rank (``replicated="read"``, the default) or read by
rank 0 and broadcast (``"broadcast"``). In ``bench/bench_mpi.py`` on one host, reading was
faster: 1.35 against 0.83 GiB/s aggregate on 2 ranks with all of the state replicated
(every rank reads and checksums in parallel, and the page cache serves the repeats; a
broadcast starts only once rank 0 has read everything); other cases were within the
run-to-run noise, none in favour of broadcasting beyond it. ``"broadcast"`` is for file systems
where reads are the scarce resource.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..arrays import aligned_empty, as_tensor
from ..engine.cpu import read_host, verify_host
from ..errors import DataLossError, InvalidArgumentError
from ..format import dtypes, objgraph
from ..reader import CheckpointReader
from ..restore_plan import Request, RestorePlan, build_restore_plan
from ..session import read_string
from ..trackable import restore_order
from ..trackable.base import Trackable
from . import deferred
from .comm import ROOT, Failure, Group
from .errors import DistributedError, PartialDistributedRestoreError
from .layout import Box, Sharded, layout_of

REPLICATED_STRATEGIES = ("read", "broadcast")
_MAX_NAMED = 10


@dataclass(frozen=True)
class Target:
    """One live tensor to fill: the object and attribute it belongs to and the block this rank holds."""

    key: str
    obj: Trackable
    attribute: str
    box: Box
    global_shape: tuple[int, ...]
    dtype: np.dtype
    replicated: bool


@dataclass(frozen=True)
class RestoreResult:
    """What a distributed restore did on this rank."""

    prefix: str
    restored_keys: tuple[str, ...]
    unused_keys: tuple[str, ...]  # stored tensors no live object asked for, and none is kept for
    bytes_read: int
    deferred_keys: tuple[str, ...] = ()  # read and kept for objects not created yet (see deferred.py)


@dataclass(frozen=True)
class _Reads:
    """This rank's planned reads: ``requests`` (those of ``local``, then those of ``held``), their
    destinations ``outs``, and which of those are the variables' own memory (``in_place``)."""

    targets: tuple[Target, ...]  # every live tensor
    local: tuple[Target, ...]  # those this rank reads (all but replicated ones rank 0 broadcasts)
    broadcast: tuple[Target, ...]
    held: deferred.HeldPlan | None
    plan: RestorePlan
    outs: list[Any]  # by request; strings are filled in by the read
    in_place: frozenset[int]


def live_targets(checkpoint) -> list[Target]:
    """Every live tensor of ``checkpoint`` with this rank's block of it (from the declared layouts)."""
    live = checkpoint._graph()
    out = []
    for node, obj, values in zip(live.graph.nodes, live.objects, live.tensors):
        layout = layout_of(obj)
        for attr in node.attributes:
            dtype, shape = _dtype_and_shape(attr.checkpoint_key, values[attr.name])
            if isinstance(layout, Sharded):
                out.append(Target(attr.checkpoint_key, obj, attr.name, layout.box, layout.global_shape, dtype, False))
            else:
                whole = Box((0,) * len(shape), shape)
                out.append(Target(attr.checkpoint_key, obj, attr.name, whole, shape, dtype, True))
    return out


def _dtype_and_shape(key: str, value: object) -> tuple[np.dtype, tuple[int, ...]]:
    """NumPy dtype (object for strings) and shape of a live value, host or device (nothing is copied)."""
    described = as_tensor(value, key)
    numpy_dtype = described.dtype.numpy
    if described.dtype.is_string or numpy_dtype is None:  # strings are the one dtype without a NumPy layout
        numpy_dtype = np.dtype(object)
    return numpy_dtype, tuple(described.shape)


def _request(target: Target, reader: CheckpointReader) -> Request:
    """The restore-plan request of a target: the whole tensor, or this rank's block of it."""
    reader.entry(target.key)  # NotFoundError naming the key when the checkpoint lacks it
    if target.dtype == object:
        if not target.replicated:
            raise InvalidArgumentError(f"key {target.key!r}: string tensors cannot be Sharded", key=target.key)
        return Request(target.key, target.key, dtypes.STRING, target.global_shape)
    block = None if target.replicated else (target.box.offsets, target.box.lengths)
    return Request(target.key, target.key, dtypes.from_numpy(target.dtype), target.global_shape, block)


def _plan(reader: CheckpointReader, requests: Sequence[Request]) -> RestorePlan:
    return build_restore_plan(reader.index, requests, reader.storage.shard_size, prefix=reader.prefix,
                              shard_path=reader.storage.shard_path)


def _fresh(request: Request) -> np.ndarray | None:
    """A new buffer for a request (None for strings, which are decoded into lists)."""
    return None if request.dtype.numpy is None else aligned_empty(request.dest_shape, request.dtype.numpy)


def _destination(obj: Trackable, attribute: str, dtype: np.dtype, shape: tuple[int, ...],
                 offered: dict[int, Any]) -> np.ndarray | None:
    """The object's own host memory for ``attribute`` when it offers a C-contiguous, writable array of the
    destination's dtype and shape (``offered`` caches each object's ``_restore_destinations``), else None."""
    mine = offered.get(id(obj))
    if mine is None:
        mine = offered[id(obj)] = obj._restore_destinations()
    array = mine.get(attribute)
    if isinstance(array, np.ndarray) and array.flags.c_contiguous and array.flags.writeable \
            and array.dtype == dtype and array.shape == shape:
        return array
    return None


def _read(reader: CheckpointReader, plan: RestorePlan, outs: list[Any],
          live: frozenset[int] = frozenset()) -> dict[int, DataLossError]:
    """Run the plan's reads into ``outs`` (strings decoded into it), except those of the requests in ``live``
    (destinations that are variables' own memory), which are only verified; the failures by request index."""
    failed = verify_host(reader.storage, [item for item in plan.reads if item.request in live])
    failed.update(read_host(reader.storage, [item for item in plan.reads if item.request not in live], outs))
    for item in plan.strings:
        if item.request in failed:
            continue
        try:
            value = read_string(reader.storage, item)
        except DataLossError as exc:
            failed[item.request] = exc
            continue
        outs[item.request] = np.array(value, dtype=object) if isinstance(value, bytes) else value
    return failed


def _place(reader: CheckpointReader, reads: _Reads) -> dict[int, DataLossError]:
    """Read the verified ranges of the variables' own memory into it, checking their CRCs again."""
    try:
        return read_host(reader.storage, [item for item in reads.plan.reads if item.request in reads.in_place],
                         reads.outs)
    except Exception as exc:  # which destinations it reached is unknown: none of them is trusted
        return {i: DataLossError(f"{type(exc).__name__}: {exc}") for i in reads.in_place}


def read_targets(reader: CheckpointReader, targets: Sequence[Target]) -> tuple[list[np.ndarray], int]:
    """Read and verify every stored block the targets overlap (one restore plan) into new arrays, then cut
    out each target's part. A target that is exactly one stored block is read straight into its buffer; a
    block that is only partly needed is read whole (its CRC covers all of it) and the overlap copied.

    Returns the filled arrays (in target order) and the number of bytes read.
    """
    requests = [_request(t, reader) for t in targets]
    plan = _plan(reader, requests)
    outs: list = [_fresh(r) for r in requests]
    failed = _read(reader, plan, outs)
    if failed:
        raise failed[min(failed)]
    return outs, plan.total_bytes


def _report(error: BaseException | None) -> str | None:
    return None if error is None else f"{type(error).__name__}: {error}"


def _decide(reports: dict, missing: dict[int, str]) -> Failure | None:
    failed = sorted([r for r, e in reports.items() if e is not None] + list(missing))
    if not failed:
        return None
    why = [f"rank {r}: {reports[r]}" if r in reports else f"rank {r}: {missing[r]}" for r in failed]
    return Failure(tuple(failed), "; ".join(why))


def _checked(group: Group, report: str | None, what: str, started: float) -> None:
    """Agree on success across ranks; DistributedError on every rank if any rank failed."""
    verdict = group.agree(report, _decide, started=started, what=what)
    if isinstance(verdict, Failure):
        raise DistributedError(f"rank {group.rank}: {what} failed and no variable was changed: {verdict.message}",
                               ranks=verdict.ranks)


def restore_distributed(prefix: str, checkpoint, group: Group, *, replicated: str = "read", atomic: bool = False,
                        skip_slots: bool = False) -> RestoreResult:
    """Restore ``checkpoint``'s variables on this rank from ``prefix``, whatever number of ranks saved it.

    Every rank must call it; when any rank fails, every rank raises (see the module docstring for
    what a failure leaves: nothing changed when it is found while planning or with ``atomic``;
    otherwise :class:`PartialDistributedRestoreError`). ``skip_slots``: values of optimizer slots not
    created yet are not kept (``CheckpointOptions.experimental_skip_slot_variables``).
    """
    if replicated not in REPLICATED_STRATEGIES:
        raise InvalidArgumentError(f"replicated must be one of {REPLICATED_STRATEGIES}, got {replicated!r}")
    started = time.monotonic()
    what = f"restore of {prefix!r}"
    uid = restore_order.next_restore_uid()
    reader: CheckpointReader | None = None
    reads: _Reads | None = None
    error: BaseException | None = None
    try:
        reader = CheckpointReader(prefix)
        reads = _prepare(reader, checkpoint, group, replicated, atomic, skip_slots)
    except Exception as exc:
        error = exc
    try:
        try:
            _checked(group, _report(error), what, started)
        except DistributedError as exc:
            raise exc from error
        assert reader is not None and reads is not None, "_checked raises on every rank when any rank failed"
        try:
            failed = _read(reader, reads.plan, reads.outs, reads.in_place)
            error = failed[min(failed)] if failed else None
        except Exception as exc:
            error = exc
        try:
            _checked(group, _report(error), what, started)
        except DistributedError as exc:
            raise exc from error
        failed = _place(reader, reads) if reads.in_place else {}
        error = failed[min(failed)] if failed else None
        verdict = group.agree(_report(error), _decide, started=started, what=what)
        if isinstance(verdict, Failure):
            raise _place_failure(group.rank, what, verdict, reads, failed) from error
        values, placed = _broadcast(group, reads)
        _assign(reads.targets, values, skip=placed)
        for obj in {id(t.obj): t.obj for t in reads.targets}.values():
            restore_order.claim(obj, uid)  # an older restore's deferred values no longer land on it
        held = _keep_deferred(reader, reads, uid, skip_slots)
        stored = set(reader.keys()) - {objgraph.OBJECT_GRAPH_KEY}
        unused = stored - set(values) - set(held)
        return RestoreResult(prefix, tuple(t.key for t in reads.targets), tuple(sorted(unused)),
                             reads.plan.total_bytes, tuple(sorted(held)))
    finally:
        if reader is not None:
            reader.close()


def _prepare(reader: CheckpointReader, checkpoint, group: Group, replicated: str, atomic: bool,
             skip_slots: bool) -> _Reads:
    """This rank's plan: every target (except replicated ones rank 0 will broadcast) and the values kept for
    objects not created yet, with their destinations. Reads nothing but the object graph; changes nothing."""
    if any(k.startswith("save_counter/") for k in reader.keys()):
        checkpoint._maybe_create_save_counter()
    targets = live_targets(checkpoint)
    broadcast = [t for t in targets if t.replicated and t.dtype != object] \
        if replicated == "broadcast" and group.size > 1 else []
    skipped = {t.key for t in broadcast} if group.rank != ROOT else set()
    local = [t for t in targets if t.key not in skipped]
    held = deferred.plan_held(reader, checkpoint, {t.key for t in targets}, skip_slots)
    requests = [_request(t, reader) for t in local] + ([h.request for h in held.held] if held else [])
    plan = _plan(reader, requests)
    outs: list[Any] = [None] * len(requests)
    in_place = set()
    offered: dict[int, Any] = {}
    for i, r in enumerate(requests):
        if not atomic and i < len(local) and r.dtype.numpy is not None:
            outs[i] = _destination(local[i].obj, local[i].attribute, local[i].dtype, r.dest_shape, offered)
            if outs[i] is not None:
                in_place.add(i)
                continue
        outs[i] = _fresh(r)
    return _Reads(tuple(targets), tuple(local), tuple(broadcast), held, plan, outs, frozenset(in_place))


def _place_failure(rank: int, what: str, verdict: Failure, reads: _Reads,
                   failed: dict[int, DataLossError]) -> PartialDistributedRestoreError:
    """The error of a failed place stage on this rank; destinations that received unverified bytes are zero-filled."""
    for i in failed:
        if i in reads.in_place:
            reads.outs[i].reshape(-1).view(np.uint8)[:] = 0
    keys = [r.key for r in reads.plan.requests]
    restored = tuple(keys[i] for i in sorted(reads.in_place - set(failed)))
    bad = tuple(keys[i] for i in sorted(failed) if i < len(reads.local))

    def named(these: Sequence[str]) -> str:
        return ", ".join(map(repr, these[:_MAX_NAMED])) + (", ..." if len(these) > _MAX_NAMED else "") or "none"

    return PartialDistributedRestoreError(
        f"rank {rank}: {what} failed after every value had verified, while reading them into the variables: "
        f"{verdict.message}. On this rank {len(restored)} were verified again and assigned ({named(restored)}), "
        f"{len(bad)} failed and were zero-filled ({named(bad)}), the others keep their previous values; restore "
        "again, or restore with CheckpointOptions(atomic_restore=True) to change nothing even then",
        ranks=verdict.ranks, restored=restored, failed=bad)


def _broadcast(group: Group, reads: _Reads) -> tuple[dict[str, Any], set[str]]:
    """The values of every live target by key, those rank 0 broadcasts included (received in place where the
    variable offers its memory), and the keys whose value already is in the variable's memory."""
    values = {t.key: reads.outs[i] for i, t in enumerate(reads.local)}
    placed = {reads.local[i].key for i in reads.in_place}
    if reads.broadcast:
        offered: dict[int, Any] = {}
        for t in reads.broadcast:
            if t.key not in values:
                own = _destination(t.obj, t.attribute, t.dtype, t.box.lengths, offered)
                if own is not None:
                    placed.add(t.key)
                values[t.key] = own if own is not None else aligned_empty(t.box.lengths, t.dtype)
        group.bcast_arrays([values[t.key] for t in reads.broadcast], what=f"{len(reads.broadcast)} replicated tensors")
    return values, placed


def _keep_deferred(reader: CheckpointReader, reads: _Reads, uid: int, skip_slots: bool) -> dict[str, Any]:
    """Hand the values read for objects not created yet to the deferred restorations; returns them by key."""
    if reads.held is None:
        return {}
    first = len(reads.local)
    values = {h.key: reads.outs[first + i] for i, h in enumerate(reads.held.held)}
    deferred.keep(reads.held, reader.index.entries, reader.prefix, values, uid=uid, skip_slots=skip_slots)
    return values


def _assign(targets: Sequence[Target], values: dict[str, Any], skip: set[str] | frozenset[str] = frozenset()) -> None:
    """Hand each object all of its values at once (its ``_restore_tensors``), except those already read in
    place (``skip``)."""
    by_object: dict[int, tuple[Trackable, dict]] = {}
    for t in targets:
        if t.key not in skip:
            by_object.setdefault(id(t.obj), (t.obj, {}))[1][t.attribute] = values[t.key]
    for obj, attrs in by_object.values():
        obj._restore_tensors(attrs)
