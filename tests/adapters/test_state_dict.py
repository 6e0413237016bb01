"""Objects with state_dict()/load_state_dict() and the RNG helper: saved without glue, restored exactly."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

import gpuckpt

torch = pytest.importorskip("torch", reason="the PyTorch adapter needs torch: pip install 'gpuckpt[torch]'")


class Counter:
    """A user class: plain values and a tensor and an array in its state dict."""

    def __init__(self) -> None:
        self.count, self.history, self.weights, self.table = 0, [], torch.zeros(2), np.zeros(3, np.int32)

    def state_dict(self) -> dict:
        return {"count": self.count, "history": list(self.history), "nested": {"weights": self.weights.clone(),
                                                                                "table": self.table.copy()}}

    def load_state_dict(self, state: dict) -> None:
        self.count, self.history = state["count"], state["history"]
        self.weights, self.table = state["nested"]["weights"], state["nested"]["table"]


def _optimizer() -> "torch.optim.Optimizer":
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=1.0)


def test_a_scheduler_and_a_grad_scaler_resume(tmp_path: Path) -> None:
    optimizer = _optimizer()
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.5, total_steps=10)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=3)
    for _ in range(4):
        optimizer.step()
        scheduler.step()
    scaler._scale = torch.tensor(256.0)  # what a few overflow steps leave behind
    path = gpuckpt.Checkpoint(scheduler=scheduler, scaler=scaler).write(tmp_path / "c")
    assert "scheduler/.ATTRIBUTES/py_state" in dict(gpuckpt.list_variables(path))

    optimizer2 = _optimizer()
    scheduler2 = torch.optim.lr_scheduler.OneCycleLR(optimizer2, max_lr=0.5, total_steps=10)
    scaler2 = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=3)
    gpuckpt.Checkpoint(scheduler=scheduler2, scaler=scaler2).read(path).assert_consumed()
    assert scheduler2.state_dict() == scheduler.state_dict()
    assert scaler2.state_dict() == scaler.state_dict() and scaler2.get_scale() == 256.0
    optimizer.step(), scheduler.step(), optimizer2.step(), scheduler2.step()
    assert scheduler2.get_last_lr() == scheduler.get_last_lr()


def test_a_user_class_with_tensors_and_arrays(tmp_path: Path) -> None:
    counter = Counter()
    counter.count, counter.history = 7, [1.5, "two", None]
    counter.weights, counter.table = torch.tensor([1.0, -2.0]), np.array([4, 5, 6], np.int32)
    path = gpuckpt.Checkpoint(counter=counter).write(tmp_path / "c")
    keys = dict(gpuckpt.list_variables(path))
    assert keys["counter/nested.Sweights/.ATTRIBUTES/VARIABLE_VALUE"] == [2]
    assert keys["counter/nested.Stable/.ATTRIBUTES/VARIABLE_VALUE"] == [3]
    fresh = Counter()
    gpuckpt.Checkpoint(counter=fresh).read(path).assert_consumed()
    assert (fresh.count, fresh.history) == (7, [1.5, "two", None])
    assert isinstance(fresh.weights, torch.Tensor) and torch.equal(fresh.weights, counter.weights)
    assert isinstance(fresh.table, np.ndarray) and fresh.table.tolist() == [4, 5, 6]


def test_tensors_the_live_state_lacks_are_created_from_the_checkpoint(tmp_path: Path) -> None:
    class Lazy:
        def __init__(self) -> None:
            self.state: dict = {}

        def state_dict(self) -> dict:
            return dict(self.state)

        def load_state_dict(self, state: dict) -> None:
            self.state = state

    saved = Lazy()
    saved.state = {"buffer": torch.arange(4, dtype=torch.int64), "step": 3}
    path = gpuckpt.Checkpoint(lazy=saved).write(tmp_path / "c")
    fresh = Lazy()
    gpuckpt.Checkpoint(lazy=fresh).read(path).assert_consumed()
    assert fresh.state["step"] == 3 and torch.equal(fresh.state["buffer"], torch.arange(4))


def test_an_unsaveable_state_value_is_named(tmp_path: Path) -> None:
    counter = Counter()
    counter.history = [object()]
    with pytest.raises(gpuckpt.InvalidArgumentError, match=r"\(root\).counter \(Counter.state_dict\(\)\): cannot "
                                                           r"checkpoint \['history'\]\[0\]: it is a builtins.object"):
        gpuckpt.Checkpoint(counter=counter).write(tmp_path / "c")


def test_a_stateful_data_loader_resumes_mid_epoch(tmp_path: Path) -> None:
    loader_module = pytest.importorskip("torchdata.stateful_dataloader")

    def loader() -> "loader_module.StatefulDataLoader":
        return loader_module.StatefulDataLoader(list(range(40)), batch_size=4, shuffle=True,
                                                generator=torch.Generator().manual_seed(5))

    reference = [b.tolist() for b in loader()]
    first = loader()
    iterator = iter(first)
    seen = [next(iterator).tolist() for _ in range(3)]
    path = gpuckpt.Checkpoint(loader=first).write(tmp_path / "c")
    resumed = loader()
    gpuckpt.Checkpoint(loader=resumed).read(path).assert_consumed()
    assert seen + [b.tolist() for b in resumed] == reference


def test_rng_state_covers_python_numpy_and_torch(tmp_path: Path) -> None:
    generator = np.random.default_rng(3)
    torch_generator = torch.Generator().manual_seed(4)
    rng = gpuckpt.rng.RNGState(numpy=[generator], torch=[torch_generator])
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    random.random(), np.random.rand(), torch.rand(1), generator.random(), torch.rand(1, generator=torch_generator)
    path = gpuckpt.Checkpoint(rng=rng).write(tmp_path / "c")
    expected = (random.random(), np.random.rand(), torch.rand(3), generator.random(),
                torch.rand(2, generator=torch_generator))
    random.seed(9), np.random.seed(9), torch.manual_seed(9), generator.random(), torch_generator.manual_seed(9)
    gpuckpt.Checkpoint(rng=rng).read(path).assert_consumed()
    again = (random.random(), np.random.rand(), torch.rand(3), generator.random(),
             torch.rand(2, generator=torch_generator))
    assert again[:2] == expected[:2] and again[3] == expected[3]
    assert torch.equal(again[2], expected[2]) and torch.equal(again[4], expected[4])


def test_rng_state_refuses_a_different_generator_count(tmp_path: Path) -> None:
    path = gpuckpt.Checkpoint(rng=gpuckpt.rng.RNGState(numpy=[np.random.default_rng(0)])).write(tmp_path / "c")
    with pytest.raises(gpuckpt.InvalidArgumentError, match=r"holds the random state of 1 np.random.Generator "
                                                           r"objects, this process has 0"):
        gpuckpt.Checkpoint(rng=gpuckpt.rng.RNGState()).read(path)


def test_rng_state_saved_without_cuda_is_refused_where_cuda_exists(tmp_path: Path, monkeypatch) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the saved state would include it")
    path = gpuckpt.Checkpoint(rng=gpuckpt.rng.RNGState()).write(tmp_path / "d")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(gpuckpt.InvalidArgumentError, match=r"holds the random state of 0 CUDA devices, this process "
                                                           r"has 2 \(RNGState\(include=...\) without 'cuda'"):
        gpuckpt.Checkpoint(rng=gpuckpt.rng.RNGState()).read(path)
    gpuckpt.Checkpoint(rng=gpuckpt.rng.RNGState(include=("python", "numpy", "torch"))).read(path).assert_consumed()
