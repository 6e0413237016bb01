"""How a variable is split across the ranks of a distributed job, and the box arithmetic of resharding.

A variable is either :class:`Replicated` (every rank holds the whole tensor; one rank saves it)
or :class:`Sharded` (this rank holds the block ``[offsets, offsets + lengths)`` of a tensor of
``global_shape``). Sharded blocks are stored as TensorFlow stores partitioned variables (spec
section 7.6), so any reader, TensorFlow's included, assembles the whole tensor.

Everything here is pure: frozen dataclasses and functions over tuples of ints.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidArgumentError


@dataclass(frozen=True)
class Box:
    """A rectangular block of a tensor: ``[offsets[d], offsets[d] + lengths[d])`` in each dimension."""

    offsets: tuple[int, ...]
    lengths: tuple[int, ...]

    @property
    def size(self) -> int:
        """Number of elements in the block."""
        return math.prod(self.lengths)

    def __str__(self) -> str:
        return "[" + ", ".join(f"{o}:{o + n}" for o, n in zip(self.offsets, self.lengths)) + "]"

    def region(self, origin: Sequence[int] | None = None) -> tuple[slice, ...]:
        """NumPy index of this block inside an array whose element 0 sits at ``origin`` (default: 0)."""
        origin = origin or (0,) * len(self.offsets)
        return tuple(slice(o - base, o - base + n) for o, n, base in zip(self.offsets, self.lengths, origin))


@dataclass(frozen=True)
class Replicated:
    """Every rank holds the whole tensor with identical values; one rank writes it."""


@dataclass(frozen=True)
class Sharded:
    """This rank holds the block ``[offsets, offsets + lengths)`` of a tensor of ``global_shape``.

    ``replicas`` ranks hold the same block (a DTensor ``Replicate`` mesh dimension); this rank is
    replica ``replica`` of them. One replica per tensor writes it, chosen by key.
    """

    global_shape: tuple[int, ...]
    offsets: tuple[int, ...]
    lengths: tuple[int, ...]
    replica: int = 0
    replicas: int = 1

    def __post_init__(self) -> None:
        for name in ("global_shape", "offsets", "lengths"):
            object.__setattr__(self, name, tuple(int(x) for x in getattr(self, name)))
        if not 0 <= self.replica < self.replicas:
            raise InvalidArgumentError(f"Sharded: replica {self.replica} is not in [0, {self.replicas})")
        rank = len(self.global_shape)
        if len(self.offsets) != rank or len(self.lengths) != rank:
            raise InvalidArgumentError(
                f"Sharded: global_shape {list(self.global_shape)}, offsets {list(self.offsets)} and "
                f"lengths {list(self.lengths)} must have the same rank")
        if rank == 0:
            raise InvalidArgumentError("Sharded: a scalar cannot be split; declare it Replicated")
        for dim, off, n in zip(self.global_shape, self.offsets, self.lengths):
            if off < 0 or n < 0 or off + n > dim:
                raise InvalidArgumentError(
                    f"Sharded: block at offsets {list(self.offsets)} with lengths {list(self.lengths)} "
                    f"lies outside global shape {list(self.global_shape)}")

    @property
    def box(self) -> Box:
        return Box(self.offsets, self.lengths)

    @classmethod
    def split(cls, global_shape: Sequence[int], rank: int, size: int, axis: int = 0) -> Sharded:
        """Rank ``rank``'s block when ``axis`` is cut into ``size`` near-equal runs
        (``numpy.array_split``'s rule: the first ``dim % size`` runs are one longer)."""
        shape = tuple(int(d) for d in global_shape)
        if not 0 <= rank < size:
            raise InvalidArgumentError(f"Sharded.split: rank {rank} is not in [0, {size})")
        start, length = even_run(shape[axis], rank, size)
        offsets = tuple(start if d == axis else 0 for d in range(len(shape)))
        lengths = tuple(length if d == axis else n for d, n in enumerate(shape))
        return cls(shape, offsets, lengths)


Layout = Replicated | Sharded
REPLICATED = Replicated()


def even_run(dim: int, index: int, count: int) -> tuple[int, int]:
    """``(start, length)`` of run ``index`` when ``dim`` items are cut into ``count`` near-equal runs."""
    base, extra = divmod(dim, count)
    return index * base + min(index, extra), base + (1 if index < extra else 0)


# -- how a variable declares its layout -------------------------------------------------------

_LAYOUTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def set_layout(variable: Any, layout: Layout) -> Any:
    """Declare how ``variable`` (any trackable) is split across ranks; returns ``variable``.

    A ``Sharded`` variable's own value is its block, so its shape must equal ``layout.lengths``.
    Undeclared objects are :class:`Replicated`.
    """
    if not isinstance(layout, (Replicated, Sharded)):
        raise InvalidArgumentError(f"layout must be Replicated() or Sharded(...), got {layout!r}")
    shape = getattr(variable, "shape", None)
    if isinstance(layout, Sharded) and shape is not None and tuple(shape) != layout.lengths:
        raise InvalidArgumentError(
            f"variable {getattr(variable, 'name', variable)!r} has shape {list(shape)} but its Sharded layout "
            f"says this rank holds a block of {list(layout.lengths)}")
    _LAYOUTS[variable] = layout
    return variable


def layout_of(obj: Any) -> Layout:
    """The layout declared for ``obj`` with :func:`set_layout`, else the one it reports itself
    (``_checkpoint_layout()``: a torch adapter's DTensor), else :data:`REPLICATED`."""
    try:
        declared = _LAYOUTS.get(obj)
    except TypeError:  # not weak-referenceable: nothing can have been declared for it
        declared = None
    if declared is not None:
        return declared
    own = getattr(obj, "_checkpoint_layout", None)
    return own() if own is not None else REPLICATED


# -- box arithmetic ------------------------------------------------------------------------------

def intersect(a: Box, b: Box) -> Box | None:
    """The common block of two boxes, or None when they share no element."""
    offsets, lengths = [], []
    for ao, an, bo, bn in zip(a.offsets, a.lengths, b.offsets, b.lengths):
        lo, hi = max(ao, bo), min(ao + an, bo + bn)
        if hi <= lo:
            return None
        offsets.append(lo)
        lengths.append(hi - lo)
    return Box(tuple(offsets), tuple(lengths))


def overlaps(target: Box, stored: Sequence[Box]) -> list[tuple[int, Box]]:
    """``(index into stored, common block)`` for every stored box that shares elements with ``target``."""
    found = []
    for i, box in enumerate(stored):
        common = intersect(target, box)
        if common is not None:
            found.append((i, common))
    return found


def check_tiling(shape: Sequence[int], boxes: Sequence[Box]) -> str | None:
    """Why ``boxes`` do not cover ``shape`` exactly once (a message), or None when they tile it."""
    whole = Box((0,) * len(shape), tuple(shape))
    for box in boxes:
        if len(box.offsets) != len(shape) or intersect(box, whole) != box and box.size:
            return f"block {box} lies outside shape {list(shape)}"
    nonempty = [b for b in boxes if b.size]
    for i, a in enumerate(nonempty):
        for b in nonempty[i + 1:]:
            if intersect(a, b) is not None:
                return f"blocks {a} and {b} overlap"
    total = sum(b.size for b in nonempty)
    if total != math.prod(shape):
        return f"blocks cover {total} of the {math.prod(shape)} elements of shape {list(shape)}"
    return None
