"""Retention policies as a table of cases (TF's max_to_keep and keep_checkpoint_every_n_hours)."""

from __future__ import annotations

import pytest

from gpuckpt.retention import CheckpointInfo, any_of, decide_retention, every_n_hours, latest_n

H = 3600.0


def infos(*hours: float) -> list[CheckpointInfo]:
    return [CheckpointInfo(f"ck-{i}", h * H) for i, h in enumerate(hours, 1)]


@pytest.mark.parametrize(("n", "count", "expected"), [
    (2, 3, [False, True, True]), (5, 3, [True] * 3), (None, 2, [True, True]), (1, 0, [])])
def test_latest_n(n, count, expected) -> None:
    assert latest_n(n)(infos(*range(count))) == expected


def test_every_n_hours_chains_from_the_last_kept() -> None:
    flags = every_n_hours(2, last_preserved=0.0)(infos(1, 2, 3, 3.5, 4, 6.5))
    assert flags == [False, True, False, False, True, True]


def test_every_n_hours_none_keeps_nothing() -> None:
    assert every_n_hours(None, 0.0)(infos(10, 20)) == [False, False]


def test_any_of() -> None:
    policy = any_of(latest_n(1), every_n_hours(2, 0.0))
    assert policy(infos(1, 2, 2.5)) == [False, True, True]


def test_decide_retention_splits_managed_preserved_deleted() -> None:
    result = decide_retention(infos(1, 2, 3, 4), max_to_keep=1, keep_checkpoint_every_n_hours=2,
                              last_preserved_timestamp=0.0)
    assert [i.path for i in result.managed] == ["ck-4"]
    assert [i.path for i in result.preserved] == ["ck-2"]
    assert [i.path for i in result.deleted] == ["ck-1", "ck-3"]
    assert result.last_preserved_timestamp == 2 * H


def test_decide_retention_without_hours_deletes_all_old() -> None:
    result = decide_retention(infos(1, 2, 3), max_to_keep=2, keep_checkpoint_every_n_hours=None,
                              last_preserved_timestamp=5.0)
    assert [i.path for i in result.deleted] == ["ck-1"] and result.last_preserved_timestamp == 5.0
