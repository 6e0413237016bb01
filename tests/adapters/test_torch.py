"""PyTorch adapter: modules and optimizers saved where they live, restored in place, read by TensorFlow."""

from __future__ import annotations

from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

import gpuckpt

torch = pytest.importorskip("torch", reason="the PyTorch adapter needs torch: pip install 'gpuckpt[torch]'")


class Net(torch.nn.Module):
    """Two linear layers with a batch norm between them (parameters and persistent and non-persistent buffers)."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.BatchNorm1d(8), torch.nn.Tanh())
        self.head = torch.nn.Linear(8, 2)
        self.register_buffer("scratch", torch.zeros(3), persistent=False)

    def forward(self, x: "torch.Tensor") -> "torch.Tensor":
        return self.head(self.encoder(x))


def batches(count: int, device: str = "cpu") -> list[tuple["torch.Tensor", "torch.Tensor"]]:
    generator = torch.Generator().manual_seed(1234)
    return [(torch.randn(16, 5, generator=generator).to(device), torch.randn(16, 2, generator=generator).to(device))
            for _ in range(count)]


def fresh(seed: int, device: str = "cpu") -> tuple[Net, "torch.optim.Adam"]:
    torch.manual_seed(seed)
    model = Net().to(device)
    return model, torch.optim.Adam(model.parameters(), lr=0.01)


def train(model: Net, optimizer: "torch.optim.Optimizer", data) -> list[float]:
    losses = []
    for x, y in data:
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def resumed_losses(tmp_path: Path, device: str) -> tuple[list[float], list[float]]:
    """Losses of 10 uninterrupted steps, and of 4 steps, save, restore into fresh objects, 6 more."""
    data = batches(10, device)
    model, optimizer = fresh(0, device)
    uninterrupted = train(model, optimizer, data)

    model, optimizer = fresh(0, device)
    first = train(model, optimizer, data[:4])
    path = gpuckpt.Checkpoint(model=model, optimizer=optimizer).save(tmp_path / "ckpt")
    model, optimizer = fresh(99, device)  # different weights and no optimizer state yet
    optimizer.param_groups[0]["lr"] = 0.5  # restored too
    status = gpuckpt.Checkpoint(model=model, optimizer=optimizer).restore(path)
    status.assert_consumed()
    assert optimizer.param_groups[0]["lr"] == 0.01
    return uninterrupted, first + train(model, optimizer, data[4:])


def test_training_resumes_exactly_on_the_cpu(tmp_path: Path) -> None:
    uninterrupted, resumed = resumed_losses(tmp_path, "cpu")
    assert resumed == uninterrupted


@pytest.mark.gpu
def test_training_resumes_exactly_on_a_gpu(tmp_path: Path) -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device for torch")
    torch.backends.cudnn.deterministic = True
    uninterrupted, resumed = resumed_losses(tmp_path, "cuda")
    assert resumed == uninterrupted


def test_keys_follow_attribute_paths_and_slots_follow_tensorflow(tmp_path: Path) -> None:
    model, optimizer = fresh(0)
    train(model, optimizer, batches(1))
    keys = dict(gpuckpt.list_variables(gpuckpt.Checkpoint(model=model, optimizer=optimizer).write(tmp_path / "c")))
    assert keys["model/encoder/0/weight/.ATTRIBUTES/VARIABLE_VALUE"] == [8, 5]
    assert keys["model/encoder/1/running_mean/.ATTRIBUTES/VARIABLE_VALUE"] == [8]
    assert keys["model/encoder/1/num_batches_tracked/.ATTRIBUTES/VARIABLE_VALUE"] == []
    assert keys["model/head/bias/.OPTIMIZER_SLOT/optimizer/exp_avg_sq/.ATTRIBUTES/VARIABLE_VALUE"] == [2]
    assert keys["model/head/bias/.OPTIMIZER_SLOT/optimizer/step/.ATTRIBUTES/VARIABLE_VALUE"] == []
    assert keys["optimizer/param_groups/0/.ATTRIBUTES/betas"] == [2]
    assert not any("scratch" in k for k in keys)  # non-persistent buffers are not state


def test_restore_writes_into_the_existing_tensors(tmp_path: Path) -> None:
    model, optimizer = fresh(0)
    train(model, optimizer, batches(2))
    path = gpuckpt.Checkpoint(model=model, optimizer=optimizer).write(tmp_path / "c")
    other, other_opt = fresh(5)
    train(other, other_opt, batches(1))  # state exists: it is overwritten in place
    weight, exp_avg = other.head.weight, other_opt.state[other.head.weight]["exp_avg"]
    pointers = (weight.data_ptr(), exp_avg.data_ptr())
    gpuckpt.Checkpoint(model=other, optimizer=other_opt).read(path).assert_consumed()
    assert other.head.weight is weight and other_opt.state[weight]["exp_avg"] is exp_avg
    assert (weight.data_ptr(), exp_avg.data_ptr()) == pointers
    assert torch.equal(weight, model.head.weight)
    assert torch.equal(exp_avg, optimizer.state[model.head.weight]["exp_avg"])
    assert torch.equal(other.encoder[1].num_batches_tracked, torch.tensor(2))


def test_bfloat16_and_other_dtypes_round_trip(tmp_path: Path) -> None:
    module = torch.nn.Module()
    values = {
        "brain": torch.tensor([1.5, -3.0, 256.0], dtype=torch.bfloat16),
        "fp16": torch.tensor([0.5, 65504.0], dtype=torch.float16),
        "fp8": torch.tensor([1.0, -2.0], dtype=torch.float8_e4m3fn),
        "ids": torch.arange(6, dtype=torch.int64).reshape(2, 3),
        "flags": torch.tensor([True, False]),
        "strided": torch.arange(12.0).reshape(3, 4).t(),  # not contiguous: packed on save
    }
    for name, value in values.items():
        module.register_buffer(name, value)
    path = gpuckpt.Checkpoint(m=module).write(tmp_path / "c")
    reader = gpuckpt.load_checkpoint(path)
    brain = reader.get_tensor("m/brain/.ATTRIBUTES/VARIABLE_VALUE")
    assert brain.dtype == ml_dtypes.bfloat16 and brain.tolist() == [1.5, -3.0, 256.0]
    np.testing.assert_array_equal(reader.get_tensor("m/strided/.ATTRIBUTES/VARIABLE_VALUE"),
                                  np.arange(12.0, dtype=np.float32).reshape(3, 4).T)
    target = torch.nn.Module()
    for name, value in values.items():
        target.register_buffer(name, torch.zeros_like(value))
    gpuckpt.Checkpoint(m=target).read(path).assert_consumed()
    for name, value in values.items():
        assert torch.equal(getattr(target, name).float(), value.float()), name


def test_shared_parameters_are_saved_once(tmp_path: Path) -> None:
    model = torch.nn.Module()
    model.embed = torch.nn.Embedding(4, 3)
    model.out = torch.nn.Linear(3, 4, bias=False)
    model.out.weight = model.embed.weight  # tied weights
    keys = [k for k, _ in gpuckpt.list_variables(gpuckpt.Checkpoint(model=model).write(tmp_path / "c"))]
    assert keys == ["_CHECKPOINTABLE_OBJECT_GRAPH", "model/embed/weight/.ATTRIBUTES/VARIABLE_VALUE"]


def test_shape_mismatch_names_the_key_and_changes_nothing(tmp_path: Path) -> None:
    model, _ = fresh(0)
    path = gpuckpt.Checkpoint(model=model).write(tmp_path / "c")
    torch.manual_seed(3)
    other = Net()
    other.head = torch.nn.Linear(8, 3)
    before = other.encoder[0].weight.detach().clone()
    with pytest.raises(gpuckpt.InvalidArgumentError, match=r"key 'model/head/weight/.ATTRIBUTES/VARIABLE_VALUE' "
                                                          r"\(\(root\).model.head.weight\).*shape \(2, 8\)"):
        gpuckpt.Checkpoint(model=other).read(path)
    assert torch.equal(other.encoder[0].weight, before)


def test_missing_optimizer_state_is_a_strict_error(tmp_path: Path) -> None:
    model, optimizer = fresh(0)
    path = gpuckpt.Checkpoint(model=model, optimizer=optimizer).write(tmp_path / "c")  # before any step: no state
    trained, trained_opt = fresh(0)
    train(trained, trained_opt, batches(1))
    with pytest.raises(gpuckpt.UnmatchedStateError, match=r"Missing key\(s\) \(18, .*model/head/weight/"
                                                          r".OPTIMIZER_SLOT/optimizer/step/.ATTRIBUTES/VARIABLE_VALUE "
                                                          r"\(head.weight/step\)"):
        gpuckpt.Checkpoint(model=trained, optimizer=trained_opt).read(path)
    status = gpuckpt.Checkpoint(model=trained, optimizer=trained_opt).read(path, strict=False)
    with pytest.raises(AssertionError, match=r"Found 18 Python objects.*\(root\).model.head.weight.step"):
        status.assert_existing_objects_matched()


def test_non_tensor_optimizer_state_is_refused(tmp_path: Path) -> None:
    model, optimizer = fresh(0)
    optimizer.state[model.head.bias]["note"] = "hello"
    with pytest.raises(gpuckpt.InvalidArgumentError, match=r"'note' of parameter head.bias as a str"):
        gpuckpt.Checkpoint(model=model, optimizer=optimizer).write(tmp_path / "c")


def test_the_module_stays_the_users_object() -> None:
    model, optimizer = fresh(0)
    checkpoint = gpuckpt.Checkpoint(model=model, optimizer=optimizer)
    assert checkpoint.model is model and checkpoint.optimizer is optimizer
    from gpuckpt import torch as adapter
    assert adapter.trackable(model) is adapter.trackable(model)


@pytest.mark.tf
def test_tensorflow_reads_a_pytorch_checkpoint(tmp_path: Path) -> None:
    tf = pytest.importorskip("tensorflow", reason="interop needs tensorflow-cpu (the test extra)")
    model, optimizer = fresh(0)
    train(model, optimizer, batches(3))
    path = gpuckpt.Checkpoint(model=model, optimizer=optimizer).save(tmp_path / "ckpt")
    reader = tf.train.load_checkpoint(str(tmp_path))
    expected = {f"model/{name.replace('.', '/')}/.ATTRIBUTES/VARIABLE_VALUE": t.detach().numpy()
                for name, t in model.state_dict().items()}
    for param_name, param in model.named_parameters():
        for slot, value in optimizer.state[param].items():
            key = f"model/{param_name.replace('.', '/')}/.OPTIMIZER_SLOT/optimizer/{slot}/.ATTRIBUTES/VARIABLE_VALUE"
            expected[key] = value.numpy()
    assert len(expected) == 9 + 6 * 3  # the state_dict (2 + 5 + 2 tensors), 3 slots for each of 6 parameters
    for key, value in expected.items():
        np.testing.assert_array_equal(reader.get_tensor(key), value, err_msg=key)
    assert reader.get_tensor("optimizer/param_groups/0/.ATTRIBUTES/lr") == 0.01
    assert path.endswith("ckpt-1")


def test_an_optimizer_attached_after_restore_gets_its_state(tmp_path: Path) -> None:
    """Restore-on-create: the optimizer's saved node waits on the checkpoint until one is attached."""
    model, optimizer = fresh(0)
    train(model, optimizer, batches(2))
    path = gpuckpt.Checkpoint(model=model, optimizer=optimizer).save(tmp_path / "ckpt")
    other, _ = fresh(1)
    checkpoint = gpuckpt.Checkpoint(model=other)
    status = checkpoint.restore(path)
    later = torch.optim.Adam(other.parameters(), lr=0.3)
    checkpoint.optimizer = later
    status.assert_consumed()
    assert later.param_groups[0]["lr"] == 0.01
    assert torch.equal(later.state[other.head.weight]["exp_avg_sq"],
                       optimizer.state[model.head.weight]["exp_avg_sq"])
    assert later.state[other.head.weight]["step"].item() == 2.0


def test_a_module_as_the_root_and_sgd_momentum(tmp_path: Path) -> None:
    """``Checkpoint(root=module)``; SGD's ``momentum_buffer`` is a slot like Adam's state."""
    x, y = batches(1)[0]
    x = x[:, :3]

    def sgd(seed: int) -> tuple["torch.nn.Linear", "torch.optim.SGD"]:
        torch.manual_seed(seed)
        model = torch.nn.Linear(3, 2)
        return model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

    def step(model: "torch.nn.Linear", optimizer: "torch.optim.SGD") -> float:
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()
        return loss.item()

    reference = sgd(0)
    expected = [step(*reference) for _ in range(4)]
    model, optimizer = sgd(0)
    losses = [step(model, optimizer) for _ in range(2)]
    path = gpuckpt.Checkpoint(model, optimizer=optimizer).write(tmp_path / "c")
    assert "weight/.OPTIMIZER_SLOT/optimizer/momentum_buffer/.ATTRIBUTES/VARIABLE_VALUE" in dict(
        gpuckpt.list_variables(path))
    model, optimizer = sgd(7)
    gpuckpt.Checkpoint(model, optimizer=optimizer).read(path).assert_consumed()
    losses += [step(model, optimizer) for _ in range(2)]
    assert losses == expected


def test_name_based_restore_matches_state_dict_keys(tmp_path: Path) -> None:
    """A checkpoint without an object graph is matched by full name, a tensor's state_dict key."""
    model, _ = fresh(0)
    values = {name: torch.rand_like(t.float()).to(t.dtype).numpy() for name, t in model.state_dict().items()}
    path = gpuckpt.saver.write_tensors(tmp_path / "names", values)
    status = gpuckpt.Checkpoint(model=model).read(path)
    assert isinstance(status, gpuckpt.NameBasedSaverStatus)
    status.assert_consumed()
    for name, tensor in model.state_dict().items():
        np.testing.assert_array_equal(tensor.numpy(), values[name], err_msg=name)
