"""Tracked lists, dicts and tuples as TensorFlow's data structures behave (data_structures_test.py's cases).

Lists and dicts wrap the user's object; edits through the wrapper are tracked, edits behind
it make checkpointing raise, naming the attribute; copies inherit that; namedtuples and
tuple subclasses are saved under their fields and positions.
"""

from __future__ import annotations

import collections
import copy
import json
import pickle
from pathlib import Path

import numpy as np
import pytest

import gpuckpt
from gpuckpt.trackable import TrackedDict, TrackedList

Point = collections.namedtuple("Point", ["x", "y"])


def keys(path: str) -> list[str]:
    return [name for name, _ in gpuckpt.list_variables(path) if name != "_CHECKPOINTABLE_OBJECT_GRAPH"]


def assert_unsaveable(obj: gpuckpt.Trackable, tmp_path: Path, match: str) -> None:
    with pytest.raises(gpuckpt.InvalidArgumentError, match=match):
        gpuckpt.Checkpoint(obj=obj).write(tmp_path / "unsaveable")


def overridden_methods_missing(base: type, wrapper: type) -> list[str]:
    ignored = {"__new__", "__init__", "__subclasshook__", "__getattribute__", "__init_subclass__",
               "__class_getitem__"}
    missing = []
    for name in dir(base):
        method = getattr(base, name)
        if name in ignored or not callable(method) or getattr(object, name, None) == method:
            continue
        if getattr(wrapper, name) == method:
            missing.append(name)
    return missing


class TestListWrapsTheUsersList:
    def test_overrides_every_list_method(self) -> None:
        assert overridden_methods_missing(list, TrackedList) == []

    def test_list_changes_are_seen_by_the_wrapper_and_back(self) -> None:
        held: list = []
        m = gpuckpt.Module()
        m.l = held
        v = gpuckpt.Variable(5.0)
        held.append(v)
        assert m.l == [v] and len(m.l) == 1 and m.l[0] is v and list(m.l) == [v]
        w = gpuckpt.Variable(6.0)
        m.l.append(w)
        assert held == [v, w]

    def test_nested_containers_are_wrapped_inside_the_users_list(self) -> None:
        inner: list = []
        held = [inner, {"a": 1}]
        m = gpuckpt.Module()
        m.l = held
        assert isinstance(held[0], TrackedList) and isinstance(held[1], TrackedDict)
        held[0].append(gpuckpt.Variable(1.0))
        assert inner == held[0] and len(inner) == 1

    def test_edit_behind_the_wrapper_makes_save_raise_naming_the_attribute(self, tmp_path: Path) -> None:
        held: list = []
        m = gpuckpt.Module()
        m.layers = held
        held.append(gpuckpt.Variable(5.0))
        with pytest.raises(gpuckpt.InvalidArgumentError,
                           match=r"cannot checkpoint \(root\)\.model\.layers: the wrapped list was modified "
                                 r"outside the wrapper \(it now holds 1 items, .*it was last 0 items, \[\]\)"):
            gpuckpt.Checkpoint(model=m).save(tmp_path / "ckpt")
        assert not list(tmp_path.iterdir())

    def test_untrackable_edits_of_plain_values_raise_too(self, tmp_path: Path) -> None:
        m = gpuckpt.Module()
        held = [1]
        m.l = held
        held.append(2)
        assert_unsaveable(m, tmp_path, r"\(root\)\.obj\.l: the wrapped list was modified")

    def test_replacement_behind_the_wrapper_is_found_even_after_wrapper_edits(self, tmp_path: Path) -> None:
        m = gpuckpt.Module()
        held = [gpuckpt.Variable(1.0), 2]
        m.l = held
        held[0] = gpuckpt.Variable(3.0)  # same length: found by the full comparison when saving
        m.l.append(4)
        m.l.extend([5])
        assert m.l == held and len(held) == 4
        assert_unsaveable(m, tmp_path, r"\(root\)\.obj\.l: the wrapped list was modified")

    def test_builtin_storage_follows_edits_through_the_wrapper(self) -> None:
        """C code that reads a list's or dict's own storage (not its methods) sees the contents."""
        m = gpuckpt.Module()
        m.l, m.d = [], {}
        for i in range(100):
            m.l.append(i)
            m.d[str(i)] = i
        m.l.insert(0, -1)
        del m.d["0"]
        assert list.__getitem__(m.l, slice(None)) == [-1, *range(100)]
        assert dict(dict.items(m.d)) == {str(i): i for i in range(1, 100)}

    def test_the_mark_stays_after_later_edits_through_the_wrapper(self, tmp_path: Path) -> None:
        m = gpuckpt.Module()
        held: list = []
        m.l = held
        held.append(1)
        m.l.append(gpuckpt.Variable(1.0))
        assert_unsaveable(m, tmp_path, "modified outside the wrapper")

    def test_assigning_the_list_again_tracks_it_afresh(self, tmp_path: Path) -> None:
        m = gpuckpt.Module()
        held: list = []
        m.l = held
        held.append(gpuckpt.Variable(5.0))
        m.l = held
        assert keys(gpuckpt.Checkpoint(m=m).write(tmp_path / "ok")) == ["m/l/0/.ATTRIBUTES/VARIABLE_VALUE"]

    def test_restoring_into_a_list_edited_behind_the_wrapper_raises(self, tmp_path: Path) -> None:
        source = gpuckpt.Module()
        source.l = [gpuckpt.Variable(3.0)]
        path = gpuckpt.Checkpoint(m=source).write(tmp_path / "src")
        m = gpuckpt.Module()
        held: list = []
        m.l = held
        held.append(gpuckpt.Variable(0.0))
        with pytest.raises(gpuckpt.InvalidArgumentError, match="modified outside the wrapper"):
            gpuckpt.Checkpoint(m=m).read(path)
        assert float(held[0].numpy()) == 0.0

    def test_appends_through_the_wrapper_restore_on_creation(self, tmp_path: Path) -> None:
        source = gpuckpt.Module()
        source.l = [gpuckpt.Variable(3.0), gpuckpt.Variable(4.0)]
        path = gpuckpt.Checkpoint(m=source).write(tmp_path / "src")
        m = gpuckpt.Module()
        held: list = []
        m.l = held
        status = gpuckpt.Checkpoint(m=m).read(path)
        m.l.append(gpuckpt.Variable(0.0))
        m.l.extend([gpuckpt.Variable(0.0)])
        status.assert_consumed()
        assert [float(v.numpy()) for v in held] == [3.0, 4.0]

    def test_builtin_consumers_see_the_contents(self) -> None:
        m = gpuckpt.Module()
        m.l = [1.0, 2.0]
        m.s = ["a", "b"]
        assert json.dumps(m.l) == "[1.0, 2.0]"
        np.testing.assert_array_equal(np.asarray(m.l), [1.0, 2.0])
        assert ",".join(m.s) == "a,b" and [0] + m.s == [0, "a", "b"] and m.s + ["c"] == ["a", "b", "c"]
        assert [1.0, 2.0] == m.l and m.l < [1.0, 3.0] and 2 * m.l == [1.0, 2.0, 1.0, 2.0]

    def test_pickles_as_a_list(self) -> None:
        restored = pickle.loads(pickle.dumps(TrackedList([1, [2]])))
        assert isinstance(restored, TrackedList) and restored == [1, [2]] and isinstance(restored[1], TrackedList)

    def test_not_hashable(self) -> None:
        with pytest.raises(TypeError):
            hash(TrackedList())


class TestCopiesInheritTheMark:
    """As TF's testListShallowCopy/testListDeepCopy/testDictShallowCopy/testDictDeepCopy."""

    @pytest.mark.parametrize("copier", [copy.copy, copy.deepcopy])
    def test_list_copies(self, copier, tmp_path: Path) -> None:
        m = gpuckpt.Module()
        # TF's tests hold plain floats; gpuckpt refuses to save plain values it would drop (docs/api.md)
        held = [[gpuckpt.Variable(1.0)]]
        m.a = held
        copied = copier(m.a)
        assert len(copied) == 1 and len(copied[0]) == 1 and copied is not m.a
        assert (copied[0] is m.a[0]) == (copier is copy.copy)
        gpuckpt.Checkpoint(m=m).write(tmp_path / "clean")
        held.append(gpuckpt.Variable(2.0))
        assert_unsaveable(m.a, tmp_path, "modified outside the wrapper")
        assert_unsaveable(copier(m.a), tmp_path, "modified outside the wrapper")

    def test_list_copy_method_is_a_fresh_wrapper_as_in_tf(self, tmp_path: Path) -> None:
        m = gpuckpt.Module()
        held: list = []
        m.a = held
        held.append(gpuckpt.Variable(1.0))
        assert_unsaveable(m.a, tmp_path, "modified outside the wrapper")
        fresh = m.a.copy()
        assert isinstance(fresh, TrackedList)
        assert keys(gpuckpt.Checkpoint(obj=fresh).write(tmp_path / "fresh")) == ["obj/0/.ATTRIBUTES/VARIABLE_VALUE"]

    @pytest.mark.parametrize("copier", [copy.copy, copy.deepcopy, TrackedDict.copy])
    def test_dict_copies(self, copier, tmp_path: Path) -> None:
        m = gpuckpt.Module()
        held = {"a": [gpuckpt.Variable(1.0)]}
        m.a = held
        copied = copier(m.a)
        assert isinstance(copied, TrackedDict) and list(copied) == ["a"] and len(copied["a"]) == 1
        assert copied is not m.a
        assert (copied["a"] is m.a["a"]) == (copier is not copy.deepcopy)
        gpuckpt.Checkpoint(m=m).write(tmp_path / "clean")
        held["b"] = []
        assert_unsaveable(m.a, tmp_path, "wrapped dict was modified outside the wrapper")
        assert_unsaveable(copier(m.a), tmp_path, "wrapped dict was modified outside the wrapper")

    def test_copies_of_a_module_track_their_containers(self) -> None:
        original = gpuckpt.Module()
        sub = gpuckpt.Module()
        original.a = [[1.0]]
        original.b = {"a": sub}
        shallow = copy.copy(original)
        assert shallow.b["a"] is sub and shallow.a == [[1.0]]
        deep = copy.deepcopy(original)
        assert isinstance(deep.b, dict) and deep.b["a"] is not sub
        assert [name for name, _ in deep._trackable_children()] == ["a", "b"]
        assert deep._lookup_dependency("b") is deep.b


class TestDictWrapsTheUsersDict:
    def test_overrides_every_dict_method(self) -> None:
        assert overridden_methods_missing(dict, TrackedDict) == []

    def test_dict_changes_are_seen_both_ways(self) -> None:
        held: dict = {}
        m = gpuckpt.Module()
        m.d = held
        v = gpuckpt.Variable(1.0)
        held["v"] = v
        assert m.d == {"v": v} and list(m.d) == ["v"] and m.d["v"] is v and "v" in m.d
        m.d["w"] = 2
        assert held == {"v": v, "w": 2}

    def test_edit_behind_the_wrapper_makes_save_raise(self, tmp_path: Path) -> None:
        m = gpuckpt.Module()
        held = {"lr": 0.1}
        m.config = held
        held["lr"] = 0.2
        assert_unsaveable(m, tmp_path, r"cannot checkpoint \(root\)\.obj\.config: the wrapped dict was modified")

    def test_edits_through_the_wrapper_save(self, tmp_path: Path) -> None:
        m = gpuckpt.Module()
        m.d = {}
        m.d["b"] = gpuckpt.Variable(1.0)
        m.d.update(a=gpuckpt.Variable(2.0))
        m.d.setdefault("c", [gpuckpt.Variable(3.0)])
        del m.d["b"]
        assert keys(gpuckpt.Checkpoint(m=m).write(tmp_path / "d")) == [
            "m/d/a/.ATTRIBUTES/VARIABLE_VALUE", "m/d/c/0/.ATTRIBUTES/VARIABLE_VALUE"]

    def test_unhashable_and_pickles(self) -> None:
        with pytest.raises(TypeError, match="unhashable"):
            {TrackedDict()}
        restored = pickle.loads(pickle.dumps(TrackedDict(a=1, b=[2])))
        assert restored == {"a": 1, "b": [2]} and isinstance(restored["b"], TrackedList)


class TestTuples:
    def test_namedtuple_is_saved_under_its_field_names(self, tmp_path: Path) -> None:
        v = gpuckpt.Variable(2.0)
        m = gpuckpt.Module()
        m.nt = Point(x=v, y=[gpuckpt.Variable(3.0)])
        assert m.nt.x is v and m.nt[0] is v and isinstance(m.nt, Point) and isinstance(m.nt, gpuckpt.Trackable)
        assert [name for name, _ in m.nt._trackable_children()] == ["x", "y", "0", "1"]
        path = gpuckpt.Checkpoint(m=m).write(tmp_path / "nt")
        assert keys(path) == ["m/nt/x/.ATTRIBUTES/VARIABLE_VALUE", "m/nt/y/0/.ATTRIBUTES/VARIABLE_VALUE"]
        loaded = gpuckpt.Module()
        loaded.nt = Point(x=gpuckpt.Variable(0.0), y=[gpuckpt.Variable(0.0)])
        gpuckpt.Checkpoint(m=loaded).read(path).assert_consumed()
        assert float(loaded.nt.x.numpy()) == 2.0 and float(loaded.nt.y[0].numpy()) == 3.0

    def test_namedtuple_keeps_its_methods_and_repr(self) -> None:
        m = gpuckpt.Module()
        m.nt = Point(x=gpuckpt.Variable(1.0), y=2)
        replaced = m.nt._replace(y=[gpuckpt.Variable(1.0)])
        assert isinstance(replaced, Point) and isinstance(replaced.y, TrackedList)
        assert repr(m.nt).startswith("Point(x=") and m.nt._asdict()["y"] == 2 and m.nt == (m.nt.x, 2)

    def test_namedtuple_subclass_with_a_property(self) -> None:
        v = gpuckpt.Variable(2.0)

        class Summed(Point):
            def __new__(cls, x, y):
                return super().__new__(cls, x, 3)

            @property
            def summed(self):
                return float(self.x.numpy()) + self.y

        m = gpuckpt.Module()
        m.nt = Summed(x=v, y=2)
        assert m.nt.y == 3 and m.nt.x is v and m.nt.summed == 5.0
        assert {"x", "0"} <= {name for name, _ in m.nt._trackable_children()}

    def test_tuple_subclass_is_tracked_by_position(self, tmp_path: Path) -> None:
        class Pair(tuple):
            @property
            def first(self):
                return self[0]

        v = gpuckpt.Variable(2.0)
        m = gpuckpt.Module()
        m.pair = Pair([v, 2])
        assert isinstance(m.pair, Pair) and m.pair.first is v
        assert m.pair._trackable_children() == [("0", v)]
        assert keys(gpuckpt.Checkpoint(m=m).write(tmp_path / "t")) == ["m/pair/0/.ATTRIBUTES/VARIABLE_VALUE"]

    def test_namedtuple_with_a_custom_new_cannot_be_saved(self, tmp_path: Path) -> None:
        class NoFields(collections.namedtuple("A", ["x"])):
            def __new__(cls):
                return super().__new__(cls, [])

        m = gpuckpt.Module()
        m.nt = NoFields()
        m.nt.x.append(gpuckpt.Variable(1.0))
        assert_unsaveable(m, tmp_path, r"\(root\)\.obj\.nt: the namedtuple .* cannot be rebuilt from its fields")

    def test_tuples_without_trackables_are_left_alone(self, tmp_path: Path) -> None:
        m = gpuckpt.Module()
        m.t = (1, 2)
        m.nt = Point(1, 2)
        assert type(m.t) is tuple and type(m.nt) is Point
        assert m._trackable_children() == []

    def test_copies_and_pickles(self) -> None:
        m = gpuckpt.Module()
        m.nt = Point(x=gpuckpt.Variable(1.0), y=[2])
        assert copy.copy(m.nt) is m.nt
        deep = copy.deepcopy(m.nt)
        assert isinstance(deep, Point) and isinstance(deep, gpuckpt.Trackable) and deep.x is not m.nt.x
        restored = pickle.loads(pickle.dumps(m.nt))
        assert isinstance(restored, Point) and isinstance(restored.y, TrackedList) and restored.y == [2]

    def test_module_in_its_own_tuple(self) -> None:
        m = gpuckpt.Module()
        m.s = (m,)
        assert [name for name, _ in m._trackable_children()] == ["s"] and m.trainable_variables == ()
