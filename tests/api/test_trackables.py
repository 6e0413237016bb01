"""Variable, Module attribute tracking, tracked containers and the Trackable protocol."""

from __future__ import annotations

import numpy as np
import pytest

import gpuckpt
from gpuckpt.trackable import TrackedDict, TrackedList, TrackedTuple

from .models import Adam, Dense


class TestVariable:
    def test_python_numbers_get_tf_default_dtypes(self) -> None:
        assert gpuckpt.Variable(1.0).dtype.name == "float32"
        assert gpuckpt.Variable([1, 2]).dtype.name == "int32"
        assert gpuckpt.Variable(2**40).dtype.name == "int64"
        assert gpuckpt.Variable(np.zeros(3)).dtype.name == "float64"

    def test_name_defaults_to_variable(self) -> None:
        assert gpuckpt.Variable(1.0).name == "Variable"
        assert gpuckpt.Variable(1.0, name="w").name == "w"

    def test_strings_are_bytes(self) -> None:
        v = gpuckpt.Variable("héllo")
        assert v.dtype.name == "string" and v.shape == ()
        assert v.numpy() == "héllo".encode()
        vec = gpuckpt.Variable([b"a", "b"])
        assert list(vec.numpy()) == [b"a", b"b"]

    def test_assign_checks_shape_and_dtype(self) -> None:
        v = gpuckpt.Variable(np.zeros(2, np.float32))
        v.assign([1, 2])
        np.testing.assert_array_equal(v.numpy(), [1.0, 2.0])
        with pytest.raises(gpuckpt.InvalidArgumentError, match=r"shape \(3,\).*shape \(2,\)"):
            v.assign([1.0, 2.0, 3.0])
        with pytest.raises(gpuckpt.InvalidArgumentError, match="float64 value.*dtype float32"):
            v.assign(np.zeros(2))
        np.testing.assert_array_equal(v.numpy(), [1.0, 2.0])

    def test_assign_add_broadcasts_and_keeps_storage(self) -> None:
        v = gpuckpt.Variable(np.zeros(3, np.float32))
        storage = v.value()
        v.assign_add(1).assign_sub(0.5)
        assert v.value() is storage
        np.testing.assert_array_equal(storage, [0.5, 0.5, 0.5])

    def test_numpy_is_a_copy(self) -> None:
        v = gpuckpt.Variable([1.0])
        v.numpy()[0] = 5.0
        assert v.numpy()[0] == 1.0


class TestModule:
    def test_attribute_assignments_are_dependencies_in_order(self) -> None:
        m = gpuckpt.Module()
        m.b = gpuckpt.Variable(1.0)
        m.a = gpuckpt.Variable(2.0)
        m.not_tracked = 3
        m._hidden = gpuckpt.Variable(4.0)
        assert [n for n, _ in m._trackable_children()] == ["b", "a", "_hidden"]

    def test_overwrite_keeps_position_and_non_trackable_removes(self) -> None:
        m = gpuckpt.Module()
        m.a, m.b = gpuckpt.Variable(1.0), gpuckpt.Variable(2.0)
        replacement = gpuckpt.Variable(3.0)
        m.a = replacement
        assert m._trackable_children() == [("a", replacement), ("b", m.b)]
        m.a = None
        del m.b
        assert m._trackable_children() == []

    def test_containers_are_wrapped_recursively(self) -> None:
        m = gpuckpt.Module()
        m.stuff = {"layers": [Dense(1, 1)], "pair": (gpuckpt.Variable(1.0), 7)}
        assert isinstance(m.stuff, TrackedDict)
        assert isinstance(m.stuff["layers"], TrackedList)
        assert isinstance(m.stuff["pair"], TrackedTuple) and m.stuff["pair"][1] == 7
        assert [n for n, _ in m.stuff["pair"]._trackable_children()] == ["0"]

    def test_later_appends_and_item_assignments_are_tracked(self) -> None:
        m = gpuckpt.Module()
        m.layers = []
        m.layers.append(Dense(1, 1))
        m.layers += [{"x": gpuckpt.Variable(1.0)}]
        assert isinstance(m.layers[1], TrackedDict)
        m.layers[0] = gpuckpt.Variable(2.0)
        assert [type(c).__name__ for _, c in m.layers._trackable_children()] == ["Variable", "TrackedDict"]
        m.layers[1]["y"] = [gpuckpt.Variable(3.0)]
        assert [n for n, _ in m.layers[1]._trackable_children()] == ["x", "y"]

    def test_variables_and_submodules(self) -> None:
        m = gpuckpt.Module()
        m.inner = Dense(2, 2)
        m.alias = m.inner.kernel
        m.frozen = gpuckpt.Variable(1.0, trainable=False)
        assert m.variables == (m.inner.kernel, m.frozen, m.inner.bias)  # breadth-first, each once
        assert m.trainable_variables == (m.inner.kernel, m.inner.bias)
        assert m.submodules == (m.inner,)

    def test_name_is_snake_case_of_class(self) -> None:
        assert Dense(1, 1).name == "dense"
        assert gpuckpt.Module(name="x").name == "x"


class TestContainers:
    def test_list_behaves_like_a_list(self) -> None:
        lst = TrackedList([1, 2])
        lst.extend([3])
        lst.insert(0, 0)
        assert lst == [0, 1, 2, 3] and isinstance(lst, list)

    def test_list_children_skip_non_trackables_but_keep_positions(self) -> None:
        v = gpuckpt.Variable(1.0)
        assert TrackedList([5, v])._trackable_children() == [("1", v)]
        assert TrackedList([5, v])._lookup_dependency("1") is v
        assert TrackedList([5, v])._lookup_dependency("01") is None

    def test_dict_rejects_non_string_keys_of_trackables(self) -> None:
        d = TrackedDict({1: gpuckpt.Variable(1.0)})
        with pytest.raises(gpuckpt.InvalidArgumentError, match="non-string key 1"):
            d._trackable_children()
        assert TrackedDict({1: "fine"})._trackable_children() == []

    def test_dict_keeps_insertion_order(self) -> None:
        d = TrackedDict()
        d["z"] = gpuckpt.Variable(1.0)
        d.setdefault("a", gpuckpt.Variable(2.0))
        d |= {"m": gpuckpt.Variable(3.0)}
        assert [n for n, _ in d._trackable_children()] == ["z", "a", "m"]


def test_optimizer_declares_slots_through_the_protocol() -> None:
    dense = Dense(2, 2)
    opt = Adam()
    opt.apply_gradients([(np.ones((2, 2), np.float32), dense.kernel)])
    slots = opt._slot_variables()
    assert [(s.slot_name, s.original) for s in slots] == [("m", dense.kernel), ("v", dense.kernel)]
    assert opt._lookup_slot(dense.kernel, "v") is opt.get_slot(dense.kernel, "v")
    assert opt._lookup_slot(dense.bias, "v") is None
