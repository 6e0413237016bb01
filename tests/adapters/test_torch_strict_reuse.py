"""A strict restore matches the saved graph once: the restore binds what ``strict.check`` matched, and a
handed-over match of other objects is never used; missing values are still named by their keys."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import gpuckpt
from gpuckpt import restorer, strict
from gpuckpt.session import open_session

torch = pytest.importorskip("torch", reason="the PyTorch adapter needs torch: pip install 'gpuckpt[torch]'")


def linear(seed: int) -> "torch.nn.Module":
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 2))


def test_a_strict_restore_matches_once_and_restores_everything(tmp_path: Path, monkeypatch) -> None:
    source = linear(1)
    path = gpuckpt.Checkpoint(model=source).write(tmp_path / "c")
    calls: list[str] = []
    for module in (restorer, strict):
        real = module.match
        monkeypatch.setattr(module, "match", lambda *a, _real=real, _name=module.__name__, **k: (
            calls.append(_name), _real(*a, **k))[1])
    target = linear(2)
    gpuckpt.Checkpoint(model=target).read(path).assert_consumed()
    assert calls == ["gpuckpt.strict"]
    for mine, theirs in zip(target.state_dict().values(), source.state_dict().values()):
        assert torch.equal(mine, theirs)


def test_a_match_handed_over_for_other_objects_is_not_used(tmp_path: Path) -> None:
    path = gpuckpt.Checkpoint(model=linear(1)).write(tmp_path / "c")
    other, target = gpuckpt.Checkpoint(model=linear(3)), gpuckpt.Checkpoint(model=linear(2))
    session = open_session(path)
    strategy = session.strategy
    assert isinstance(strategy, restorer.ObjectGraphMatching)
    stale = restorer.match(strategy.saved, [(0, other)], {})
    strategy.reuse_match(stale, other, ())
    session.start(target, ())
    restored = target.model[0].weight.detach().numpy()
    np.testing.assert_array_equal(restored, linear(1)[0].weight.detach().numpy())
    assert not np.array_equal(other.model[0].weight.detach().numpy(), restored)


def test_missing_parameters_are_named_by_key_without_a_walk_when_none_is(tmp_path: Path, monkeypatch) -> None:
    path = gpuckpt.Checkpoint(model=torch.nn.Linear(3, 2, bias=False)).write(tmp_path / "c")
    walks: list[int] = []
    real_walk = strict.walk
    monkeypatch.setattr(strict, "walk", lambda *a, **k: (walks.append(1), real_walk(*a, **k))[1])
    gpuckpt.Checkpoint(model=torch.nn.Linear(3, 2, bias=False)).read(path).assert_consumed()
    assert walks == []  # nothing missing: no keys needed
    with pytest.raises(gpuckpt.UnmatchedStateError, match=r"Missing key\(s\) \(1, .*model/bias/.ATTRIBUTES/"
                                                          r"VARIABLE_VALUE \(bias\)"):
        gpuckpt.Checkpoint(model=torch.nn.Linear(3, 2)).read(path)
    assert walks == [1]
