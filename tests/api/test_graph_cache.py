"""Decoded object graphs are reused for identical bytes only (restorer.GraphCache), and a restore through
the cache behaves as one without it: changed graphs are decoded afresh, corrupt ones raise every time."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

import gpuckpt
from gpuckpt.format import objgraph
from gpuckpt.format.objgraph import AttributeRef, ChildRef, GraphNode, ObjectGraph
from gpuckpt.restorer import GraphCache, graph_facts, graphs
from gpuckpt.saver import write_tensors


def graph_bytes(names: list[str]) -> bytes:
    """The encoded graph of a root with one variable per name."""
    leaves = [GraphNode(attributes=(AttributeRef("VARIABLE_VALUE", name, f"{name}/.ATTRIBUTES/VARIABLE_VALUE"),),
                        has_checkpoint_values=True) for name in names]
    root = GraphNode(children=tuple(ChildRef(i + 1, name) for i, name in enumerate(names)), has_checkpoint_values=True)
    return objgraph.encode(ObjectGraph((root, *leaves)))


def test_identical_bytes_reuse_the_decoded_graph_and_its_facts() -> None:
    cache = GraphCache()
    data = graph_bytes(["a", "b"])
    graph, facts = cache.decode(data)
    again = cache.decode(bytes(bytearray(data)))  # equal bytes, another object
    assert again[0] is graph and again[1] is facts and len(cache) == 1
    fresh = graph_facts(objgraph.decode(data))
    assert graph == objgraph.decode(data)
    assert list(facts.names) == list(fresh.names) == ["(root)", "(root).a", "(root).b"]
    assert (facts.labels, facts.valued, facts.slot_nodes) == (fresh.labels, fresh.valued, fresh.slot_nodes)


def test_one_byte_changed_is_decoded_afresh() -> None:
    cache = GraphCache()
    data = graph_bytes(["a", "b"])
    first, _ = cache.decode(data)
    changed = data.replace(b"b/.ATTRIBUTES", b"c/.ATTRIBUTES")
    assert len(changed) == len(data) and changed != data
    second, facts = cache.decode(changed)
    assert second is not first and second == objgraph.decode(changed)
    assert second.nodes[2].attributes[0].checkpoint_key == "c/.ATTRIBUTES/VARIABLE_VALUE"
    assert facts.valued == {1, 2} and len(cache) == 2


def test_one_node_more_is_decoded_afresh() -> None:
    cache = GraphCache()
    first, _ = cache.decode(graph_bytes(["a", "b"]))
    second, facts = cache.decode(graph_bytes(["a", "b", "c"]))
    assert len(second.nodes) == 4 and len(first.nodes) == 3 and facts.valued == {1, 2, 3}
    assert str(facts.labels[3]) == "(root).c"


@pytest.mark.parametrize("corrupt", [b"\x0a\xff", b"", b"\x0a\x02\x0a\x00" + b"\x0a\x04\x0a\x02\x08\x07"])
def test_corrupt_graphs_raise_every_time_and_are_not_kept(corrupt: bytes) -> None:
    cache = GraphCache()
    for _ in range(3):
        with pytest.raises(gpuckpt.DataLossError):
            cache.decode(corrupt, path="/ck")
    assert len(cache) == 0


def test_the_entry_count_stays_bounded_and_the_least_recently_used_goes() -> None:
    cache = GraphCache(capacity=3)
    datas = [graph_bytes([f"v{i}"]) for i in range(8)]
    decoded = [cache.decode(data)[0] for data in datas[:2]]
    for data in datas[2:]:
        cache.decode(data)
        assert cache.decode(datas[0])[0] is decoded[0]  # used again each time: stays in
        assert len(cache) <= 3
    assert len(cache) == 3
    assert cache.decode(datas[1])[0] is not decoded[1]  # not used since: it went first
    assert cache.decode(datas[1])[0] == decoded[1]


def test_graphs_larger_than_max_bytes_are_decoded_but_not_kept() -> None:
    cache = GraphCache(max_bytes=64)
    data = graph_bytes([f"variable_{i}" for i in range(10)])
    assert len(data) > 64
    first, _ = cache.decode(data)
    assert cache.decode(data)[0] is not first and first == cache.decode(data)[0] and len(cache) == 0


def test_the_bytes_kept_stay_under_max_bytes() -> None:
    datas = [graph_bytes([f"v{i}_{j}" for j in range(3)]) for i in range(6)]
    size = len(datas[0])
    assert all(len(d) == size for d in datas)
    cache = GraphCache(capacity=10, max_bytes=2 * size + 1)
    decoded = [cache.decode(d)[0] for d in datas]
    assert len(cache) == 2  # the two most recent fit
    assert cache.decode(datas[-1])[0] is decoded[-1] and cache.decode(datas[-2])[0] is decoded[-2]
    assert cache.decode(datas[0])[0] is not decoded[0]
    cache.clear()
    assert len(cache) == 0 and cache.decode(datas[0])[0] is not decoded[0]


def test_concurrent_decodes_agree() -> None:
    cache = GraphCache(capacity=2)
    datas = [graph_bytes([f"v{i}", f"w{i}"]) for i in range(4)]
    expected = [objgraph.decode(d) for d in datas]
    failures: list[BaseException] = []

    def work(k: int) -> None:
        try:
            for i in range(200):
                j = (i + k) % len(datas)
                assert cache.decode(datas[j])[0] == expected[j]
        except BaseException as exc:  # reported by the main thread
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures and len(cache) <= 2


def test_repeated_restores_share_the_graph_and_follow_a_changed_structure(tmp_path: Path) -> None:
    path = tmp_path / "ck"
    source = gpuckpt.Checkpoint(a=gpuckpt.Variable([1.0, 2.0]))
    source.write(path)
    targets = [gpuckpt.Checkpoint(a=gpuckpt.Variable([0.0, 0.0])) for _ in range(2)]
    statuses = [t.read(path).assert_consumed() for t in targets]
    assert statuses[0]._session.saved is statuses[1]._session.saved
    source.b = gpuckpt.Variable(3.0)  # one node more, under the same prefix
    source.write(path)
    target = gpuckpt.Checkpoint(a=gpuckpt.Variable([0.0, 0.0]), b=gpuckpt.Variable(0.0))
    status = target.read(path).assert_consumed()
    assert status._session.saved is not statuses[0]._session.saved and len(status._session.saved.nodes) == 3
    np.testing.assert_array_equal(target.a.numpy(), [1.0, 2.0])
    assert target.b.numpy() == 3.0
    statuses[0].assert_consumed()  # the first restore keeps its own graph, which has no b
    targets[0].b = gpuckpt.Variable(0.0)  # an object created after that restore is unmatched there
    with pytest.raises(AssertionError, match=r"Found 1 Python objects.*\(root\).b"):
        statuses[0].assert_consumed()


def test_a_registered_saver_is_refused_on_every_restore(tmp_path: Path) -> None:
    node = GraphNode(attributes=(AttributeRef("VARIABLE_VALUE", "v", "v/.ATTRIBUTES/VARIABLE_VALUE"),),
                     has_checkpoint_values=True, registered_saver="my_saver")
    graph = objgraph.encode(ObjectGraph((GraphNode(children=(ChildRef(1, "v"),), has_checkpoint_values=True), node)))
    prefix = write_tensors(tmp_path / "ck", {"v/.ATTRIBUTES/VARIABLE_VALUE": np.zeros(2, np.float32),
                                             objgraph.OBJECT_GRAPH_KEY: graph})
    for _ in range(2):
        with pytest.raises(gpuckpt.InvalidArgumentError, match="node 1 uses the registered saver 'my_saver'"):
            gpuckpt.Checkpoint(v=gpuckpt.Variable([0.0, 0.0])).read(prefix)
    assert len(graphs) <= graphs.capacity
