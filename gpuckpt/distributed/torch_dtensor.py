"""DTensor (FSDP2, tensor parallel) values as distributed layouts: each rank's local shard is its block.

A DTensor's mesh and placements say which block of the global tensor this rank holds: each
``Shard(d)`` mesh dimension cuts tensor dimension ``d`` (``torch.chunk``'s rule, so shards may
be uneven or empty; several mesh dimensions may cut the same tensor dimension), each
``Replicate`` mesh dimension copies it. The block becomes a :class:`~.layout.Sharded` layout
whose ``replicas`` are the ranks holding the same block (one of them writes it), so the
merged index stores every element once, as TensorFlow stores a partitioned variable.

A single-process ``Checkpoint`` accepts a DTensor only where its local shard is the whole
tensor (a one-rank mesh, or all ``Replicate``); a sharded one would save a fragment under the
whole tensor's key, so it is an error pointing at :class:`~.checkpoint.DistributedCheckpoint`,
which lets local shards through (:func:`local_shards`).
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import sys
from collections.abc import Iterator
from typing import Any

from .._deps import import_optional
from ..errors import InvalidArgumentError
from .layout import REPLICATED, Layout, Sharded

_LOCAL_SHARDS = contextvars.ContextVar("gpuckpt_local_shards", default=False)


def is_dtensor(value: Any) -> bool:
    """True for a ``torch.distributed.tensor.DTensor`` (no import: none can exist before its module)."""
    module = sys.modules.get("torch.distributed.tensor")
    return module is not None and isinstance(value, module.DTensor)


@contextlib.contextmanager
def local_shards() -> Iterator[None]:
    """Within it, DTensors are saved and restored as their local shards (a distributed save or restore)."""
    token = _LOCAL_SHARDS.set(True)
    try:
        yield
    finally:
        _LOCAL_SHARDS.reset(token)


def local_tensor(tensor: Any, name: str = "") -> Any:
    """The tensor to save or restore in place for ``tensor``: itself, or a DTensor's local shard.

    Outside :func:`local_shards`, a DTensor whose shard is not the whole tensor is an error.
    """
    if not is_dtensor(tensor):
        return tensor
    local = tensor.to_local()
    if not _LOCAL_SHARDS.get() and tuple(local.shape) != tuple(tensor.shape):
        raise InvalidArgumentError(
            f"tensor {name or tuple(tensor.shape)!r} is a DTensor sharded over a mesh of {tensor.device_mesh.size()} "
            f"ranks ({_placements(tensor)}); a single-process Checkpoint would save only this rank's shard "
            f"{list(local.shape)} of {list(tensor.shape)}: save and restore it with "
            "gpuckpt.distributed.DistributedCheckpoint (every rank)", key=name or None)
    return local


def _placements(tensor: Any) -> str:
    return ", ".join(map(str, tensor.placements))


def layout_of_tensor(tensor: Any, name: str = "") -> Layout:
    """The layout of a torch tensor: :data:`REPLICATED` for plain tensors, else its DTensor block."""
    if not is_dtensor(tensor):
        return REPLICATED
    placement_types = import_optional("torch.distributed.tensor.placement_types", extra="torch")
    label = name or str(tuple(tensor.shape))
    for placement in tensor.placements:
        if type(placement) not in (placement_types.Shard, placement_types.Replicate):
            raise InvalidArgumentError(
                f"DTensor {label!r} has placement {placement} ({_placements(tensor)}): gpuckpt saves Shard and "
                "Replicate placements (a Partial value is not a tensor yet: redistribute it; a strided shard is "
                "not one block)", key=name or None)
    mesh = tensor.device_mesh
    coordinate = mesh.get_coordinate()
    if coordinate is None:
        raise InvalidArgumentError(f"DTensor {label!r}: this rank is not in its device mesh", key=name or None)
    global_shape = tuple(int(d) for d in tensor.shape)
    replicate_dims = [i for i, p in enumerate(tensor.placements) if type(p) is placement_types.Replicate]
    if len(replicate_dims) == len(tensor.placements) or not global_shape:
        return REPLICATED  # every rank holds it whole: written once, like any replicated value
    utils = import_optional("torch.distributed.tensor._utils", extra="torch")
    lengths, offsets = utils.compute_local_shape_and_global_offset(global_shape, mesh, tensor.placements)
    sizes = [mesh.size(i) for i in replicate_dims]
    replica = 0
    for dim, size in zip(replicate_dims, sizes):
        replica = replica * size + coordinate[dim]
    return Sharded(global_shape, offsets, lengths, replica=replica, replicas=math.prod(sizes))
