"""The restore's coalesced reads (``storage.reader.coalesce_runs`` / ``read_run``): runs of small ranges
read by one ``preadv`` straight into the destinations, holes read into scratch, one CRC per range, on
odd layouts (gaps, several shards, ranges out of order or overlapping, empty and sliced tensors, strings,
ml_dtypes), and failures (a CRC, a file cut short, a short read) that name the key."""

from __future__ import annotations

import os

import ml_dtypes
import numpy as np
import pytest

import gpuckpt
from gpuckpt.errors import DataLossError, InvalidArgumentError
from gpuckpt.format import crc
from gpuckpt.storage import reader as reader_module
from gpuckpt.storage.base import ReadTarget
from gpuckpt.storage.reader import GAP_BYTES, FileSystemReader, coalesce_runs, read_run
from tests.conftest import flip_stored_bits


def _t(key: str, shard: int, offset: int, length: int, dest=None) -> ReadTarget:
    return ReadTarget(key, shard, offset, length, 0, np.zeros(length, np.uint8) if dest is None else dest)


def _layout(runs) -> list[list[tuple[int, int]]]:
    """Each run as ``(target index, bytes)`` items (-1: a gap read into scratch)."""
    return [[(i, buf.nbytes) for buf, i, _ in run.items] for run in runs]


def test_contiguous_ranges_make_one_run_and_empty_ones_are_set_apart() -> None:
    targets = [_t("a", 0, 0, 10), _t("e", 0, 10, 0), _t("b", 0, 10, 5), _t("c", 0, 15, 7)]
    runs, empty, large = coalesce_runs(targets, 1 << 20, 1 << 20)
    assert empty == [1] and large == []
    assert [(r.shard, r.offset) for r in runs] == [(0, 0)]
    assert _layout(runs) == [[(0, 10), (2, 5), (3, 7)]]
    assert all(buf is targets[i].dest for buf, i, _ in runs[0].items)  # the destinations themselves: no copy


def test_small_holes_are_read_into_scratch_and_large_ones_cut_the_run() -> None:
    targets = [_t("a", 0, 0, 10), _t("b", 0, 110, 10), _t("c", 0, 120 + GAP_BYTES + 1, 4)]
    runs, _, _ = coalesce_runs(targets, 1 << 30, 1 << 20)
    assert _layout(runs) == [[(0, 10), (-1, 100), (1, 10)], [(2, 4)]]
    assert runs[1].offset == 120 + GAP_BYTES + 1
    assert [r.nbytes for r in runs] == [120, 4]  # every byte a run reads, its scratch holes included


def test_shards_order_overlaps_and_the_task_size_cut_runs() -> None:
    targets = [_t("b1", 1, 0, 8), _t("a2", 0, 8, 8), _t("a1", 0, 0, 8), _t("again", 0, 8, 8), _t("a3", 0, 16, 8)]
    runs, _, large = coalesce_runs(targets + [_t("big", 0, 24, 17)], 16, 16)
    assert large == [5]
    # file order: shard 0 first; "again" reads a2's bytes once more, so it starts a run; 16 bytes a run at most
    assert [(r.shard, r.offset) for r in runs] == [(0, 0), (0, 8), (1, 0)]
    assert _layout(runs) == [[(2, 8), (1, 8)], [(3, 8), (4, 8)], [(0, 8)]]
    assert [r.nbytes for r in runs] == [16, 16, 8]


def test_a_destination_of_the_wrong_size_is_refused_naming_its_key() -> None:
    with pytest.raises(InvalidArgumentError, match="'w'"):
        coalesce_runs([_t("a", 0, 0, 4), ReadTarget("w", 0, 4, 4, 0, np.zeros(3, np.uint8))], 1 << 20, 1 << 20)


def _file(tmp_path, data: bytes) -> int:
    path = tmp_path / "d"
    path.write_bytes(data)
    return os.open(path, os.O_RDONLY)


def test_read_run_fills_multidimensional_and_ml_dtypes_arrays_and_checks_each(tmp_path) -> None:
    data = np.random.default_rng(0).bytes(4096)
    fd = _file(tmp_path, data)
    try:
        a = np.zeros((4, 8), np.float32)  # 128 bytes
        b = np.zeros((3, 5), ml_dtypes.bfloat16)  # 30 bytes
        c = np.zeros((), np.int64)  # 8 bytes
        stored = [crc.masked_crc32c(data[0:128]), crc.masked_crc32c(data[228:258]),
                  crc.masked_crc32c(data[258:266]) ^ 1]  # c's stored CRC is wrong
        targets = [ReadTarget("a", 0, 0, 128, stored[0], a), ReadTarget("b", 0, 228, 30, stored[1], b),
                   ReadTarget("c", 0, 258, 8, stored[2], c)]
        runs, _, _ = coalesce_runs(targets, 1 << 20, 1 << 20)
        assert _layout(runs) == [[(0, 128), (-1, 100), (1, 30), (2, 8)]]
        bad, whole = read_run(fd, runs[0], batch_bytes=64)  # several preadv calls, CRCs between them
    finally:
        os.close(fd)
    assert bad == [2] and whole == 4
    assert a.tobytes() == data[0:128] and b.tobytes() == data[228:258]


def test_read_run_stops_where_the_file_ends_and_says_how_far_it_read(tmp_path) -> None:
    data = bytes(range(200))
    fd = _file(tmp_path, data[:150])
    try:
        targets = [ReadTarget(k, 0, o, 50, crc.masked_crc32c(data[o:o + 50]), np.zeros(50, np.uint8))
                   for k, o in (("a", 0), ("b", 50), ("c", 100), ("d", 150))]
        runs, _, _ = coalesce_runs(targets, 1 << 20, 1 << 20)
        bad, whole = read_run(fd, runs[0], batch_bytes=1 << 20)
    finally:
        os.close(fd)
    assert bad == [] and whole == 3  # a, b, c verified; d cut off


def test_short_reads_are_continued(tmp_path, monkeypatch) -> None:
    data = np.random.default_rng(1).bytes(1000)
    fd = _file(tmp_path, data)
    real = os.preadv

    def dribble(fd, buffers, offset):  # at most 7 bytes a call, as a slow or interrupted read may return
        first = memoryview(buffers[0]).cast("B")
        return real(fd, [first[:7]], offset)

    monkeypatch.setattr(reader_module.os, "preadv", dribble)
    try:
        dests = [np.zeros(n, np.uint8) for n in (10, 300, 1, 689)]
        targets, offset = [], 0
        for i, dest in enumerate(dests):
            targets.append(ReadTarget(f"k{i}", 0, offset, dest.nbytes,
                                      crc.masked_crc32c(data[offset:offset + dest.nbytes]), dest))
            offset += dest.nbytes
        runs, _, _ = coalesce_runs(targets, 1 << 20, 1 << 20)
        assert read_run(fd, runs[0]) == ([], 4)
    finally:
        os.close(fd)
    assert b"".join(d.tobytes() for d in dests) == data


# -- through the reader and the public API ------------------------------------------------------------------


def _saved(tmp_path, sizes):
    rng = np.random.default_rng(7)
    values = {f"v{i:03d}": rng.integers(0, 256, n, dtype=np.uint8) for i, n in enumerate(sizes)}
    prefix = gpuckpt.Checkpoint(**{k: gpuckpt.Variable(v) for k, v in values.items()}).write(str(tmp_path / "c"))
    return prefix, values


def test_every_other_range_read_through_holes_verifies(tmp_path) -> None:
    prefix, values = _saved(tmp_path, [100, 3000, 1, 0, 70000, 5, 600000, 9, 2])
    with FileSystemReader(prefix) as reader:
        wanted = list(values)[::2]
        dests = {k: np.zeros_like(values[k]) for k in wanted}
        targets = []
        for k in wanted:
            e = reader.index.entries[f"{k}/.ATTRIBUTES/VARIABLE_VALUE"]
            targets.append(ReadTarget(k, e.shard_id, e.offset, e.size, e.crc32c, dests[k]))
        assert reader.read_verified(targets).ok
    for k in wanted:
        assert np.array_equal(dests[k], values[k])


def test_a_corrupt_range_inside_a_run_names_its_key_and_the_others_are_restored(tmp_path) -> None:
    prefix, values = _saved(tmp_path, [64] * 40)
    path = flip_stored_bits(prefix, "v017/.ATTRIBUTES/VARIABLE_VALUE", 3, 0x10)
    live = {k: gpuckpt.Variable(np.zeros(64, np.uint8)) for k in values}
    with pytest.raises(gpuckpt.PartialRestoreError) as info:
        gpuckpt.Checkpoint(**live).read(prefix)
    error = info.value
    assert error.failed == ("v017/.ATTRIBUTES/VARIABLE_VALUE",) and "v017" in str(error) and path in str(error)
    assert not live["v017"].numpy().any()  # zero-filled, never left holding unverified bytes
    assert all(np.array_equal(live[k].numpy(), v) for k, v in values.items() if k != "v017")


def test_a_data_file_cut_after_open_fails_from_the_first_key_it_cuts(tmp_path) -> None:
    prefix, values = _saved(tmp_path, [100] * 10)
    with FileSystemReader(prefix) as reader:
        entries = [reader.index.entries[f"{k}/.ATTRIBUTES/VARIABLE_VALUE"] for k in values]
        dests = [np.zeros(100, np.uint8) for _ in values]
        targets = [ReadTarget(k, e.shard_id, e.offset, e.size, e.crc32c, d) for k, e, d in zip(values, entries, dests)]
        os.truncate(reader.shard_path(0), entries[6].offset + 10)
        report = reader.read_verified(targets)
    failed = {targets[i].key: error for i, error in report.failed}
    assert set(failed) == set(list(values)[6:])
    error = failed["v006"]
    assert isinstance(error, DataLossError) and error.key == "v006" and "'v006'" in str(error)
    assert all(np.array_equal(d, v) for d, v in zip(dests[:6], values.values()))


def test_mixed_state_restores_through_the_public_api(tmp_path) -> None:
    """Strings, empty and scalar values, bfloat16, large and small values in one restore."""
    rng = np.random.default_rng(3)
    values = {
        "s": np.array([b"ab", b"", b"xyz"], dtype=object), "empty": np.zeros((0, 3), np.float32),
        "scalar": np.float64(2.5), "bf": rng.random((7, 3)).astype(ml_dtypes.bfloat16),
        "big": rng.random(300_000).astype(np.float32), **{f"w{i}": rng.random(i + 1) for i in range(50)},
    }
    saved = gpuckpt.Checkpoint(**{k: gpuckpt.Variable(v) for k, v in values.items()})
    prefix = saved.write(str(tmp_path / "c"))
    live = {k: gpuckpt.Variable(np.zeros_like(v) if not isinstance(v, np.ndarray) or v.dtype != object
                                else np.array([b""] * 3, dtype=object)) for k, v in values.items()}
    gpuckpt.Checkpoint(**live).read(prefix).assert_consumed()
    for k, v in values.items():
        got = live[k].numpy()
        assert (list(got) == list(v)) if k == "s" else np.array_equal(np.asarray(got), np.asarray(v)), k


def test_sliced_tensors_between_whole_ones_read_through_scratch_and_in_place(tmp_path) -> None:
    """A tensor stored in two slices between two whole ones: the whole ones read in place, the slices
    into scratch and copied, the destination assembled; a slice's CRC failing names the tensor's key."""
    from gpuckpt.engine.cpu import read_host
    from gpuckpt.format import bundle
    from gpuckpt.format.bundle import BundleEntry, Extent
    from gpuckpt.format.dtypes import BY_NAME
    from gpuckpt.format.slices import slice_key
    from gpuckpt.restore_plan import Request, build_restore_plan

    f32 = BY_NAME["float32"]
    a, w, b = np.arange(2, dtype=np.float32), np.arange(12, dtype=np.float32).reshape(4, 3), np.ones(5, np.float32)
    blob = a.tobytes() + w[:1].tobytes() + w[1:].tobytes() + b.tobytes()
    prefix = str(tmp_path / "c")
    with open(prefix + ".data-00000-of-00001", "wb") as f:
        f.write(blob)
    extents = ((Extent(0, 1), Extent(0, None)), (Extent(1, 3), Extent(0, None)))
    entries = {"a": BundleEntry(f32, (2,), 0, 0, 8, crc.masked_crc32c(blob[:8])),
               "b": BundleEntry(f32, (5,), 0, 56, 20, crc.masked_crc32c(blob[56:])),
               "w": BundleEntry(f32, (4, 3), slices=extents),
               slice_key("w", extents[0]): BundleEntry(f32, (1, 3), 0, 8, 12, crc.masked_crc32c(blob[8:20])),
               slice_key("w", extents[1]): BundleEntry(f32, (3, 3), 0, 20, 36, crc.masked_crc32c(blob[20:56]) ^ 1)}
    with open(prefix + ".index", "wb") as f:
        f.write(bundle.build_index(1, entries))
    with FileSystemReader(prefix) as reader:
        requests = [Request(k, k, f32, v.shape) for k, v in (("a", a), ("w", w), ("b", b))]
        plan = build_restore_plan(reader.index, requests, reader.shard_size, prefix=prefix)
        dests = [np.zeros_like(a), np.zeros_like(w), np.zeros_like(b)]
        failed = read_host(reader, plan.reads, dests)
    assert list(failed) == [1] and failed[1].key == "w" and "'w'" in str(failed[1])
    assert np.array_equal(dests[0], a) and np.array_equal(dests[2], b)
    assert not dests[1][1:].any()  # the failed slice's bytes were never copied out of scratch


@pytest.mark.parametrize("kind", ["strided", "read-only"])
def test_read_tensors_refuses_destinations_it_cannot_read_into_naming_the_key(tmp_path, kind) -> None:
    prefix, _ = _saved(tmp_path, [16])
    if kind == "strided":
        out = np.zeros(32, np.uint8)[::2]
    else:
        out = np.zeros(16, np.uint8)
        out.flags.writeable = False
    with gpuckpt.CheckpointReader(prefix) as reader, pytest.raises(InvalidArgumentError, match="'v000/"):
        reader.read_tensors([("v000/.ATTRIBUTES/VARIABLE_VALUE", out)])
    assert not out.any()
