"""The save pipeline: values → described tensors → plan → engine (CRC + writes) → index → atomic commit."""

from __future__ import annotations

import os
import struct
from collections.abc import Mapping, Sequence

import numpy as np

from .arrays import DeviceTensor, HostTensor, as_tensor
from .engine.cpu import CpuEngine
from .engine.select import EngineCache, to_host, wants_gpu
from .errors import CheckpointError
from .format import crc, dtypes, sstable
from .format.bundle import BundleEntry, encode_entry, encode_header
from .format.dtypes import DType
from .options import CheckpointOptions, storage_config
from .plan import SavePlan, TensorSpec, build_save_plan
from .storage.filesystem import FileSystemWriter, PosixIO


def tensors_for_engine(tensors: Mapping[str, object], options: CheckpointOptions | None = None,
                     known_crcs: Mapping[str, int] | None = None) -> tuple[list[str], list, bool]:
    """Keys, tensors (host or device) and whether the GPU engine saves them (``options.io_device`` decides;
    device tensors bound for the CPU engine are copied to the host here). ``known_crcs``: masked
    CRC32Cs already computed of some host values (an asynchronous save's capture), not computed again."""
    keys = list(tensors)
    described = [_described(value, key, known_crcs) for key, value in tensors.items()]
    use_gpu = wants_gpu(described, options.io_device if options is not None else None)
    if not use_gpu and not all(type(t) is HostTensor for t in described):
        described = [to_host(t, k) for t, k in zip(described, keys)]
    return keys, described, use_gpu


_HOST_DTYPES: dict[np.dtype, DType] = {}


def _described(value: object, key: str, known_crcs: Mapping[str, int] | None) -> HostTensor | DeviceTensor:
    """``as_tensor``, with a short path for the common case: a C-contiguous, native-order NumPy array."""
    if type(value) is np.ndarray and value.flags.c_contiguous:
        dtype = _HOST_DTYPES.get(value.dtype)
        if dtype is not None:
            known = known_crcs.get(key) if known_crcs is not None else None
            return HostTensor(dtype, value.shape, value.reshape(-1).view(np.uint8), known)
        if value.dtype.kind in "biufc" and value.dtype.isnative:
            try:
                _HOST_DTYPES[value.dtype] = dtypes.from_numpy(value.dtype)
            except CheckpointError:
                return as_tensor(value, key)  # its error names the key
            return _described(value, key, known_crcs)
    return as_tensor(value, key)


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


_PLACEHOLDER_CRC = 0xFFFFFFFF


class IndexTemplate:
    """The ``.index`` of one plan with every tensor's CRC left to fill in: the table is built once, and
    each save writes its CRCs into their places and recomputes the data blocks' CRCs.

    ``fill`` gives exactly ``index_bytes(plan, crcs)``; it returns None when a CRC is 0 (proto3 then
    omits the field, so the entry is shorter and the layout differs).
    """

    def __init__(self, plan: SavePlan):
        order = sorted(range(len(plan.items)), key=lambda i: plan.items[i].key.encode("utf-8"))
        rows = [(plan.items[i].key.encode("utf-8"), _entry_bytes(plan.items[i], _PLACEHOLDER_CRC)) for i in order]
        layout = sstable.TableLayout()
        self._table = sstable.build_table([(b"", encode_header(plan.num_shards)), *rows], layout)
        ends = np.empty(len(order), np.int64)  # where each tensor's 4 CRC bytes are, in plan order
        for row, (i, (_, value)) in enumerate(zip(order, rows)):
            ends[i] = layout.values[row + 1] + len(value) - 4
        self._places = ends[:, None] + np.arange(4)
        self._blocks = tuple(layout.data_blocks)

    def fill(self, crcs: Sequence[int]) -> bytes | None:
        values = np.asarray(crcs, dtype="<u4")
        if values.shape != (self._places.shape[0],) or not values.all():
            return None
        table = np.frombuffer(bytearray(self._table), np.uint8)
        table[self._places] = values.view(np.uint8).reshape(-1, 4)
        view = memoryview(table.data)
        for start, length in self._blocks:
            struct.pack_into("<I", view, start + length, crc.masked_crc32c(view[start : start + length]))
        return table.tobytes()


def plan_for(keys: Sequence[str], described: Sequence, max_shard_size: int | None = None) -> SavePlan:
    """The save plan of described tensors, in the given order."""
    return build_save_plan(
        [TensorSpec(k, t.dtype, t.shape, t.nbytes) for k, t in zip(keys, described)], max_shard_size=max_shard_size
    )


class PlanCache:
    """The save plan and index template of the last save, reused while its keys (the same tuple
    object), dtypes, shapes, sizes and shard limit are unchanged (PyTorch DCP caches its plans alike)."""

    def __init__(self) -> None:
        self._last: tuple[tuple, SavePlan, IndexTemplate] | None = None

    def plan(self, keys: Sequence[str], described: Sequence, max_shard_size: int | None
             ) -> tuple[SavePlan, IndexTemplate]:
        signature = (tuple(keys), max_shard_size, tuple((t.dtype, t.shape, t.nbytes) for t in described))
        if self._last is not None and self._last[0] == signature:
            return self._last[1], self._last[2]
        plan = plan_for(keys, described, max_shard_size)
        template = IndexTemplate(plan)
        self._last = (signature, plan, template)
        return plan, template


def write_tensors(
    prefix: str | os.PathLike,
    tensors: Mapping[str, object],
    *,
    options=None,
    max_shard_size: int | None = None,
    io: PosixIO | None = None,
    engines: EngineCache | None = None,
    known_crcs: Mapping[str, int] | None = None,
    plans: PlanCache | None = None,
) -> str:
    """Write ``{key: value}`` as a TensorFlow checkpoint at ``prefix``; return ``str(prefix)``.

    Payloads are laid out in the mapping's order (TensorFlow's own order reproduces its bytes).
    The checkpoint appears atomically: until the index is renamed into place nothing is visible.
    Device arrays are saved by the GPU engine (kept in ``engines``, or a temporary one), unless
    ``options.io_device == "cpu"``. ``io`` substitutes the system calls (fault injection in tests).
    ``known_crcs``: masked CRCs already computed (see ``tensors_for_engine``); ``plans``: where the
    plan and index layout of the last save with the same keys and sizes is reused.
    """
    prefix = os.fspath(prefix)
    keys, described, use_gpu = tensors_for_engine(tensors, options, known_crcs)
    plan, template = plans.plan(keys, described, max_shard_size) if plans is not None else (
        plan_for(keys, described, max_shard_size), None)
    writer = FileSystemWriter(prefix, plan.num_shards, storage_config(options, io))
    cache = engines if engines is not None else EngineCache()
    try:
        crcs = (cache.gpu() if use_gpu else CpuEngine()).write(plan, described, writer)
        index = template.fill(crcs) if template is not None else None
        writer.commit(index if index is not None else index_bytes(plan, crcs))
    except BaseException:
        writer.abort()
        raise
    finally:
        if engines is None:
            cache.close()
    return prefix
