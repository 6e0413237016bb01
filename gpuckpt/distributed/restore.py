"""Distributed restore on any number of ranks: each rank reads what overlaps its own part.

For every live tensor the rank computes its *target* block (its ``Sharded`` block, or the whole
tensor when ``Replicated``) and the *stored* blocks of that key (the slices of a partitioned
entry, or the whole tensor). Each stored block that overlaps the target is read and its CRC
verified, and the common region is copied into place, so any save layout restores into any
restore layout (resharding).

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
from ..errors import InvalidArgumentError, NotFoundError
from ..format import objgraph
from ..format.bundle import BundleEntry
from ..format.slices import slice_key
from ..reader import CheckpointReader
from .comm import ROOT, Failure, Group
from .errors import DistributedError
from .layout import Box, Sharded, layout_of, overlaps

REPLICATED_STRATEGIES = ("read", "broadcast")


@dataclass(frozen=True)
class Target:
    """One live tensor to fill: the object and attribute it belongs to and the block this rank holds."""

    key: str
    obj: object
    attribute: str
    box: Box
    global_shape: tuple[int, ...]
    dtype: np.dtype
    replicated: bool


@dataclass(frozen=True)
class Read:
    """One stored block to read whole, and the part of it the target needs."""

    entry: BundleEntry
    stored: Box
    common: Box


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
    return (np.dtype(object) if described.dtype.is_string else described.dtype.numpy), tuple(described.shape)


def stored_blocks(reader: CheckpointReader, key: str) -> list[tuple[Box, BundleEntry]]:
    """The stored blocks of ``key``: its slices (spec 7.6), or the whole tensor as one block."""
    entry = reader.entry(key)
    if not entry.is_sliced:
        return [(Box((0,) * len(entry.shape), entry.shape), entry)]
    blocks = []
    for extents in entry.slices:
        offsets = tuple(e.start for e in extents)
        lengths = tuple(dim - e.start if e.length is None else e.length for e, dim in zip(extents, entry.shape))
        piece = reader.index.slice_entries.get(slice_key(key, extents))
        if piece is None:
            raise NotFoundError(f"slice {list(zip(offsets, lengths))} of key {key!r} is missing from "
                                f"{reader.index_path!r}", path=reader.index_path, key=key)
        blocks.append((Box(offsets, lengths), piece))
    return blocks


def plan_target(reader: CheckpointReader, target: Target) -> list[Read]:
    """The stored blocks to read for one target, checked against the stored dtype and shape."""
    entry = reader.entry(target.key)
    if entry.shape != target.global_shape or entry.dtype.numpy != target.dtype:
        raise InvalidArgumentError(
            f"key {target.key!r} is stored as {entry.dtype.name} {list(entry.shape)} but the live variable is "
            f"{target.dtype} {list(target.global_shape)} (global shape)", key=target.key, path=reader.index_path)
    blocks = stored_blocks(reader, target.key)
    return [Read(blocks[i][1], blocks[i][0], common) for i, common in overlaps(target.box, [b for b, _ in blocks])]


def read_targets(reader: CheckpointReader, targets: Sequence[Target]) -> tuple[list[np.ndarray], int]:
    """Read and verify every stored block the targets overlap, then cut out each target's part.

    A target that is exactly one stored block is read straight into its destination. Returns the
    filled arrays (in target order) and the number of bytes read.
    """
    outs, jobs, cuts = [], [], []
    strings = 0
    for target in targets:
        if target.dtype == object:  # string tensors: replicated only, read whole with their own CRC check
            if not target.replicated:
                raise InvalidArgumentError(f"key {target.key!r}: string tensors cannot be Sharded", key=target.key)
            outs.append(_read_string(reader, target))
            strings += reader.entry(target.key).size
            continue
        out = aligned_empty(target.box.lengths, target.dtype)
        outs.append(out)
        reads = plan_target(reader, target)
        if len(reads) == 1 and reads[0].stored == target.box:
            jobs.append((target.key, reads[0].entry, out))
            continue
        for read in reads:
            buf = aligned_empty(read.stored.lengths, target.dtype)
            jobs.append((target.key, read.entry, buf))
            cuts.append((out, target.box, buf, read))
    reader.read_entries(jobs)
    for out, box, buf, read in cuts:
        out[read.common.region(box.offsets)] = buf[read.common.region(read.stored.offsets)]
    return outs, strings + sum(job[1].size for job in jobs)


def _read_string(reader: CheckpointReader, target: Target) -> np.ndarray:
    entry = reader.entry(target.key)
    if not entry.dtype.is_string or entry.shape != target.global_shape:
        raise InvalidArgumentError(
            f"key {target.key!r} is stored as {entry.dtype.name} {list(entry.shape)} but the live variable is a "
            f"string tensor of shape {list(target.global_shape)}", key=target.key, path=reader.index_path)
    value = reader.get_tensor(target.key)
    return np.array(value, dtype=object) if isinstance(value, bytes) else value


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
    by_object: dict[int, tuple[object, dict]] = {}
    for t in targets:
        by_object.setdefault(id(t.obj), (t.obj, {}))[1][t.attribute] = values[t.key]
    for obj, attrs in by_object.values():
        obj._restore_tensors(attrs)
