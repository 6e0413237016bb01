"""Save plans: which bytes go to which shard at which offset. Pure functions over plain data."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .format.dtypes import DType


@dataclass(frozen=True)
class TensorSpec:
    """What the planner needs to know of one tensor."""

    key: str
    dtype: DType
    shape: tuple[int, ...]
    nbytes: int


@dataclass(frozen=True)
class WriteItem:
    """One tensor's place on disk."""

    key: str
    dtype: DType
    shape: tuple[int, ...]
    nbytes: int
    shard: int
    offset: int


@dataclass(frozen=True)
class SavePlan:
    """Every tensor's place, in write order, and the size of each shard."""

    num_shards: int
    items: tuple[WriteItem, ...]
    shard_sizes: tuple[int, ...]


def build_save_plan(specs: Sequence[TensorSpec], *, max_shard_size: int | None = None) -> SavePlan:
    """Lay tensors out back to back in the given order; open a new shard when one would pass
    ``max_shard_size`` (a tensor larger than the limit gets a shard of its own)."""
    if max_shard_size is not None and max_shard_size <= 0:
        raise ValueError(f"max_shard_size must be positive, got {max_shard_size}")
    sizes = [0]
    placed: list[tuple[TensorSpec, int, int]] = []
    for spec in specs:
        if max_shard_size is not None and sizes[-1] and sizes[-1] + spec.nbytes > max_shard_size:
            sizes.append(0)
        placed.append((spec, len(sizes) - 1, sizes[-1]))
        sizes[-1] += spec.nbytes
    items = tuple(WriteItem(s.key, s.dtype, s.shape, s.nbytes, shard, off) for s, shard, off in placed)
    return SavePlan(len(sizes), items, tuple(sizes))
