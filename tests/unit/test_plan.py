"""build_save_plan as data: tensors laid out back to back, in the given order, shards cut by size."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpuckpt.format import dtypes
from gpuckpt.plan import SavePlan, TensorSpec, WriteItem, build_save_plan

F32 = dtypes.BY_NAME["float32"]


def spec(key: str, nbytes: int) -> TensorSpec:
    return TensorSpec(key, F32, (nbytes // 4,), nbytes)


def places(plan: SavePlan) -> list[tuple[str, int, int]]:
    return [(item.key, item.shard, item.offset) for item in plan.items]


def test_no_tensors_is_one_empty_shard() -> None:
    assert build_save_plan([]) == SavePlan(1, (), (0,))


def test_one_shard_back_to_back_in_the_given_order() -> None:
    plan = build_save_plan([spec("b", 8), spec("a", 4), spec("c", 0), spec("d", 12)])
    assert places(plan) == [("b", 0, 0), ("a", 0, 8), ("c", 0, 12), ("d", 0, 12)]
    assert plan.num_shards == 1 and plan.shard_sizes == (24,)
    assert plan.items[0] == WriteItem("b", F32, (2,), 8, 0, 0)


def test_a_new_shard_opens_when_the_next_tensor_would_pass_the_limit() -> None:
    plan = build_save_plan([spec("a", 8), spec("b", 8), spec("c", 4), spec("d", 12)], max_shard_size=16)
    assert places(plan) == [("a", 0, 0), ("b", 0, 8), ("c", 1, 0), ("d", 1, 4)]
    assert plan.shard_sizes == (16, 16) and plan.num_shards == 2


def test_a_tensor_larger_than_the_limit_gets_a_shard_of_its_own() -> None:
    plan = build_save_plan([spec("small", 4), spec("big", 40), spec("after", 4)], max_shard_size=16)
    assert places(plan) == [("small", 0, 0), ("big", 1, 0), ("after", 2, 0)]
    assert plan.shard_sizes == (4, 40, 4)


def test_a_large_first_tensor_does_not_leave_an_empty_shard() -> None:
    plan = build_save_plan([spec("big", 40), spec("b", 4)], max_shard_size=16)
    assert places(plan) == [("big", 0, 0), ("b", 1, 0)] and plan.shard_sizes == (40, 4)


@pytest.mark.parametrize("limit", [0, -1])
def test_a_limit_that_is_not_positive_is_refused(limit: int) -> None:
    with pytest.raises(ValueError, match="max_shard_size must be positive"):
        build_save_plan([spec("a", 4)], max_shard_size=limit)


def test_plans_are_frozen() -> None:
    plan = build_save_plan([spec("a", 4)])
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.num_shards = 2  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.items[0].offset = 1  # type: ignore[misc]


@given(st.lists(st.integers(0, 100), max_size=30), st.one_of(st.none(), st.integers(1, 120)))
def test_every_byte_has_one_place_and_shards_respect_the_limit(sizes: list[int], limit: int | None) -> None:
    plan = build_save_plan([spec(f"t{i}", n) for i, n in enumerate(sizes)], max_shard_size=limit)
    assert [item.key for item in plan.items] == [f"t{i}" for i in range(len(sizes))]
    assert len(plan.shard_sizes) == plan.num_shards and sum(plan.shard_sizes) == sum(sizes)
    ends = [0] * plan.num_shards
    for item in plan.items:  # in each shard, items follow each other with no gap and no overlap
        assert item.offset == ends[item.shard]
        ends[item.shard] += item.nbytes
    assert tuple(ends) == plan.shard_sizes
    assert [item.shard for item in plan.items] == sorted(item.shard for item in plan.items)
    if limit is not None:
        for shard, size in enumerate(plan.shard_sizes):
            alone = [item for item in plan.items if item.shard == shard and item.nbytes]
            assert size <= limit or len(alone) == 1
