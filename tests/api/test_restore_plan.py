"""build_restore_plan as data: reads, in-place or scratch, and every check done before any byte is read."""

from __future__ import annotations

import pytest

from gpuckpt.errors import DataLossError, InvalidArgumentError, NotFoundError
from gpuckpt.format.bundle import BundleEntry, BundleIndex, Extent
from gpuckpt.format.dtypes import BY_NAME, STRING
from gpuckpt.format.slices import slice_key
from gpuckpt.restore_plan import ReadItem, Request, StringItem, build_restore_plan

F32, I64 = BY_NAME["float32"], BY_NAME["int64"]
SIZES = {0: 1 << 20, 1: 1 << 20}


def index(entries: dict, slices: dict | None = None, shards: int = 2) -> BundleIndex:
    return BundleIndex(shards, entries, slices or {})


def plan(idx: BundleIndex, *requests: Request):
    return build_restore_plan(idx, list(requests), SIZES.__getitem__, prefix="ck")


def test_whole_tensors_are_read_in_place_in_file_order() -> None:
    idx = index({"b": BundleEntry(F32, (4,), 1, 0, 16, 11), "a": BundleEntry(I64, (2, 2), 0, 64, 32, 22)})
    p = plan(idx, Request("b", "(root).b", F32, (4,)), Request("a", "(root).a", I64, (2, 2)))
    assert p.reads == (ReadItem(1, "a", 0, 64, 32, 22, (2, 2)), ReadItem(0, "b", 1, 0, 16, 11, (4,)))
    assert all(r.in_place for r in p.reads) and p.total_bytes == 48 and not p.strings


def test_strings_are_listed_apart() -> None:
    idx = index({"s": BundleEntry(STRING, (), 0, 8, 9, 33)})
    p = plan(idx, Request("s", "(root).s", STRING, ()))
    assert p.strings == (StringItem(0, "s", 0, 8, 9, 33, ()),) and not p.reads


def test_every_mismatch_is_listed_before_anything_is_read() -> None:
    idx = index({"a": BundleEntry(F32, (2,), 0, 0, 8, 0), "b": BundleEntry(F32, (3,), 0, 8, 12, 0)})
    with pytest.raises(InvalidArgumentError, match=r"key 'a' \(A\): expected dtype int64 does not equal original "
                                                   r"dtype float32; key 'b' \(B\): received incompatible tensor "
                                                   r"with shape \(3,\) when attempting to restore variable with "
                                                   r"shape \(4,\)") as info:
        plan(idx, Request("a", "A", I64, (2,)), Request("b", "B", F32, (4,)))
    assert info.value.key == "a"


def test_a_missing_key_is_data_loss() -> None:
    with pytest.raises(DataLossError, match="'nope'.*no such tensor"):
        plan(index({}), Request("nope", "(root).x", F32, ()))


def test_bytes_past_the_end_of_their_file_are_data_loss_naming_key_and_file() -> None:
    idx = index({"a": BundleEntry(F32, (4,), 0, (1 << 20) - 8, 16, 0)})
    with pytest.raises(DataLossError, match=r"key 'a' points past the end of data file 'ck.data-0'"):
        build_restore_plan(idx, [Request("a", "A", F32, (4,))], SIZES.__getitem__, prefix="ck",
                           shard_path=lambda s: f"ck.data-{s}")


def test_a_missing_shard_is_reported_by_the_size_lookup() -> None:
    def size(shard: int) -> int:
        raise NotFoundError(f"data file {shard} is missing")

    with pytest.raises(NotFoundError, match="missing"):
        build_restore_plan(index({"a": BundleEntry(F32, (1,), 0, 0, 4, 0)}), [Request("a", "A", F32, (1,))], size)


def _sliced(rows: list[tuple[int, int]], total: int = 4) -> BundleIndex:
    extents = tuple((Extent(start, n), Extent(0, None)) for start, n in rows)
    pieces = {slice_key("w", e): BundleEntry(F32, (n, 3), 0, 100 * i, n * 12, i) for i, ((_, n), e)
              in enumerate(zip(rows, extents))}
    return index({"w": BundleEntry(F32, (total, 3), slices=extents)}, pieces)


def test_slices_are_read_whole_and_copied_into_their_region() -> None:
    p = plan(_sliced([(0, 1), (1, 3)]), Request("w", "W", F32, (4, 3)))
    assert [(r.offset, r.length, r.src, r.dst) for r in p.reads] == [
        (0, 12, (slice(0, 1), slice(0, 3)), (slice(0, 1), slice(0, 3))),
        (100, 36, (slice(0, 3), slice(0, 3)), (slice(1, 4), slice(0, 3)))]


def test_a_block_request_reads_only_the_slices_it_overlaps() -> None:
    p = plan(_sliced([(0, 1), (1, 3)]), Request("w", "W", F32, (4, 3), block=((2, 0), (2, 3))))
    assert [(r.offset, r.src, r.dst) for r in p.reads] == [(100, (slice(1, 3), slice(0, 3)),
                                                            (slice(0, 2), slice(0, 3)))]
    exact = plan(_sliced([(0, 1), (1, 3)]), Request("w", "W", F32, (4, 3), block=((1, 0), (3, 3))))
    assert [r.in_place for r in exact.reads] == [True]


@pytest.mark.parametrize("rows, why", [([(0, 1), (1, 2)], "cover"), ([(0, 2), (1, 3)], "cover"),
                                       ([(0, 2), (0, 2)], "twice")])
def test_slices_must_tile_their_tensor_exactly(rows, why) -> None:
    with pytest.raises(DataLossError, match=why):
        plan(_sliced(rows), Request("w", "W", F32, (4, 3)))


def test_a_missing_slice_entry_is_not_found() -> None:
    idx = _sliced([(0, 1), (1, 3)])
    del idx.slice_entries[next(iter(idx.slice_entries))]
    with pytest.raises(NotFoundError, match="slice .* of key 'w' is missing"):
        plan(idx, Request("w", "W", F32, (4, 3)))


def test_sliced_strings_are_refused() -> None:
    idx = index({"s": BundleEntry(STRING, (2,), slices=((Extent(0, 2),),))})
    with pytest.raises(InvalidArgumentError, match="string"):
        plan(idx, Request("s", "S", STRING, (2,)))
