"""restorer.match as plain data: bindings, deferrals and slot waits, with no files involved."""

from __future__ import annotations

import numpy as np

import gpuckpt
from gpuckpt.graph import walk
from gpuckpt.restorer import Deferral, SlotDeferral, match
from gpuckpt.trackable import AutoTrackable

from .models import Adam


def saved_graph():
    root = AutoTrackable()
    root.a = gpuckpt.Module()
    root.a.x = gpuckpt.Variable(1.0)
    root.a.y = gpuckpt.Variable(2.0)
    root.empty = []
    root.opt = Adam()
    root.opt.apply_gradients([(np.float32(1.0), root.a.x)])
    return walk(root).graph  # nodes: 0 root, 1 a, 2 empty, 3 opt, 4 x, 5 y, 6 b1p, 7 b2p, 8 m(x), 9 v(x)


def test_missing_children_with_values_are_deferred_and_empty_ones_ignored() -> None:
    live = AutoTrackable()
    live.a = gpuckpt.Module()
    live.a.x = gpuckpt.Variable(0.0)
    found = match(saved_graph(), [(0, live)], {}, skip_slots=True)
    assert [n for n, _ in found.bindings] == [0, 1, 4]
    assert found.deferrals == (Deferral(live, "opt", 3), Deferral(live.a, "y", 5))


def test_slots_not_created_yet_are_deferred_on_the_optimizer() -> None:
    live = AutoTrackable()
    live.a = gpuckpt.Module()
    live.a.x, live.a.y = gpuckpt.Variable(0.0), gpuckpt.Variable(0.0)
    live.empty = []
    live.opt = Adam()
    found = match(saved_graph(), [(0, live)], {})
    assert [n for n, _ in found.bindings] == [0, 1, 2, 3, 4, 5, 6, 7]
    assert found.slot_deferrals == (SlotDeferral(live.opt, live.a.x, "m", 8),
                                    SlotDeferral(live.opt, live.a.x, "v", 9))
    assert found.deferrals == () and found.slot_waits == ()


def test_slots_wait_for_their_variable() -> None:
    live = AutoTrackable()
    live.opt = Adam()
    found = match(saved_graph(), [(0, live)], {})
    assert [(w.optimizer_node_id, w.ref.slot_name) for w in found.slot_waits] == [(3, "m"), (3, "v")]


def test_existing_bindings_are_not_matched_again() -> None:
    live = AutoTrackable()
    live.a = gpuckpt.Module()
    found = match(saved_graph(), [(0, live)], {1: live.a}, skip_slots=True)
    assert [n for n, _ in found.bindings] == [0]
