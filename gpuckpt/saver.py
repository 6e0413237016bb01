"""The save pipeline: values → described tensors → plan → engine (CRC + writes) → index → atomic commit."""

from __future__ import annotations

import os
import struct
from collections.abc import Mapping, Sequence

from .arrays import as_tensor
from .engine.cpu import CpuEngine
from .engine.select import EngineCache, to_host, wants_gpu
from .format import sstable
from .format.bundle import BundleEntry, encode_entry, encode_header
from .options import storage_config
from .plan import SavePlan, TensorSpec, build_save_plan
from .storage.filesystem import FileSystemWriter, PosixIO


def tensors_for_engine(tensors: Mapping[str, object], options=None) -> tuple[list[str], list, bool]:
    """Keys, tensors (host or device) and whether the GPU engine saves them (``options.io_device`` decides;
    device tensors bound for the CPU engine are copied to the host here)."""
    keys = list(tensors)
    described = [as_tensor(value, key) for key, value in tensors.items()]
    use_gpu = wants_gpu(described, getattr(options, "io_device", None))
    if not use_gpu:
        described = [to_host(t, k) for t, k in zip(described, keys)]
    return keys, described, use_gpu


def write_planned(plan: SavePlan, described: Sequence, writer, *, use_gpu: bool,
                  engines: EngineCache) -> dict[str, BundleEntry]:
    """Write a plan's tensors through ``writer`` with the chosen engine; return their index entries
    (``shard_id`` is the plan's shard, local to ``writer``)."""
    crcs = (engines.gpu() if use_gpu else CpuEngine()).write(plan, described, writer)
    return {
        item.key: BundleEntry(item.dtype, item.shape, item.shard, item.offset, item.nbytes, value)
        for item, value in zip(plan.items, crcs)
    }


_CRC_TAG = b"\x35"  # BundleEntryProto.crc32c: field 6, fixed32; the last field of an unsliced entry
_ENTRY_PREFIXES: dict[tuple, bytes] = {}  # an entry's bytes up to its CRC, reused by every save of that layout
_MAX_PREFIXES = 1 << 16


def _entry_bytes(item, crc_value: int) -> bytes:
    """``encode_entry`` of one planned, unsliced tensor, from its cached prefix plus the CRC field
    (proto3 omits a zero CRC, as ``encode_entry`` does)."""
    layout = (item.dtype.enum, item.shape, item.shard, item.offset, item.nbytes)
    prefix = _ENTRY_PREFIXES.get(layout)
    if prefix is None:
        if len(_ENTRY_PREFIXES) >= _MAX_PREFIXES:
            _ENTRY_PREFIXES.clear()
        prefix = _ENTRY_PREFIXES[layout] = encode_entry(
            BundleEntry(item.dtype, item.shape, item.shard, item.offset, item.nbytes, 0))
    return prefix + _CRC_TAG + struct.pack("<I", crc_value) if crc_value else prefix


def index_bytes(plan: SavePlan, crcs: Sequence[int]) -> bytes:
    """The ``.index`` of a single-process save (the bytes ``build_index`` gives for the same entries),
    built without an entry object per tensor."""
    rows = sorted((item.key.encode("utf-8"), _entry_bytes(item, value)) for item, value in zip(plan.items, crcs))
    return sstable.build_table([(b"", encode_header(plan.num_shards)), *rows])


def plan_for(keys: Sequence[str], described: Sequence, max_shard_size: int | None = None) -> SavePlan:
    """The save plan of described tensors, in the given order."""
    return build_save_plan(
        [TensorSpec(k, t.dtype, t.shape, t.nbytes) for k, t in zip(keys, described)], max_shard_size=max_shard_size
    )


def write_tensors(
    prefix: str | os.PathLike,
    tensors: Mapping[str, object],
    *,
    options=None,
    max_shard_size: int | None = None,
    io: PosixIO | None = None,
    engines: EngineCache | None = None,
) -> str:
    """Write ``{key: value}`` as a TensorFlow checkpoint at ``prefix``; return ``str(prefix)``.

    Payloads are laid out in the mapping's order (TensorFlow's own order reproduces its bytes).
    The checkpoint appears atomically: until the index is renamed into place nothing is visible.
    Device arrays are saved by the GPU engine (kept in ``engines``, or a temporary one), unless
    ``options.io_device == "cpu"``. ``io`` substitutes the system calls (fault injection in tests).
    """
    prefix = os.fspath(prefix)
    keys, described, use_gpu = tensors_for_engine(tensors, options)
    plan = plan_for(keys, described, max_shard_size)
    writer = FileSystemWriter(prefix, plan.num_shards, storage_config(options, io))
    cache = engines if engines is not None else EngineCache()
    try:
        crcs = (cache.gpu() if use_gpu else CpuEngine()).write(plan, described, writer)
        writer.commit(index_bytes(plan, crcs))
    except BaseException:
        writer.abort()
        raise
    finally:
        if engines is None:
            cache.close()
    return prefix
