"""strict.check lists the live objects only when the match leaves one unbound: on every graph below it finds
the same missing and unexpected keys, in the same order, the same errors and re-ties, and hands the restore the
same match as the full listing (the way it ran before), which the tests force by declaring nothing bound."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

import gpuckpt
from gpuckpt import graph, restorer, strict
from gpuckpt.options import CheckpointOptions
from gpuckpt.session import open_session
from gpuckpt.trackable.base import SlotVariable, Trackable

torch = pytest.importorskip("torch", reason="the PyTorch adapter needs torch: pip install 'gpuckpt[torch]'")

from ..adapters.test_torch_strict import Tied  # noqa: E402  (needs torch, asked for above)


class Stack(torch.nn.Module):
    def __init__(self, layers: int) -> None:
        super().__init__()
        self.h = torch.nn.ModuleList([torch.nn.Linear(3, 3) for _ in range(layers)])
        self.register_buffer("scale", torch.ones(3))
        self.register_buffer("cache", torch.zeros(2), persistent=False)

    def forward(self, x: "torch.Tensor") -> "torch.Tensor":
        for layer in self.h:
            x = layer(x)
        return x * self.scale


def stepped(model: "torch.nn.Module", state: bool = True) -> "torch.optim.Optimizer":
    optimizer = torch.optim.Adam(model.parameters())
    if state:
        model(torch.ones(1, 3)).sum().backward()
        optimizer.step()
    return optimizer


def untied() -> Tied:
    model = Tied()
    model.out.weight = torch.nn.Parameter(model.emb.weight.detach().clone())  # as to_empty() leaves it
    return model


def aliased_layer() -> Stack:
    model = Stack(2)
    model.h[1] = model.h[0]  # one layer under both names
    return model


def extra_name() -> Stack:
    model = Stack(1)
    model.extra = model.h[0]  # also under a name the checkpoint lacks; bound through h.0
    return model


def module_with_list() -> gpuckpt.Module:
    root = gpuckpt.Module()
    root.v = gpuckpt.Variable(1.0)
    root.layers = [Stack(1), torch.nn.Linear(2, 2)]
    return root


def edited_behind_wrapper() -> gpuckpt.Module:
    root = module_with_list()
    root.layers._self_storage.append(torch.nn.Linear(2, 2))  # an edit the wrapper did not see
    return root


def leaf_now_module() -> gpuckpt.Module:
    root = gpuckpt.Module()
    root.v = gpuckpt.Module()
    root.v.layer = torch.nn.Linear(2, 2)
    return root


def tensor_leaf() -> gpuckpt.Module:
    root = gpuckpt.Module()
    root.v = torch.nn.Linear(2, 2).weight  # a tensor (a leaf) where the target has a module
    return root


def with_non_tensor_state() -> gpuckpt.Checkpoint:
    model = Stack(1)
    optimizer = stepped(model)
    optimizer.state[model.h[0].bias]["note"] = 3  # gpuckpt saves only tensor state
    return gpuckpt.Checkpoint(model=model, optimizer=optimizer)


def slot_as_dependency(source: bool) -> gpuckpt.Checkpoint:
    model = Stack(1)
    optimizer = stepped(model)
    extra = torch.nn.Module()
    extra.register_buffer("t", torch.zeros(3) if source else optimizer.state[model.h[0].bias]["exp_avg"])
    return gpuckpt.Checkpoint(model=model, optimizer=optimizer, extra=extra)


class SlotsOfSlots(Trackable):
    """An optimizer whose slot ``m`` of ``w`` has a slot ``v`` of its own (``twice``: ``m`` also under ``n``)."""

    def __init__(self, w: gpuckpt.Variable, twice: bool = False) -> None:
        self.w, self.m, self.v, self.twice = w, gpuckpt.Variable(2.0), gpuckpt.Variable(3.0), twice

    def _slot_variables(self) -> list[SlotVariable]:
        if self.twice:
            return [SlotVariable("m", self.w, self.m), SlotVariable("n", self.w, self.m)]
        return [SlotVariable("m", self.w, self.m), SlotVariable("v", self.m, self.v)]


def custom_slots(twice: bool) -> gpuckpt.Checkpoint:
    w = gpuckpt.Variable(1.0)
    return gpuckpt.Checkpoint(model=torch.nn.Linear(2, 2), w=w, optimizer=SlotsOfSlots(w, twice))


def attached(layers: int) -> gpuckpt.Checkpoint:
    root = gpuckpt.Module()
    root.v = gpuckpt.Variable(2.0)
    return gpuckpt.Checkpoint(root, model=Stack(layers))


def model(build: Callable[[], object]) -> Callable[[], gpuckpt.Checkpoint]:
    return lambda: gpuckpt.Checkpoint(model=build())


def with_optimizer(state: bool) -> Callable[[], gpuckpt.Checkpoint]:
    def build() -> gpuckpt.Checkpoint:
        net = Stack(2)
        return gpuckpt.Checkpoint(model=net, optimizer=stepped(net, state))
    return build


# name: (source, target, skip_slots, whether the match binds every live object)
CASES: dict[str, tuple[Callable[[], gpuckpt.Checkpoint], Callable[[], gpuckpt.Checkpoint], bool, bool]] = {
    "exact": (model(lambda: Stack(2)), model(lambda: Stack(2)), False, True),
    "extra live layer": (model(lambda: Stack(1)), model(lambda: Stack(3)), False, False),
    "missing live layer": (model(lambda: Stack(3)), model(lambda: Stack(1)), False, True),
    "other architecture": (model(lambda: Stack(1)), model(lambda: torch.nn.Linear(3, 3)), False, False),
    "tie kept": (model(Tied), model(Tied), False, True),
    "tie lost": (model(Tied), model(untied), False, False),
    "one layer under two names": (model(lambda: Stack(2)), model(aliased_layer), False, True),
    "a name the checkpoint lacks": (model(lambda: Stack(1)), model(extra_name), False, True),
    "optimizer state both sides": (with_optimizer(True), with_optimizer(True), False, True),
    "optimizer state to create": (with_optimizer(True), with_optimizer(False), False, True),
    "optimizer state not saved": (with_optimizer(False), with_optimizer(True), False, False),
    "skip slots": (with_optimizer(True), with_optimizer(True), True, False),
    "skip slots without state": (with_optimizer(True), with_optimizer(False), True, True),
    "non-tensor optimizer state": (with_optimizer(True), with_non_tensor_state, False, False),
    "slot also a dependency": (lambda: slot_as_dependency(True), lambda: slot_as_dependency(False), False, False),
    "a slot of a slot": (lambda: custom_slots(False), lambda: custom_slots(False), False, False),
    "a slot under two names": (lambda: custom_slots(False), lambda: custom_slots(True), False, False),
    "attached edges": (lambda: attached(2), lambda: attached(2), False, True),
    "attached edges, extra layer": (lambda: attached(1), lambda: attached(2), False, False),
    "containers and variables": (model(module_with_list), model(module_with_list), False, True),
    "edited behind its wrapper": (model(module_with_list), model(edited_behind_wrapper), False, False),
    "a saved leaf is now a module": (model(tensor_leaf), model(leaf_now_module), False, False),
}

def outcome(case: str, path: str, *, listing: bool, monkeypatch: pytest.MonkeyPatch) -> tuple:
    """What ``strict.check`` does for a fresh target of ``case``: the error it raises (its type, message and
    differences), or the match it hands the restore (node ids with the live paths bound), and the target's ties."""
    _, build, skip_slots, _ = CASES[case]
    checkpoint = build()
    session = open_session(path, skip_slots=skip_slots)
    try:
        with monkeypatch.context() as patch:
            if listing:
                patch.setattr(strict, "_every_live_object_bound", lambda found, listed: False)
            try:
                strict.check(session, checkpoint._root(), checkpoint._attached())
            except Exception as exc:  # noqa: BLE001 - compared below, whatever it is
                return ("raised", type(exc), str(exc), getattr(exc, "missing", None), getattr(exc, "unexpected", None))
        strategy = session.strategy
        assert isinstance(strategy, restorer.ObjectGraphMatching)
        assert strategy._matched is not None
        found = strategy._matched[0]
        live = graph.live_objects(checkpoint._root(), checkpoint._attached())
        path_of = {id(obj): p for obj, p in zip(live.objects, live.paths)}
        return ("matched", [(n, path_of.get(id(obj), type(obj).__name__)) for n, obj in found.bindings],
                [(d.local_name, d.node_id) for d in found.deferrals],
                [(d.slot_name, d.node_id) for d in found.slot_deferrals], found.by_dependency, ties(checkpoint))
    finally:
        session.storage.close()


def ties(checkpoint: gpuckpt.Checkpoint) -> list[tuple[str, int]]:
    """Each torch tensor reachable, by path, with the index of the first path holding the same tensor."""
    live = graph.live_objects(checkpoint._root(), checkpoint._attached())
    tensors = [(".".join(p), obj.tensor) for obj, p in zip(live.objects, live.paths) if hasattr(obj, "tensor")]
    return [(name, next(i for i, (_, other) in enumerate(tensors) if other is t)) for name, t in tensors]


@pytest.mark.parametrize("case", list(CASES))
def test_the_check_without_the_listing_does_what_the_listing_does(case: str, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    source, _, _, _ = CASES[case]
    path = source().write(tmp_path / "c")
    quick = outcome(case, path, listing=False, monkeypatch=monkeypatch)
    listed = outcome(case, path, listing=True, monkeypatch=monkeypatch)
    assert quick == listed


@pytest.mark.parametrize("case", list(CASES))
def test_the_listing_is_skipped_only_where_it_would_find_every_object_bound(case: str, tmp_path: Path) -> None:
    source, build, skip_slots, every_bound = CASES[case]
    path = source().write(tmp_path / "c")
    checkpoint = build()
    root, edges = checkpoint._root(), checkpoint._attached()
    session = open_session(path, skip_slots=skip_slots)
    session.storage.close()
    assert session.saved is not None
    listed: list = []
    try:
        found = restorer.match(session.saved, [(0, root)], {}, attached=edges, skip_slots=skip_slots, listed=listed)
    except gpuckpt.InvalidArgumentError:
        assert not every_bound
        return
    assert strict._every_live_object_bound(found, listed) is every_bound
    if every_bound:
        live = graph.live_objects(root, edges)
        bound = {id(obj) for _, obj in found.bindings}
        assert all(id(obj) in bound for obj in live.objects)
        dependencies = {id(obj) for i, obj in enumerate(live.objects) if i not in live.slots}
        assert {id(obj) for _, obj in found.bindings[:found.by_dependency]} == dependencies


def test_a_read_that_matches_exactly_lists_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    net = Stack(2)
    optimizer = stepped(net)
    path = gpuckpt.Checkpoint(model=net, optimizer=optimizer).write(tmp_path / "c")
    listings: list[int] = []
    real = strict.live_objects
    monkeypatch.setattr(strict, "live_objects", lambda *a, **k: (listings.append(1), real(*a, **k))[1])
    target = Stack(2)
    gpuckpt.Checkpoint(model=target, optimizer=stepped(target)).read(path).assert_consumed()
    assert listings == []
    for mine, theirs in zip(target.state_dict().values(), net.state_dict().values()):
        assert torch.equal(mine, theirs)
    with pytest.raises(gpuckpt.UnmatchedStateError, match=r"Missing key\(s\) \(2, .*h/2/weight"):
        gpuckpt.Checkpoint(model=Stack(3), optimizer=stepped(Stack(3), False)).read(path)
    assert listings == [1]


def test_a_tie_lost_is_restored_through_the_listing(tmp_path: Path) -> None:
    source = Tied()
    path = gpuckpt.Checkpoint(model=source).write(tmp_path / "c")
    target = untied()
    gpuckpt.Checkpoint(model=target).read(path, CheckpointOptions()).assert_consumed()
    assert target.out.weight is target.emb.weight
    assert torch.equal(target.emb.weight, source.emb.weight)
