"""Issue 15's silent PyTorch cases: each now raises (or warns) with a message naming the keys and the way out."""

from __future__ import annotations

import gc
import warnings
from pathlib import Path

import numpy as np
import pytest

import gpuckpt
from gpuckpt.format import bundle

torch = pytest.importorskip("torch", reason="the PyTorch adapter needs torch: pip install 'gpuckpt[torch]'")


class Stack(torch.nn.Module):
    def __init__(self, layers: int) -> None:
        super().__init__()
        self.h = torch.nn.ModuleList([torch.nn.Linear(3, 3) for _ in range(layers)])

    def forward(self, x: "torch.Tensor") -> "torch.Tensor":
        for layer in self.h:
            x = layer(x)
        return x


class Other(torch.nn.Module):
    """Another architecture: nothing in common with Stack but the root."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = torch.nn.ModuleList([torch.nn.Linear(3, 3)])


class Tied(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(4, 3)
        self.out = torch.nn.Linear(3, 4, bias=False)
        self.out.weight = self.emb.weight


def test_a_missing_layer_is_listed_and_nothing_is_restored(tmp_path: Path) -> None:
    path = gpuckpt.Checkpoint(model=Stack(2)).write(tmp_path / "c")
    target = Stack(1)
    before = target.h[0].weight.detach().clone()
    with pytest.raises(gpuckpt.UnmatchedStateError) as raised:
        gpuckpt.Checkpoint(model=target).read(path)
    message = str(raised.value)
    assert "Unexpected key(s) (2, checkpointed values no live object takes): " \
           "model/h/1/weight/.ATTRIBUTES/VARIABLE_VALUE (h.1.weight), model/h/1/bias/.ATTRIBUTES/VARIABLE_VALUE " \
           "(h.1.bias)" in message
    assert "Pass strict=False to read()/restore()" in message and "expect_partial()" in message
    assert torch.equal(target.h[0].weight, before)  # nothing was assigned
    assert [d.path for d in raised.value.unexpected] == ["h.1.weight", "h.1.bias"]


def test_another_architecture_lists_both_sides(tmp_path: Path) -> None:
    path = gpuckpt.Checkpoint(model=Stack(1)).write(tmp_path / "c")
    with pytest.raises(gpuckpt.UnmatchedStateError, match=r"(?s)Missing key\(s\) \(2, .*"
                                                          r"model/layers/0/weight/.ATTRIBUTES/VARIABLE_VALUE "
                                                          r"\(layers.0.weight\).*Unexpected key\(s\) \(2, .*"
                                                          r"model/h/0/weight/.ATTRIBUTES/VARIABLE_VALUE \(h.0.weight\)"):
        gpuckpt.Checkpoint(model=Other()).read(path)


def test_saving_as_model_and_restoring_as_net_is_an_error(tmp_path: Path) -> None:
    path = gpuckpt.Checkpoint(model=Stack(1)).write(tmp_path / "c")
    with pytest.raises(gpuckpt.UnmatchedStateError, match=r"(?s)Missing key\(s\) \(2, .*"
                                                          r"net/h/0/weight/.ATTRIBUTES/VARIABLE_VALUE \(h.0.weight\).*"
                                                          r"top-level objects \['model'\] match no live object"):
        gpuckpt.Checkpoint(net=Stack(1)).read(path)


def test_restore_or_initialize_does_not_pretend(tmp_path: Path) -> None:
    manager = gpuckpt.CheckpointManager(gpuckpt.Checkpoint(model=Stack(2)), tmp_path, max_to_keep=1)
    manager.save()
    other = gpuckpt.CheckpointManager(gpuckpt.Checkpoint(model=Stack(1)), tmp_path, max_to_keep=1)
    with pytest.raises(gpuckpt.UnmatchedStateError, match=r"h.1.weight"):
        other.restore_or_initialize()


def test_strict_false_restores_what_matches_and_warns_once_collected(tmp_path: Path) -> None:
    source = Stack(2)
    path = gpuckpt.Checkpoint(model=source).write(tmp_path / "c")
    target = Stack(1)
    status = gpuckpt.Checkpoint(model=target).read(path, strict=False)
    assert torch.equal(target.h[0].weight, source.h[0].weight)
    with pytest.warns(gpuckpt.UnrestoredValuesWarning, match=r"could not be found in the restored object: "  # noqa: PT031
                                                             r"\(root\).model.h.1.weight"):
        del status, target  # the session ends with them (collected at once, or by gc)
        gc.collect()


def test_strict_false_with_expect_partial_is_quiet(tmp_path: Path) -> None:
    path = gpuckpt.Checkpoint(model=Stack(2)).write(tmp_path / "c")
    target = Stack(1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", gpuckpt.UnrestoredValuesWarning)
        gpuckpt.Checkpoint(model=target).read(path, strict=False).expect_partial()
        del target
        gc.collect()


@pytest.mark.parametrize("save_compiled", [True, False])
def test_torch_compile_prefix_is_normalised_either_way(tmp_path: Path, save_compiled: bool) -> None:
    source = Stack(1)
    saved = torch.compile(source) if save_compiled else source
    path = gpuckpt.Checkpoint(model=saved).write(tmp_path / "c")
    assert "model/h/0/weight/.ATTRIBUTES/VARIABLE_VALUE" in dict(gpuckpt.list_variables(path))
    target = Stack(1)
    restored_into = target if save_compiled else torch.compile(target)
    gpuckpt.Checkpoint(model=restored_into).read(path).assert_consumed()
    assert torch.equal(target.h[0].weight, source.h[0].weight)


def test_data_parallel_prefix_is_normalised(tmp_path: Path) -> None:
    source = Stack(1)
    path = gpuckpt.Checkpoint(model=torch.nn.DataParallel(source)).write(tmp_path / "c")
    assert "model/h/0/bias/.ATTRIBUTES/VARIABLE_VALUE" in dict(gpuckpt.list_variables(path))
    target = Stack(1)
    gpuckpt.Checkpoint(model=target).read(path).assert_consumed()
    assert torch.equal(target.h[0].bias, source.h[0].bias)


def test_distributed_data_parallel_prefix_is_normalised(tmp_path: Path) -> None:
    distributed = pytest.importorskip("torch.distributed")
    if not distributed.is_available():
        pytest.skip("torch.distributed is not built")
    distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        source = Stack(1)
        wrapped = torch.nn.parallel.DistributedDataParallel(source)
        assert next(iter(wrapped.state_dict())).startswith("module.")
        path = gpuckpt.Checkpoint(model=wrapped).write(tmp_path / "c")
        assert "model/h/0/weight/.ATTRIBUTES/VARIABLE_VALUE" in dict(gpuckpt.list_variables(path))
        target = Stack(1)
        gpuckpt.Checkpoint(model=torch.nn.parallel.DistributedDataParallel(target)).read(path).assert_consumed()
        assert torch.equal(target.h[0].weight, source.h[0].weight)
    finally:
        distributed.destroy_process_group()


def test_meta_device_model_is_refused_then_restored_after_to_empty_with_its_tie(tmp_path: Path) -> None:
    source = Tied()
    path = gpuckpt.Checkpoint(model=source).write(tmp_path / "c")
    with torch.device("meta"):
        target = Tied()
    with pytest.raises(gpuckpt.InvalidArgumentError, match=r"emb.weight on the meta device.*to_empty"):
        gpuckpt.Checkpoint(model=target).read(path)
    target.to_empty(device="cpu")
    assert target.out.weight is not target.emb.weight  # to_empty() made two parameters
    gpuckpt.Checkpoint(model=target).read(path).assert_consumed()
    assert target.out.weight is target.emb.weight
    assert torch.equal(target.emb.weight, source.emb.weight)


def test_an_optimizer_without_its_model_is_an_error_at_save(tmp_path: Path) -> None:
    model = Stack(1)
    optimizer = torch.optim.Adam(model.parameters())
    with pytest.raises(gpuckpt.InvalidArgumentError, match=r"\(root\).optimizer \(Adam\) updates 2 parameters that "
                                                           r"the checkpoint does not hold: param_groups\[0\]\['params'\]"
                                                           r"\[0\] \(shape \[3, 3\]\).*Checkpoint\(model=model, "
                                                           r"optimizer=optimizer\)"):
        gpuckpt.Checkpoint(optimizer=optimizer).write(tmp_path / "c")
    assert not list(tmp_path.iterdir())


def test_a_dtensor_parameter_on_a_one_rank_mesh_round_trips(tmp_path: Path) -> None:
    distributed = pytest.importorskip("torch.distributed")
    if not distributed.is_available():
        pytest.skip("torch.distributed is not built")
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Replicate

    distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        mesh = init_device_mesh("cpu", (1,))
        model = Stack(1)
        model.h[0].weight = torch.nn.Parameter(DTensor.from_local(model.h[0].weight.detach(), mesh, [Replicate()]))
        path = gpuckpt.Checkpoint(model=model).write(tmp_path / "c")  # the local shard is the whole tensor
        fresh = Stack(1)
        fresh.h[0].weight = torch.nn.Parameter(DTensor.from_local(torch.zeros_like(fresh.h[0].weight), mesh,
                                                                  [Replicate()]))
        gpuckpt.Checkpoint(model=fresh).read(path).assert_consumed()
        assert torch.equal(fresh.h[0].weight.to_local(), model.h[0].weight.to_local())
    finally:
        distributed.destroy_process_group()


def _forge_slot_shape(path: str, shape: tuple[int, ...]) -> None:
    """Rewrite the index so that head's exp_avg declares ``shape`` (its bytes stay those of a [3] tensor)."""
    index_path = Path(path + ".index")
    index = bundle.parse_index(index_path.read_bytes())
    key = "model/h/0/bias/.OPTIMIZER_SLOT/optimizer/exp_avg/.ATTRIBUTES/VARIABLE_VALUE"
    entries = dict(index.entries)
    entries[key] = entries[key]._replace(shape=shape)
    index_path.write_bytes(bundle.build_index(index.num_shards, entries))


@pytest.mark.parametrize("shape", [(2**29,), (2**40,)])
def test_a_forged_slot_shape_is_refused_before_allocating(tmp_path: Path, shape: tuple[int, ...]) -> None:
    model = Stack(1)
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    path = gpuckpt.Checkpoint(model=model, optimizer=optimizer).write(tmp_path / "c")
    _forge_slot_shape(path, shape)
    fresh = Stack(1)
    # the reader refuses the entry when it opens the index; the adapter checks again before allocating
    with pytest.raises(gpuckpt.DataLossError, match=rf"key 'model/h/0/bias/.OPTIMIZER_SLOT/optimizer/exp_avg/"
                                                    rf".ATTRIBUTES/VARIABLE_VALUE'.*(shape \[{shape[0]}\]|"
                                                    rf"stores 12 bytes)"):
        gpuckpt.Checkpoint(model=fresh, optimizer=torch.optim.Adam(fresh.parameters())).read(path, strict=False)


def test_plain_values_on_a_module_are_an_error_naming_the_path(tmp_path: Path) -> None:
    module = gpuckpt.Module()
    module.step = 5
    with pytest.raises(gpuckpt.InvalidArgumentError, match=r"\(root\).model.step holds a Python int \(5\), which a "
                                                           r"checkpoint does not save: use gpuckpt.Variable"):
        gpuckpt.Checkpoint(model=module).write(tmp_path / "c")
    module._step = 5  # private: not checkpoint state
    del module.step
    gpuckpt.Checkpoint(model=module).write(tmp_path / "c")


def test_plain_values_in_a_tracked_dict_beside_trackables_are_an_error(tmp_path: Path) -> None:
    state = {"model": Stack(1), "epoch": 3}
    with pytest.raises(gpuckpt.InvalidArgumentError, match=r"\(root\).state\['epoch'\] holds a Python int \(3\).*"
                                                           r"gpuckpt.PythonState"):
        gpuckpt.Checkpoint(state=state).write(tmp_path / "c")


def test_a_plain_value_given_to_a_checkpoint_is_saved_and_restored(tmp_path: Path) -> None:
    path = gpuckpt.Checkpoint(meta={"epoch": 3, "lr": 0.5, "tags": ("a", None)}).write(tmp_path / "c")
    assert dict(gpuckpt.list_variables(path))["meta/.ATTRIBUTES/py_state"] == []
    checkpoint = gpuckpt.Checkpoint(meta={"epoch": 0})
    checkpoint.read(path).assert_consumed()
    assert checkpoint.meta.value == {"epoch": 3, "lr": 0.5, "tags": ("a", None)}


def test_a_bare_number_keeps_tensorflows_error_with_a_hint() -> None:
    with pytest.raises(ValueError, match=r"expecting step to be a trackable object.*gpuckpt.PythonState\(5\)"):
        gpuckpt.Checkpoint(step=5)


def test_a_value_that_cannot_be_saved_is_named(tmp_path: Path) -> None:
    with pytest.raises(gpuckpt.InvalidArgumentError, match=r"cannot checkpoint \(root\).meta\['hook'\]: it is a "
                                                           r"builtins.function"):
        gpuckpt.Checkpoint(meta=gpuckpt.PythonState({"hook": lambda: 1})).write(tmp_path / "c")


def test_python_state_round_trips_types_exactly() -> None:
    from gpuckpt import pystate

    value = {"i": 2**70, "f": 0.1, "nan": float("nan"), "inf": -float("inf"), "b": True, "n": None,
             "t": (1, [2.0, "x"]), 3: b"\x00\xff", "np": np.float32(1.5), (1, 2): "tuple key"}
    back = pystate.decode(pystate.encode(value), "test")
    assert back.keys() == value.keys()
    assert type(back["t"]) is tuple and type(back["t"][1]) is list and type(back["np"]) is np.float32
    assert back["i"] == 2**70 and back["f"] == 0.1 and back["inf"] == -float("inf") and back["nan"] != back["nan"]
    assert back[3] == b"\x00\xff" and back[(1, 2)] == "tuple key"
    with pytest.raises(gpuckpt.DataLossError, match=r"where: Python state holds an unknown node"):
        pystate.decode(b'{"gpuckpt.pystate":1,"value":{"__reduce__":["os.system","ls"]}}', "where")
