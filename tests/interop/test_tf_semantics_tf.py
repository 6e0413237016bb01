"""The same Python scenarios run against gpuckpt and real TensorFlow give the same answers.

Each scenario is written once, against a small ``Lib`` bundle of either library's classes:
tracked containers that wrap the user's list or dict, namedtuples, copies, weak roots,
overlapping restores, eager status methods, ``last_checkpoint_step`` and slot names.
"""

from __future__ import annotations

import collections
import copy
import gc
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import gpuckpt
from gpuckpt.format import objgraph
from gpuckpt.graph import pretty_names
from tests.api.models import Adam

pytestmark = pytest.mark.tf

Point = collections.namedtuple("Point", ["x", "y"])
OUTSIDE = r"(?i)wrapped (list|dictionary|dict) was modified outside the wrapper"


@dataclass(frozen=True)
class Lib:
    name: str
    Module: Any
    Variable: Any
    Checkpoint: Any
    CheckpointManager: Any

    def write(self, obj: Any, path: Path) -> str:
        return self.Checkpoint(obj=obj).write(str(path))

    def keys(self, path: str) -> list[str]:
        names = [name for name, _ in gpuckpt.list_variables(path)]
        return sorted(n for n in names if n != "_CHECKPOINTABLE_OBJECT_GRAPH")


@pytest.fixture(scope="module")
def tf():
    return pytest.importorskip("tensorflow")


@pytest.fixture(params=["gpuckpt", "tensorflow"])
def lib(request, tf) -> Lib:
    if request.param == "gpuckpt":
        return Lib("gpuckpt", gpuckpt.Module, gpuckpt.Variable, gpuckpt.Checkpoint, gpuckpt.CheckpointManager)
    return Lib("tensorflow", tf.Module, tf.Variable, tf.train.Checkpoint, tf.train.CheckpointManager)


# -- lists and dicts wrap the user's object ----------------------------------------------------


def test_edits_on_either_side_are_seen(lib: Lib) -> None:
    m = lib.Module()
    held: list = []
    m.l = held
    v = lib.Variable(5.0)
    held.append(v)
    assert len(m.l) == 1 and m.l[0] is v and m.l == held
    m.l.append(lib.Variable(6.0))
    assert len(held) == 2
    d: dict = {}
    m.d = d
    d["v"] = v
    assert list(m.d) == ["v"] and m.d["v"] is v


# Containers hold variables, not plain numbers: TF drops plain items silently, gpuckpt refuses to
# save them (docs/api.md, "Differences"), so plain items would test that rule instead of this one.
@pytest.mark.parametrize("edit", ["append", "insert", "replace", "dict_set", "dict_replace"])
def test_edit_behind_the_wrapper_makes_save_raise(lib: Lib, edit: str, tmp_path: Path) -> None:
    m = lib.Module()
    held_list: list = [lib.Variable(1.0)]
    held_dict: dict = {"lr": lib.Variable(0.1)}
    m.l, m.d = held_list, held_dict
    edits = {"append": lambda: held_list.append(lib.Variable(5.0)),
             "insert": lambda: held_list.insert(0, lib.Variable(5.0)),
             "replace": lambda: held_list.__setitem__(0, lib.Variable(7.0)),
             "dict_set": lambda: held_dict.update(v=lib.Variable(1.0)),
             "dict_replace": lambda: held_dict.update(lr=lib.Variable(0.2))}
    edits[edit]()
    with pytest.raises(ValueError, match=OUTSIDE):
        lib.write(m, tmp_path / "c")
    m.l, m.d = held_list, held_dict  # assigned again: a fresh wrapper tracks the current contents
    lib.write(m, tmp_path / "c")


def test_edits_through_the_wrapper_save(lib: Lib, tmp_path: Path) -> None:
    m = lib.Module()
    held: list = [lib.Variable(0.5)]
    m.l = held
    m.l.append(lib.Variable(1.0))
    m.d = {}
    m.d["v"] = lib.Variable(2.0)
    assert lib.keys(lib.write(m, tmp_path / "c")) == ["obj/d/v/.ATTRIBUTES/VARIABLE_VALUE",
                                                      "obj/l/0/.ATTRIBUTES/VARIABLE_VALUE",
                                                      "obj/l/1/.ATTRIBUTES/VARIABLE_VALUE"]


def test_restoring_into_a_list_edited_behind_the_wrapper_raises(lib: Lib, tmp_path: Path) -> None:
    source = lib.Module()
    source.l = [lib.Variable(3.0)]
    path = lib.write(source, tmp_path / "src")
    m = lib.Module()
    held: list = []
    m.l = held
    held.append(lib.Variable(0.0))
    with pytest.raises(ValueError, match=OUTSIDE):
        lib.Checkpoint(obj=m).read(path)


def test_appends_through_the_wrapper_restore_on_creation(lib: Lib, tmp_path: Path) -> None:
    source = lib.Module()
    source.l = [lib.Variable(3.0), lib.Variable(4.0)]
    path = lib.write(source, tmp_path / "src")
    m = lib.Module()
    held: list = []
    m.l = held
    status = lib.Checkpoint(obj=m).read(path)
    m.l.append(lib.Variable(0.0))
    m.l.append(lib.Variable(0.0))
    status.assert_consumed()
    assert [float(v.numpy()) for v in held] == [3.0, 4.0]


@pytest.mark.parametrize("kind", ["list", "dict"])
def test_copies_inherit_the_untracked_edit(lib: Lib, kind: str, tmp_path: Path) -> None:
    m = lib.Module()
    held: Any = [[lib.Variable(1.0)]] if kind == "list" else {"a": [lib.Variable(1.0)]}
    m.a = held
    lib.write(m, tmp_path / "clean")
    held.append(lib.Variable(1.0)) if kind == "list" else held.update(b=[])
    with pytest.raises(ValueError, match=OUTSIDE):
        lib.write(m, tmp_path / "dirty")  # the edit is noticed here
    outcomes = {}
    for name, copier in (("copy.copy", copy.copy), ("deepcopy", copy.deepcopy), ("method", lambda x: x.copy())):
        try:
            lib.write(copier(m.a), tmp_path / name)
            outcomes[name] = "saved"
        except ValueError:
            outcomes[name] = "raised"
    # TF's ListWrapper.copy() makes a fresh wrapper; its dict wrapper's copy() is copy.copy
    assert outcomes == {"copy.copy": "raised", "deepcopy": "raised",
                        "method": "saved" if kind == "list" else "raised"}


# -- tuples ------------------------------------------------------------------------------------


def tuple_module(lib: Lib) -> Any:
    class Pair(tuple):
        pass

    m = lib.Module()
    m.nt = Point(x=lib.Variable(np.float32(1.0)), y=[lib.Variable(np.float32(2.0))])
    m.pair = Pair([lib.Variable(np.float32(3.0))])
    m._plain = (1, 2)  # not checkpoint state: a public plain attribute is refused by gpuckpt (docs/api.md)
    m.v = lib.Variable(np.float32(4.0))
    return m


def test_namedtuples_and_tuple_subclasses_are_saved_as_tf_saves_them(lib: Lib, tmp_path: Path) -> None:
    m = tuple_module(lib)
    assert isinstance(m.nt, Point) and float(m.nt.x.numpy()) == 1.0
    assert lib.keys(lib.write(m, tmp_path / "t")) == [
        "obj/nt/x/.ATTRIBUTES/VARIABLE_VALUE", "obj/nt/y/0/.ATTRIBUTES/VARIABLE_VALUE",
        "obj/pair/0/.ATTRIBUTES/VARIABLE_VALUE", "obj/v/.ATTRIBUTES/VARIABLE_VALUE"]


def test_tuple_structures_give_the_same_bytes(tf, tmp_path: Path) -> None:
    ours = Lib("gpuckpt", gpuckpt.Module, gpuckpt.Variable, gpuckpt.Checkpoint, gpuckpt.CheckpointManager)
    theirs = Lib("tensorflow", tf.Module, tf.Variable, tf.train.Checkpoint, tf.train.CheckpointManager)
    our_path = ours.write(tuple_module(ours), tmp_path / "ours")
    tf_path = theirs.write(tuple_module(theirs), tmp_path / "theirs")
    for suffix in (".index", ".data-00000-of-00001"):
        assert Path(our_path + suffix).read_bytes() == Path(tf_path + suffix).read_bytes(), suffix


def test_namedtuple_that_cannot_be_rebuilt_raises_on_save(lib: Lib, tmp_path: Path) -> None:
    class NoFields(collections.namedtuple("A", ["x"])):
        def __new__(cls):
            return super().__new__(cls, [])

    m = lib.Module()
    m.nt = NoFields()
    m.nt.x.append(lib.Variable(1.0))
    with pytest.raises(ValueError, match="namedtuple"):
        lib.write(m, tmp_path / "c")


# -- Checkpoint --------------------------------------------------------------------------------


def test_deepcopy_of_a_checkpoint(lib: Lib, tmp_path: Path) -> None:
    original = lib.Checkpoint(v=lib.Variable(1.0))
    copied = copy.deepcopy(original)
    copied.v.assign(3.0)
    assert float(original.v.numpy()) == 1.0 and copied.v is not original.v
    assert copied.save(str(tmp_path / "copy")) == str(tmp_path / "copy-1")
    assert int(original.save_counter.numpy()) == 0 and int(copied.save_counter.numpy()) == 1


def test_weak_root(lib: Lib, tmp_path: Path) -> None:
    m = lib.Module()
    m.v = lib.Variable(2.0)
    checkpoint = lib.Checkpoint(root=weakref.ref(m))
    path = checkpoint.write(str(tmp_path / "weak"))
    assert lib.keys(path) == ["v/.ATTRIBUTES/VARIABLE_VALUE"] and isinstance(checkpoint.root, weakref.ref)
    loaded = lib.Module()
    loaded.v = lib.Variable(0.0)
    lib.Checkpoint(root=weakref.ref(loaded)).read(path).assert_consumed()
    assert float(loaded.v.numpy()) == 2.0
    ref = weakref.ref(m)
    del m
    gc.collect()
    assert ref() is None


@pytest.mark.parametrize("second_first", [False, True])
def test_overlapping_restores_newest_wins(lib: Lib, second_first: bool, tmp_path: Path) -> None:
    root = lib.Checkpoint()
    root.dep = lib.Module()
    root.dep.var = lib.Variable(12.0)
    first = root.save(str(tmp_path / "first"))
    root.dep.var.assign(13.0)
    second = root.save(str(tmp_path / "second"))
    a, b = lib.Checkpoint(), lib.Checkpoint()
    if second_first:
        status_b = b.restore(second)
        status_a = a.restore(first)
    else:
        status_a = a.restore(first)
        status_b = b.restore(second)
    dep = lib.Module()
    dep.var = lib.Variable(0.0)
    a.dep = dep
    after_a = float(dep.var.numpy())
    b.dep = dep
    status_a.assert_consumed()
    status_b.assert_consumed()
    assert (after_a, float(dep.var.numpy())) == ((12.0, 12.0) if second_first else (12.0, 13.0))


def test_eager_status_methods(lib: Lib, tmp_path: Path) -> None:
    path = lib.Checkpoint(v=lib.Variable(3.0)).write(str(tmp_path / "c"))
    checkpoint = lib.Checkpoint(v=lib.Variable(0.0))
    status = checkpoint.restore(path)
    assert status.run_restore_ops() is None and status.initialize_or_restore() is None
    assert float(checkpoint.v.numpy()) == 3.0
    nothing = lib.Checkpoint(v=lib.Variable(5.0)).restore(None)
    assert nothing.initialize_or_restore() is None
    with pytest.raises(AssertionError, match="No checkpoint specified, so no restore ops are available"):
        nothing.run_restore_ops()


def test_manager_last_checkpoint_step(lib: Lib, tmp_path: Path) -> None:
    step = lib.Variable(np.int64(0))
    manager = lib.CheckpointManager(lib.Checkpoint(step=step), str(tmp_path), max_to_keep=None,
                                    step_counter=step, checkpoint_interval=10, last_checkpoint_step=5)
    saved = []
    for value in (5, 10, 14, 15, 20, 26):
        step.assign(np.int64(value))
        path = manager.save()
        saved.append(None if path is None else Path(path).name)
    assert saved == [None, None, None, "ckpt-1", None, "ckpt-2"]


def test_slot_names_are_tf_names(tf, tmp_path: Path) -> None:
    v1 = tf.Variable([1.0, 2.0])
    optimizer = tf.compat.v1.train.AdamOptimizer(0.1)
    optimizer.apply_gradients([(tf.constant([1.0, 1.0]), v1)])
    tf_path = tf.train.Checkpoint(v1=v1, optimizer=optimizer).write(str(tmp_path / "tf"))
    ours_v1 = gpuckpt.Variable(np.array([1.0, 2.0], np.float32))
    ours_opt = Adam(0.1)
    ours_opt.apply_gradients([(np.ones(2, np.float32), ours_v1)])
    our_path = gpuckpt.Checkpoint(v1=ours_v1, optimizer=ours_opt).write(tmp_path / "ours")
    from tensorflow.core.protobuf import trackable_object_graph_pb2
    from tensorflow.python.checkpoint.checkpoint import ObjectGraphProtoPrettyPrinter

    for path in (tf_path, our_path):
        raw = gpuckpt.load_checkpoint(path).get_tensor(objgraph.OBJECT_GRAPH_KEY)
        proto = trackable_object_graph_pb2.TrackableObjectGraph.FromString(raw)
        tf_names = ObjectGraphProtoPrettyPrinter(proto).node_names
        ours = pretty_names(objgraph.decode(raw))
        assert [ours[i] for i in sorted(tf_names)] == [tf_names[i] for i in sorted(tf_names)]
        assert "(root).optimizer's state 'm' for (root).v1" in ours
