"""``gpuckpt diff A B``: keys added, removed, changed in dtype or shape; with ``--values``, which
values differ and by how much, read in chunks from both checkpoints (never a whole checkpoint
in memory; every chunk's CRC is accumulated and checked as in ``verify``).

Exit status, as diff(1): 0 no difference, 1 differences, 2 trouble.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import asdict, dataclass

import numpy as np

from ..arrays import aligned_empty
from ..errors import DataLossError, DataLossReason
from ..format import crc
from ..format.bundle import BundleEntry, data_file_name
from ..reader import CheckpointReader
from .common import key_matcher, resolve_prefix

SCHEMA = "gpuckpt.diff/1"
CHUNK_BYTES = 8 << 20


@dataclass(frozen=True)
class ValueDiff:
    """How two same-typed tensors differ: elements unequal (bitwise), largest absolute and relative
    difference over the finite ones (None for non-numeric dtypes)."""

    key: str
    elements: int
    differing: int
    max_abs: float | None
    max_rel: float | None


def _dtype_and_shape(e: BundleEntry) -> str:
    return f"{e.dtype.name} {list(e.shape)}"


def run(a: str, b: str, *, values: bool = False, pattern: str | None = None, as_json: bool = False) -> int:
    match = key_matcher(pattern)
    with CheckpointReader(resolve_prefix(a)) as ra, CheckpointReader(resolve_prefix(b)) as rb:
        ea = {k: e for k, e in ra.index.entries.items() if match(k)}
        eb = {k: e for k, e in rb.index.entries.items() if match(k)}
        added = sorted(set(eb) - set(ea))
        removed = sorted(set(ea) - set(eb))
        common = sorted(set(ea) & set(eb))
        changed = [k for k in common if (ea[k].dtype, ea[k].shape) != (eb[k].dtype, eb[k].shape)]
        same_type = [k for k in common if (ea[k].dtype, ea[k].shape) == (eb[k].dtype, eb[k].shape)]
        # unequal CRCs of whole (unsliced) entries prove the bytes differ, from the indexes alone
        crc_differs = [k for k in same_type
                       if not ea[k].is_sliced and not eb[k].is_sliced and ea[k].crc32c != eb[k].crc32c]
        diffs = [d for d in (compare(ra, rb, k) for k in same_type) if d.differing] if values else []
    if as_json:
        doc = {"schema": SCHEMA, "a": ra.prefix, "b": rb.prefix, "added": added, "removed": removed,
               "changed": [{"key": k, "a": _dtype_and_shape(ea[k]), "b": _dtype_and_shape(eb[k])} for k in changed],
               "crc_differs": crc_differs, "values": [asdict(d) for d in diffs] if values else None}
        json.dump(doc, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        for k in added:
            print(f"+ {k}  {_dtype_and_shape(eb[k])}")
        for k in removed:
            print(f"- {k}  {_dtype_and_shape(ea[k])}")
        for k in changed:
            print(f"~ {k}  {_dtype_and_shape(ea[k])} -> {_dtype_and_shape(eb[k])}")
        if values:
            for d in diffs:
                size = "" if d.max_abs is None else f", max abs {d.max_abs:.6g}, max rel {d.max_rel:.6g}"
                print(f"! {d.key}  {d.differing} of {d.elements} elements differ{size}")
        elif crc_differs:
            print(f"{len(crc_differs)} tensor(s) of the same dtype and shape hold different bytes "
                  "(their CRCs differ); --values says which values and by how much")
        print(f"{len(added)} added, {len(removed)} removed, {len(changed)} changed in dtype or shape"
              + (f", {len(diffs)} with different values" if values else ""))
    different = added or removed or changed or (diffs if values else crc_differs)
    return 1 if different else 0


def compare(ra: CheckpointReader, rb: CheckpointReader, key: str) -> ValueDiff:
    """Compare one tensor of the same dtype and shape in both checkpoints, chunk by chunk."""
    entry = ra.index.entries[key]
    if entry.dtype.is_string or entry.is_sliced or rb.index.entries[key].is_sliced:
        return _compare_whole(ra, rb, key)
    stats = _Stats(entry)
    dtype = entry.dtype.numpy
    assert dtype is not None, "only strings lack a NumPy dtype, and they are compared whole"
    itemsize = entry.dtype.itemsize
    step = max(CHUNK_BYTES // max(itemsize, 1), 1) * itemsize
    buffers = [aligned_empty((min(step, entry.size),), np.dtype(np.uint8)) for _ in range(2)]
    crcs = [0, 0]
    for start in range(0, entry.size, step):
        n = min(step, entry.size - start)
        for i, reader in enumerate((ra, rb)):
            reader.read_unverified(key, reader.index.entries[key], start, buffers[i][:n])
            crcs[i] = crc.crc32c(buffers[i][:n], crcs[i])
        stats.add(buffers[0][:n].view(dtype), buffers[1][:n].view(dtype))
    for value, reader in zip(crcs, (ra, rb)):
        e = reader.index.entries[key]
        if crc.mask(value) != e.crc32c:
            path = data_file_name(reader.prefix, e.shard_id, reader.index.num_shards)
            raise DataLossError(f"checksum mismatch for key {key!r} in {path!r}: stored {e.crc32c:#010x}",
                                path=path, key=key, reason=DataLossReason.CRC_MISMATCH)
    return stats.result(key)


def _compare_whole(ra: CheckpointReader, rb: CheckpointReader, key: str) -> ValueDiff:
    """String and partitioned tensors are read whole (one tensor at a time)."""
    va, vb = ra.get_tensor(key), rb.get_tensor(key)
    if isinstance(va, bytes):
        return ValueDiff(key, 1, int(va != vb), None, None)
    stats = _Stats(ra.index.entries[key])
    if va.dtype == object:
        return ValueDiff(key, va.size, int(np.count_nonzero(va.reshape(-1) != vb.reshape(-1))), None, None)
    stats.add(va.reshape(-1), vb.reshape(-1))
    return stats.result(key)


class _Stats:
    """Running counts over chunks: bitwise-unequal elements and the largest differences."""

    def __init__(self, entry: BundleEntry):
        self.numeric = entry.dtype.numpy is not None and np.dtype(entry.dtype.numpy).kind in "fciu" or \
            entry.dtype.name.startswith(("bfloat", "float8"))
        self.elements = self.differing = 0
        self.max_abs = self.max_rel = 0.0

    def add(self, a: np.ndarray, b: np.ndarray) -> None:
        self.elements += a.size
        width = a.dtype.itemsize
        bits = np.uint8 if width == 1 else {2: np.uint16, 4: np.uint32, 8: np.uint64}.get(width)
        if bits is not None:
            unequal = a.view(bits) != b.view(bits)
        else:  # complex128: two 8-byte halves per element
            unequal = (a.view(np.uint64).reshape(-1, 2) != b.view(np.uint64).reshape(-1, 2)).any(axis=1)
        count = int(np.count_nonzero(unequal))
        self.differing += count
        if not count or not self.numeric:
            return
        x, y = a[unequal], b[unequal]
        wide = np.complex128 if x.dtype.kind == "c" else np.float64
        x, y = x.astype(wide), y.astype(wide)
        with np.errstate(all="ignore"):
            diff = np.abs(x - y)
            scale = np.maximum(np.abs(x), np.abs(y))
            rel = np.where(scale > 0, diff / np.where(scale > 0, scale, 1), 0.0)
        finite = np.isfinite(diff)
        if finite.any():
            self.max_abs = max(self.max_abs, float(diff[finite].max()))
            self.max_rel = max(self.max_rel, float(rel[finite].max()))
        if not finite.all():
            self.max_abs = self.max_rel = math.inf

    def result(self, key: str) -> ValueDiff:
        if not self.numeric:
            return ValueDiff(key, self.elements, self.differing, None, None)
        return ValueDiff(key, self.elements, self.differing, self.max_abs, self.max_rel)
