"""The save pipeline: values → host tensors → plan → engine (CRC + writes) → index → atomic commit."""

from __future__ import annotations

import os
from collections.abc import Mapping

from .arrays import as_tensor
from .engine.cpu import CpuEngine
from .format.bundle import BundleEntry, build_index
from .plan import TensorSpec, build_save_plan
from .storage.filesystem import FileSystemWriter


def write_tensors(
    prefix: str | os.PathLike,
    tensors: Mapping[str, object],
    *,
    options=None,
    max_shard_size: int | None = None,
) -> str:
    """Write ``{key: value}`` as a TensorFlow checkpoint at ``prefix``; return ``str(prefix)``.

    Payloads are laid out in the mapping's order (TensorFlow's own order reproduces its bytes).
    The checkpoint appears atomically: until the index is renamed into place nothing is visible.
    """
    prefix = os.fspath(prefix)
    host = [as_tensor(value, key) for key, value in tensors.items()]
    keys = list(tensors)
    plan = build_save_plan(
        [TensorSpec(k, t.dtype, t.shape, t.nbytes) for k, t in zip(keys, host)], max_shard_size=max_shard_size
    )
    writer = FileSystemWriter(prefix, plan.num_shards, fsync=getattr(options, "fsync", True))
    try:
        crcs = CpuEngine().write(plan, host, writer)
        entries = {
            item.key: BundleEntry(item.dtype, item.shape, item.shard, item.offset, item.nbytes, value)
            for item, value in zip(plan.items, crcs)
        }
        writer.commit(build_index(plan.num_shards, entries))
    except BaseException:
        writer.abort()
        raise
    return prefix
