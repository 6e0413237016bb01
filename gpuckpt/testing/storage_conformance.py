"""A conformance suite for storage back ends: what ``StorageWriter``/``StorageReader`` must do.

Subclass :class:`StorageConformance` in a pytest module and implement ``writer(prefix,
num_shards)`` and ``reader(prefix)``; every ``test_*`` method then runs against that store.
``tests/storage/test_conformance.py`` runs it against ``FileSystemWriter``/``FileSystemReader``.
The tests use only the protocols of ``gpuckpt.storage.base`` and pytest's ``tmp_path``.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
import pytest

from ..errors import CheckpointError, DataLossError, NotFoundError
from ..format import crc
from ..format.bundle import BundleEntry, build_index
from ..format.dtypes import BY_NAME
from ..storage.base import ReadReport, ReadTarget, StorageReader, StorageWriter

_UINT8 = BY_NAME["uint8"]


class StorageConformance:
    """The behaviour every store must show; subclasses provide ``writer`` and ``reader``."""

    def writer(self, prefix: str, num_shards: int) -> StorageWriter:
        raise NotImplementedError

    def reader(self, prefix: str) -> StorageReader:
        raise NotImplementedError

    # -- helpers ---------------------------------------------------------------------------
    def _write(self, prefix: str, payloads: dict[str, tuple[int, bytes]], num_shards: int = 1) -> dict:
        """Write ``{key: (shard, bytes)}`` back to back per shard and commit; return the entries."""
        writer = self.writer(prefix, num_shards)
        ends = [0] * num_shards
        entries: dict[str | bytes, BundleEntry] = {}
        for key, (shard, data) in payloads.items():
            writer.write(shard, ends[shard], np.frombuffer(data, np.uint8))
            entries[key] = BundleEntry(_UINT8, (len(data),), shard, ends[shard], len(data), crc.masked_crc32c(data))
            ends[shard] += len(data)
        writer.commit(build_index(num_shards, entries))
        return entries

    @staticmethod
    def _targets(entries: dict, keys) -> tuple[list[ReadTarget], list[bytearray]]:
        bufs = [bytearray(entries[k].size) for k in keys]
        targets = [ReadTarget(k, entries[k].shard_id, entries[k].offset, entries[k].size, entries[k].crc32c,
                              memoryview(b)) for k, b in zip(keys, bufs)]
        return targets, bufs

    # -- 1-3: write, commit, read ------------------------------------------------------------
    def test_committed_bytes_read_back_verified(self, tmp_path) -> None:
        rng = np.random.default_rng(0)
        payloads = {f"k{i}": (i % 2, rng.bytes(int(n))) for i, n in enumerate(rng.integers(0, 5000, 300))}
        payloads["big"] = (0, rng.bytes(3 << 20))
        entries = self._write(str(tmp_path / "ck"), payloads, num_shards=2)
        with self.reader(str(tmp_path / "ck")) as reader:
            assert set(reader.index.entries) == set(payloads)
            targets, bufs = self._targets(entries, list(payloads))
            assert reader.read_verified(targets).ok
            assert all(bytes(b) == payloads[k][1] for k, b in zip(payloads, bufs))

    def test_split_reads_join_their_checksums(self, tmp_path) -> None:
        data = np.random.default_rng(1).bytes(1 << 20)
        entries = self._write(str(tmp_path / "ck"), {"x": (0, data)})
        with self.reader(str(tmp_path / "ck")) as reader:
            targets, bufs = self._targets(entries, ["x"])
            report = _read_in_small_tasks(reader, targets)
            assert report.ok and bytes(bufs[0]) == data

    def test_a_bad_range_is_reported_and_the_others_are_verified(self, tmp_path) -> None:
        prefix = str(tmp_path / "ck")
        entries = self._write(prefix, {"a": (0, b"a" * 100), "b": (0, b"b" * 100), "c": (0, b"c" * 100)})
        _flip_byte(prefix, 0, 150)  # inside "b"
        with self.reader(prefix) as reader:
            targets, bufs = self._targets(entries, ["a", "b", "c"])
            report = reader.read_verified(targets)
            assert [i for i, _ in report.failed] == [1]
            error = report.failed[0][1]
            assert isinstance(error, DataLossError) and error.key == "b" and "data-00000-of-00001" in str(error)
            assert bytes(bufs[0]) == b"a" * 100 and bytes(bufs[2]) == b"c" * 100

    def test_raw_reads_return_the_bytes_unchecked(self, tmp_path) -> None:
        prefix = str(tmp_path / "ck")
        entries = self._write(prefix, {"a": (0, bytes(range(200)))})
        with self.reader(prefix) as reader:
            out = bytearray(50)
            reader.read_raw(0, entries["a"].offset + 10, memoryview(out), "a")
            assert bytes(out) == bytes(range(10, 60))
            assert reader.shard_size(0) == 200

    def test_reading_past_the_end_is_data_loss(self, tmp_path) -> None:
        prefix = str(tmp_path / "ck")
        self._write(prefix, {"a": (0, b"x" * 10)})
        with self.reader(prefix) as reader, pytest.raises(DataLossError):
            reader.read_raw(0, 5, memoryview(bytearray(10)), "a")

    # -- abort and visibility ------------------------------------------------------------------
    def test_nothing_is_visible_before_commit_or_after_abort(self, tmp_path) -> None:
        prefix = str(tmp_path / "ck")
        writer = self.writer(prefix, 1)
        writer.write(0, 0, np.zeros(10, np.uint8))
        with pytest.raises(NotFoundError):
            self.reader(prefix)
        writer.abort()
        with pytest.raises(NotFoundError):
            self.reader(prefix)

    def test_an_aborted_overwrite_keeps_the_old_checkpoint(self, tmp_path) -> None:
        prefix = str(tmp_path / "ck")
        entries = self._write(prefix, {"a": (0, b"old" * 10)})
        writer = self.writer(prefix, 1)
        writer.write(0, 0, np.frombuffer(b"new" * 10, np.uint8))
        writer.abort()
        with self.reader(prefix) as reader:
            targets, bufs = self._targets(entries, ["a"])
            assert reader.read_verified(targets).ok and bytes(bufs[0]) == b"old" * 10

    # -- 4: close ---------------------------------------------------------------------------
    def test_close_releases_every_file_and_later_reads_raise(self, tmp_path) -> None:
        prefix = str(tmp_path / "ck")
        entries = self._write(prefix, {"a": (0, b"a" * 10), "b": (1, b"b" * 10)}, num_shards=2)
        before = _open_fds()
        reader = self.reader(prefix)
        targets, _ = self._targets(entries, ["a", "b"])
        assert reader.read_verified(targets).ok
        reader.close()
        reader.close()
        assert _open_fds() == before
        with pytest.raises(CheckpointError):
            reader.read_verified(targets)


def _read_in_small_tasks(reader: StorageReader, targets: list[ReadTarget]) -> ReadReport:
    """``read_verified`` in 4 KiB tasks where the store takes a ``task_bytes`` (an extension beyond the
    protocol, so that one tensor is split over several reads), else as the protocol reads."""
    import inspect

    read: Callable[..., ReadReport] = reader.read_verified
    if "task_bytes" in inspect.signature(read).parameters:
        return read(targets, task_bytes=4096)
    return read(targets)


def _flip_byte(prefix: str, shard: int, offset: int) -> None:
    names = sorted(n for n in os.listdir(os.path.dirname(prefix)) if ".data-" in n and ".tmp-" not in n)
    path = os.path.join(os.path.dirname(prefix), names[shard])
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))


def _open_fds() -> set[str]:
    """Targets of this process's open descriptors (Linux), so a test can see a file left open."""
    fd_dir = "/proc/self/fd"
    out = set()
    for name in os.listdir(fd_dir):
        try:
            out.add(os.readlink(os.path.join(fd_dir, name)))
        except OSError:
            pass
    return out
