"""A data shard that is a sparse file: a huge declared tensor over a few bytes on disk.

Reading it must fail its CRC without allocating (or reading) the bytes the entry declares, in a
child under the 4 GiB address-space cap; and a large tensor that really is zeros over a hole
(as ZFS stores zero blocks) must still read back.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

import gpuckpt
from gpuckpt.errors import DataLossReason
from gpuckpt.format import bundle, crc
from gpuckpt.format.bundle import BundleEntry
from gpuckpt.format.dtypes import BY_NAME
from gpuckpt.storage.filesystem import SPARSE_CHECK_BYTES

from . import hostile_child

F32 = BY_NAME["float"]
SMALL = 96 << 20


def sparse_checkpoint(prefix: str, size: int, present: bytes, stored_crc: int) -> None:
    """One float32 entry ``t`` of ``size`` bytes at offset 0 of a sparse data file holding only ``present``."""
    entry = BundleEntry(F32, (size // 4,), 0, 0, size, stored_crc)
    Path(prefix + ".index").write_bytes(bundle.build_index(1, {"t": entry}))
    with open(bundle.data_file_name(prefix, 0, 1), "wb") as f:
        f.write(present)
        f.truncate(size)


def test_a_huge_entry_over_a_hole_fails_its_crc_before_anything_is_allocated(tmp_path: Path) -> None:
    prefix = str(tmp_path / "ck")
    present = np.random.default_rng(0).bytes(1 << 20)
    sparse_checkpoint(prefix, 3 << 30, present, crc.masked_crc32c(b"not these bytes"))
    data_file = bundle.data_file_name(prefix, 0, 1)
    if os.stat(data_file).st_blocks * 512 > 64 << 20:
        pytest.skip("this file system does not keep holes: nothing sparse to test")
    (outcome,) = hostile_child.run([("load", prefix)])
    assert outcome.outcome == "CheckpointError" and outcome.type == "DataLossError", outcome.message
    assert outcome.reason == DataLossReason.CRC_MISMATCH and outcome.key == "t" and outcome.path == data_file
    assert outcome.grew < SMALL, f"grew peak memory by {outcome.grew >> 20} MiB"


def test_zeros_over_a_hole_with_their_true_crc_read_back(tmp_path: Path) -> None:
    prefix = str(tmp_path / "ck")
    size = SPARSE_CHECK_BYTES + (1 << 20)
    head = np.arange(1 << 16, dtype=np.float32).tobytes()
    value = crc.combine(crc.crc32c(head), crc.crc32c(bytes(size - len(head))), size - len(head))
    sparse_checkpoint(prefix, size, head, crc.mask(value))
    with gpuckpt.load_checkpoint(prefix) as reader:
        out = reader.get_tensor("t")
    assert out[: 1 << 16].tolist() == list(range(1 << 16)) and not out[1 << 16 :].any()
