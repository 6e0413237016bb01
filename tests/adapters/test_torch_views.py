"""The PyTorch adapter hands out one NumPy view per tensor while it is in use (a save or restore asks
for it several times), never holds one alive itself, and makes a new one once the tensor's memory,
shape, dtype or layout changes."""

from __future__ import annotations

import gc
from pathlib import Path

import numpy as np
import pytest

import gpuckpt

torch = pytest.importorskip("torch")
gtorch = pytest.importorskip("gpuckpt.torch")


def _view(tensor):
    return gtorch.trackable(tensor)._serialize_tensors()["VARIABLE_VALUE"]


def test_a_view_in_use_is_handed_out_again() -> None:
    p = torch.nn.Parameter(torch.arange(6, dtype=torch.float32))
    first = _view(p)
    assert _view(p) is first
    assert gtorch.trackable(p)._restore_destinations()["VARIABLE_VALUE"] is first
    first[0] = 42.0
    assert p[0].item() == 42.0  # the tensor's own memory


def test_no_view_is_kept_alive_by_the_adapter() -> None:
    p = torch.nn.Parameter(torch.zeros(1000))
    view = _view(p)
    adapter = gtorch.trackable(p)
    del view
    gc.collect()
    assert adapter._last is not None and adapter._last[1]() is None


@pytest.mark.parametrize("change", ["data", "resize", "dtype", "transpose"])
def test_a_changed_tensor_gets_a_new_view(change: str) -> None:
    p = torch.nn.Parameter(torch.arange(6, dtype=torch.float32).reshape(2, 3), requires_grad=False)
    old = _view(p)
    if change == "data":
        p.data = torch.full((2, 3), 7.0)
    elif change == "resize":
        p.data = p.data.view(3, 2)  # the same memory, another shape
    elif change == "dtype":
        p.data = p.data.to(torch.float64)
    else:
        p.data = p.data.t()  # the same memory and shape count, other strides
    new = _view(p)
    assert new is not old
    np.testing.assert_array_equal(new, p.detach().numpy())
    assert new.shape == tuple(p.shape) and new.dtype == p.detach().numpy().dtype


def test_restores_follow_a_replaced_tensor(tmp_path: Path) -> None:
    """Restore, replace the parameter's data, restore again: the second restore fills the new memory."""
    source = torch.nn.Linear(3, 2)
    path = gpuckpt.Checkpoint(model=source).write(str(tmp_path / "ck"))
    target = torch.nn.Linear(3, 2)
    checkpoint = gpuckpt.Checkpoint(model=target)
    checkpoint.read(path).assert_consumed()
    target.weight.data = torch.zeros(2, 3)
    checkpoint.read(path).assert_consumed()
    torch.testing.assert_close(target.weight, source.weight)


@pytest.mark.parametrize("make", [
    lambda: torch.zeros(3, 4),
    lambda: torch.nn.Parameter(torch.zeros(5, dtype=torch.bfloat16)),
    lambda: torch.zeros(4, 3).t(),  # not contiguous: offered, and then restored through a copy
    lambda: torch.zeros((), dtype=torch.int64),
])
def test_a_tensor_offers_the_memory_it_saves(make) -> None:
    tensor = make()  # kept: the adapter holds it only weakly
    adapter = gtorch.trackable(tensor)
    assert type(adapter)._values_are_destinations  # a restore uses the saved view without asking
    saved, offered = adapter._serialize_tensors()["VARIABLE_VALUE"], adapter._restore_destinations()["VARIABLE_VALUE"]
    assert saved.dtype == offered.dtype and saved.shape == offered.shape and np.shares_memory(saved, offered)
