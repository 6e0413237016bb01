"""The save pipeline: values → described tensors → plan → engine (CRC + writes) → index → atomic commit."""

from __future__ import annotations

import os
from collections.abc import Mapping

from .arrays import as_tensor
from .engine.cpu import CpuEngine
from .engine.select import EngineCache, to_host, wants_gpu
from .format.bundle import BundleEntry, build_index
from .plan import TensorSpec, build_save_plan
from .storage.filesystem import FileSystemWriter, PosixIO


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
    keys = list(tensors)
    described = [as_tensor(value, key) for key, value in tensors.items()]
    use_gpu = wants_gpu(described, getattr(options, "io_device", None))
    if not use_gpu:
        described = [to_host(t, k) for t, k in zip(described, keys)]
    plan = build_save_plan(
        [TensorSpec(k, t.dtype, t.shape, t.nbytes) for k, t in zip(keys, described)], max_shard_size=max_shard_size
    )
    fsync = getattr(options, "fsync", True)
    writer = FileSystemWriter(prefix, plan.num_shards, fsync=fsync, **({"io": io} if io else {}))
    cache = engines if engines is not None else EngineCache()
    try:
        crcs = (cache.gpu() if use_gpu else CpuEngine()).write(plan, described, writer)
        entries = {
            item.key: BundleEntry(item.dtype, item.shape, item.shard, item.offset, item.nbytes, value)
            for item, value in zip(plan.items, crcs)
        }
        writer.commit(build_index(plan.num_shards, entries))
    except BaseException:
        writer.abort()
        raise
    finally:
        if engines is None:
            cache.close()
    return prefix
