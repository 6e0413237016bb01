"""Distributed save: every rank writes its own data shard; rank 0 merges the index and commits.

Protocol, for ``N`` ranks saving prefix ``P`` (each step names the ranks that run it):

1. all: walk the live objects; split the tensors into this rank's blocks of ``Sharded``
   variables and the ``Replicated`` tensors it owns (each replicated tensor is owned by one
   rank, chosen identically everywhere: largest first to the least-loaded rank; the object
   graph always to rank 0).
2. all: plan and write those tensors through the single-process engine (CPU, or GPU for
   device arrays) into ``P.data-0000r-of-0000N`` under a temporary name, fsync and close it.
3. all → rank 0: a report (index entries, file names, key/shape/dtype summary, or the error).
4. rank 0: check that the reports agree (same replicated keys, same global shapes, blocks that
   tile each sharded tensor exactly), build the merged index (TF's partitioned-variable
   entries, docs/format.md §7.6), rename every shard into place, write the index atomically, then the
   ``checkpoint`` state file (``save``, not ``write``). Only now is the checkpoint visible.
5. rank 0 → all: the verdict. On failure every rank deletes its temporary shard and raises
   :class:`DistributedError` naming the ranks at fault; the previous checkpoint stays the latest.

A rank that fails or stays silent past the group's timeout makes rank 0 decide "failed", so
nothing is committed and every surviving rank raises instead of hanging (``comm.agree``).
"""

from __future__ import annotations

import os
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ..arrays import as_tensor
from ..engine.select import EngineCache
from ..errors import CheckpointError, InvalidArgumentError
from ..format import crc, dtypes, objgraph
from ..format.bundle import BundleEntry, Extent, build_index
from ..format.slices import slice_key
from ..format.statefile import CheckpointState
from ..options import StorageConfig, storage_config
from ..saver import plan_for, tensors_for_engine, write_planned
from ..storage import filesystem
from .comm import ROOT, Communicator, Failure
from .errors import DistributedError
from .layout import Box, Replicated, Sharded, check_tiling, layout_of
from .torch_dtensor import local_shards


@dataclass(frozen=True)
class Tensor:
    """One checkpoint key as this rank sees it: its value (this rank's block, if sharded) and layout."""

    key: str
    value: object
    layout: Replicated | Sharded


@dataclass(frozen=True)
class Stored:
    """One stored piece of this rank's shard: a whole replicated tensor (``box`` None) or a block."""

    key: str
    entry: BundleEntry
    box: Box | None


@dataclass(frozen=True)
class Report:
    """What a rank tells rank 0 after writing its shard."""

    rank: int
    pieces: tuple[Stored, ...]
    files: tuple[tuple[str, str], ...]
    replicated: tuple[tuple[str, str, tuple[int, ...]], ...]  # (key, dtype, shape) of every replicated tensor
    sharded: tuple[tuple[str, str, tuple[int, ...]], ...]  # (key, dtype, global shape) of every sharded tensor
    error: str | None = None


def collect(checkpoint) -> list[Tensor]:
    """Every tensor of ``checkpoint`` with its layout (DTensors as their local shards), the object graph last."""
    with local_shards():
        live = checkpoint._graph()
    out = []
    for node, obj, values in zip(live.graph.nodes, live.objects, live.tensors):
        layout = layout_of(obj)
        for attr in node.attributes:
            out.append(Tensor(attr.checkpoint_key, values[attr.name], layout))
    out.append(Tensor(objgraph.OBJECT_GRAPH_KEY, objgraph.encode(live.graph), Replicated()))
    return out


def assign_owners(sizes: Sequence[tuple[str, int]], num_ranks: int,
                  pinned: Mapping[str, int] | None = None) -> dict[str, int]:
    """Which rank writes each replicated tensor: ``pinned`` ones as given, the rest largest first
    to the rank with the fewest bytes so far (ties: lower rank, then key order). Deterministic,
    so every rank computes the same answer from the same sizes."""
    load = [0] * num_ranks
    owners = dict(pinned or {})
    for key, nbytes in sizes:
        if key in owners:
            load[owners[key]] += nbytes
    for key, nbytes in sorted((kv for kv in sizes if kv[0] not in owners), key=lambda kv: (-kv[1], kv[0])):
        rank = min(range(num_ranks), key=lambda r: (load[r], r))
        owners[key] = rank
        load[rank] += nbytes
    return owners


def _nbytes(value: object) -> int:
    if isinstance(value, (bytes, str)):
        return len(value)
    nbytes = getattr(value, "nbytes", None)
    return int(nbytes) if nbytes is not None else int(np.asarray(value).nbytes)


def local_tensors(tensors: Sequence[Tensor], rank: int, num_ranks: int) -> list[tuple[Tensor, Box | None]]:
    """What this rank writes: its non-empty blocks, and the replicated tensors it owns, in the
    checkpoint's payload order (object graph node order, as a single process writes)."""
    replicated = [(t.key, _nbytes(t.value)) for t in tensors if isinstance(t.layout, Replicated)]
    owners = assign_owners(replicated, num_ranks, {objgraph.OBJECT_GRAPH_KEY: ROOT})
    mine: list[tuple[Tensor, Box | None]] = []
    for t in tensors:
        if isinstance(t.layout, Sharded):
            _check_block(t, t.layout)
            if t.layout.box.size and writes_replica(t.key, t.layout):
                mine.append((t, t.layout.box))
        elif owners[t.key] == rank:
            mine.append((t, None))
    return mine


def writes_replica(key: str, layout: Sharded) -> bool:
    """Whether this rank writes its block: of the ``replicas`` ranks holding it, the one the key's
    CRC picks (the same choice on every rank, spread over the replicas from key to key)."""
    return layout.replicas == 1 or zlib.crc32(key.encode()) % layout.replicas == layout.replica


def _signature(t: Tensor) -> tuple[str, str, tuple[int, ...]]:
    """``(key, TF dtype name, shape)`` of a value, host or device array alike (nothing is copied)."""
    described = as_tensor(t.value, t.key)
    return t.key, described.dtype.name, tuple(described.shape)


def _check_block(t: Tensor, layout: Sharded) -> None:
    """This rank's value must have the shape its Sharded ``layout`` declares, and must not be strings."""
    _, dtype, shape = _signature(t)
    if shape != layout.lengths:
        raise InvalidArgumentError(f"key {t.key!r}: this rank's value has shape {list(shape)} but its Sharded layout "
                                   f"declares a block of {list(layout.lengths)}", key=t.key)
    if dtype == "string":
        raise InvalidArgumentError(f"key {t.key!r}: string tensors cannot be Sharded", key=t.key)


def write_shard(prefix: str, tensors: Sequence[Tensor], rank: int, num_ranks: int, *, options=None,
                engines: EngineCache, io=None) -> Report:
    """Steps 1-2 of the protocol on one rank: write its shard under a temporary name, fsynced."""
    mine = local_tensors(tensors, rank, num_ranks)
    keys, described, use_gpu = tensors_for_engine({str(i): t.value for i, (t, _) in enumerate(mine)}, options)
    plan = plan_for(keys, described)
    writer = filesystem.FileSystemWriter(prefix, num_ranks, storage_config(options, io), shard_ids=[rank])
    try:
        entries = write_planned(plan, described, writer, use_gpu=use_gpu, engines=engines)
        files = writer.finish()
    except BaseException:
        writer.abort()
        raise
    pieces = tuple(Stored(t.key, entries[str(i)]._replace(shard_id=rank), box) for i, (t, box) in enumerate(mine))
    return Report(
        rank, pieces, tuple(files),
        replicated=tuple(_signature(t) for t in tensors
                         if isinstance(t.layout, Replicated) and t.key != objgraph.OBJECT_GRAPH_KEY),
        sharded=tuple((t.key, _signature(t)[1], t.layout.global_shape)
                      for t in tensors if isinstance(t.layout, Sharded)),
    )


# -- rank 0: merge and commit ---------------------------------------------------------------------

def merge_index(reports: Sequence[Report], num_ranks: int) -> bytes:
    """The merged ``.index``: replicated entries as they are, sharded tensors as TF's full entry
    (global shape and slice list, no data) plus one slice entry per block. CheckpointError when
    the ranks disagree or the blocks of a tensor do not tile it."""
    _check_agreement(reports)
    entries: dict[str | bytes, BundleEntry] = {}
    blocks: dict[str, list[tuple[Box, BundleEntry]]] = {}
    for report in reports:
        for piece in report.pieces:
            if piece.box is None:
                entries[piece.key] = piece.entry
            else:
                blocks.setdefault(piece.key, []).append((piece.box, piece.entry))
    for key, dtype_name, global_shape in reports[0].sharded:
        found = sorted(blocks.get(key, []), key=lambda b: b[0].offsets)
        problem = check_tiling(global_shape, [box for box, _ in found])
        if problem is not None:
            raise CheckpointError(f"the blocks of sharded key {key!r} do not tile its global shape: {problem}", key=key)
        if not found:  # a tensor with no elements: a plain empty entry
            entries[key] = BundleEntry(dtypes.as_dtype(dtype_name), tuple(global_shape), crc32c=crc.masked_crc32c(b""))
            continue
        slices = []
        for box, entry in found:
            extents = tuple(Extent(o, n) for o, n in zip(box.offsets, box.lengths))
            entries[slice_key(key, extents)] = entry
            slices.append(extents)
        entries[key] = BundleEntry(found[0][1].dtype, tuple(global_shape), slices=tuple(slices))
    return build_index(num_ranks, entries)


def _check_agreement(reports: Sequence[Report]) -> None:
    """Every rank must describe the same replicated and sharded tensors."""
    first = reports[0]
    for report in reports[1:]:
        for what, mine, theirs in (("replicated", first.replicated, report.replicated),
                                   ("sharded", first.sharded, report.sharded)):
            if mine != theirs:
                diff = sorted(set(mine) ^ set(theirs))[:3]
                raise CheckpointError(
                    f"rank {report.rank} and rank {first.rank} disagree on the {what} tensors "
                    f"(key, dtype, shape), e.g. {diff}; every rank must build the same model")


@dataclass(frozen=True)
class Committed:
    """Rank 0's verdict when the checkpoint was committed."""

    prefix: str


def commit(prefix: str, reports: dict[int, Report], missing: dict[int, str], num_ranks: int, *,
           fsync: bool, state: bool, publish: Callable[[str], None] | None = None) -> Committed | Failure:
    """Step 4 on rank 0: all reports in and clean → merged index, commit, state file; else a Failure.

    ``publish(prefix)`` (with ``state``) replaces the plain state-file update: a manager's
    retention, which then runs before any rank hears that the save is committed."""
    failed = sorted({r.rank for r in reports.values() if r.error is not None} | set(missing))
    if failed:
        reasons = [f"rank {r}: {missing[r] if r in missing else reports[r].error}" for r in failed]
        return Failure(tuple(failed), "; ".join(reasons))
    ordered = [reports[r] for r in range(num_ranks)]
    index = merge_index(ordered, num_ranks)
    files = [pair for r in ordered for pair in r.files]
    filesystem.commit_files(prefix, files, index, StorageConfig(fsync=fsync))
    if state and publish is not None:
        publish(prefix)
    elif state:
        directory = os.path.dirname(prefix) or os.curdir
        relative = os.path.relpath(prefix, directory)
        filesystem.publish_state(directory, CheckpointState(relative, (relative,)), prefix, StorageConfig(fsync=fsync))
    return Committed(prefix)


def save_distributed(prefix: str, tensors: Sequence[Tensor], group: Communicator, *, options=None,
                     engines: EngineCache, state: bool, io=None, publish: Callable[[str], None] | None = None) -> str:
    """The whole protocol on one rank; returns ``prefix`` once it is committed, or raises
    :class:`DistributedError` (on every rank) when it was not."""
    started = time.monotonic()
    prefix = os.path.abspath(os.fspath(prefix))
    report, local_error = _write_or_report(prefix, tensors, group, options, engines, io)
    written = time.monotonic() - started
    fsync = options.fsync if options is not None else True

    def decide(reports: dict[int, Report], missing: dict[int, str]) -> Committed | Failure:
        if written > group.timeout:  # the others stop waiting at timeout + grace: too late to start a commit
            late = f"finished writing after {written:.1f} s, past the {group.timeout:.0f} s timeout"
            missing = {**missing, ROOT: late}
        return commit(prefix, reports, missing, group.size, fsync=fsync, state=state, publish=publish)

    try:
        verdict = group.agree(report, decide, started=started, what=f"save of {prefix!r}")
    except BaseException:
        _abort(report)
        raise
    if isinstance(verdict, Committed):
        return prefix
    _abort(report)
    raise DistributedError(
        f"rank {group.rank}: distributed save of {prefix!r} failed and nothing was committed: {verdict.message}",
        ranks=verdict.ranks, path=prefix) from local_error


def _write_or_report(prefix, tensors, group, options, engines, io) -> tuple[Report, BaseException | None]:
    """Write this rank's shard; an error becomes a report (so the others hear of it) rather than a raise."""
    try:
        return write_shard(prefix, tensors, group.rank, group.size, options=options, engines=engines, io=io), None
    except Exception as exc:
        message = f"{type(exc).__name__}: {exc}"
        return Report(group.rank, (), (), (), (), error=message), exc


def _abort(report: Report) -> None:
    """Delete this rank's temporary shard (a no-op once it has been renamed or removed)."""
    for temp, _ in report.files:
        try:
            os.unlink(temp)
        except OSError:
            pass
