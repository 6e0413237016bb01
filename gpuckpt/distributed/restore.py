"""Distributed restore on any number of ranks: each rank reads what overlaps its own part.

For every live tensor the rank computes its *target* block (its ``Sharded`` block, or the whole
tensor when ``Replicated``) and the *stored* blocks of that key (the slices of a partitioned
entry, or the whole tensor). Each stored block that overlaps the target is read and its CRC
verified, and the common region is copied into place, so any save layout restores into any
restore layout (resharding).

The reads are one ``restore_plan`` (each target a request for its block) run by the CPU
engine's ``read_host``, the same plan and reads as a single-process restore; values are read
into new buffers, since nothing may be assigned before every rank agrees.

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

All ranks read first; then they agree (``comm.Group.agree``); only if every rank succeeded does
any rank assign values, so a failure anywhere leaves every variable untouched.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..arrays import aligned_empty, as_tensor
from ..engine.cpu import read_host
from ..errors import InvalidArgumentError
from ..format import dtypes, objgraph
from ..reader import CheckpointReader
from ..restore_plan import Request, build_restore_plan
from ..session import read_string
from ..trackable.base import Trackable
from .comm import ROOT, Failure, Group
from .errors import DistributedError
from .layout import Box, Sharded, layout_of

REPLICATED_STRATEGIES = ("read", "broadcast")


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
    unused_keys: tuple[str, ...]  # stored tensors no live object asked for
    bytes_read: int


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


def read_targets(reader: CheckpointReader, targets: Sequence[Target]) -> tuple[list[np.ndarray], int]:
    """Read and verify every stored block the targets overlap (one restore plan), then cut out each
    target's part. A target that is exactly one stored block is read straight into its buffer; a
    block that is only partly needed is read whole (its CRC covers all of it) and the overlap copied.

    Returns the filled arrays (in target order) and the number of bytes read.
    """
    requests = [_request(t, reader) for t in targets]
    plan = build_restore_plan(reader.index, requests, reader.storage.shard_size, prefix=reader.prefix,
                              shard_path=reader.storage.shard_path)
    # strings (the one dtype without a NumPy layout) are read into lists, not preallocated buffers
    outs: list = [None if r.dtype.numpy is None else aligned_empty(r.dest_shape, r.dtype.numpy) for r in requests]
    failed = read_host(reader.storage, plan.reads, outs)
    if failed:
        raise failed[min(failed)]
    for item in plan.strings:
        value = read_string(reader.storage, item)
        outs[item.request] = np.array(value, dtype=object) if isinstance(value, bytes) else value
    return outs, plan.total_bytes


def _checked(group: Group, report: str | None, what: str, started: float) -> None:
    """Agree on success across ranks; DistributedError on every rank if any rank failed."""

    def decide(reports: dict, missing: dict[int, str]):
        failed = sorted([r for r, e in reports.items() if e is not None] + list(missing))
        if not failed:
            return None
        why = [f"rank {r}: {reports[r]}" if r in reports else f"rank {r}: {missing[r]}" for r in failed]
        return Failure(tuple(failed), "; ".join(why))

    verdict = group.agree(report, decide, started=started, what=what)
    if isinstance(verdict, Failure):
        raise DistributedError(f"rank {group.rank}: {what} failed and no variable was changed: {verdict.message}",
                               ranks=verdict.ranks)


def restore_distributed(prefix: str, checkpoint, group: Group, *, replicated: str = "read") -> RestoreResult:
    """Restore ``checkpoint``'s variables on this rank from ``prefix``, whatever number of ranks saved it.

    Every rank must call it; DistributedError on every rank when any rank fails, and then no
    rank has changed any variable.
    """
    if replicated not in REPLICATED_STRATEGIES:
        raise InvalidArgumentError(f"replicated must be one of {REPLICATED_STRATEGIES}, got {replicated!r}")
    started = time.monotonic()
    what = f"restore of {prefix!r}"
    reader: CheckpointReader | None = None
    error: BaseException | None = None
    try:
        reader = CheckpointReader(prefix)
        targets, broadcast, got, nbytes = _read_local(reader, checkpoint, group, replicated)
    except Exception as exc:
        error = exc
    try:
        try:
            _checked(group, None if error is None else f"{type(error).__name__}: {error}", what, started)
        except DistributedError as exc:
            raise exc from error
        assert reader is not None, "_checked raises on every rank when any rank failed, opening the reader included"
        for t in broadcast:
            if t.key not in got:
                got[t.key] = aligned_empty(t.box.lengths, t.dtype)
        group.bcast_arrays([got[t.key] for t in broadcast], what=f"{len(broadcast)} replicated tensors")
        _assign(targets, got)
        stored = set(reader.keys()) - {objgraph.OBJECT_GRAPH_KEY}
        return RestoreResult(prefix, tuple(t.key for t in targets), tuple(sorted(stored - set(got))), nbytes)
    finally:
        if reader is not None:
            reader.close()


def _read_local(reader: CheckpointReader, checkpoint, group: Group, replicated: str):
    """This rank's reads: every target, except replicated ones that rank 0 will broadcast."""
    if any(k.startswith("save_counter/") for k in reader.keys()):
        checkpoint._maybe_create_save_counter()
    targets = live_targets(checkpoint)
    broadcast = [t for t in targets if t.replicated and t.dtype != object] \
        if replicated == "broadcast" and group.size > 1 else []
    skipped = {t.key for t in broadcast} if group.rank != ROOT else set()
    local = [t for t in targets if t.key not in skipped]
    values, nbytes = read_targets(reader, local)
    return targets, broadcast, dict(zip((t.key for t in local), values)), nbytes


def _assign(targets: Sequence[Target], values: dict[str, np.ndarray]) -> None:
    """Hand each object all of its values at once (its ``_restore_tensors``)."""
    by_object: dict[int, tuple[Trackable, dict]] = {}
    for t in targets:
        by_object.setdefault(id(t.obj), (t.obj, {}))[1][t.attribute] = values[t.key]
    for obj, attrs in by_object.values():
        obj._restore_tensors(attrs)
