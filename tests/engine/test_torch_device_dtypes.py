"""bfloat16 and float8 CUDA torch tensors reach the GPU engine as integer views of their own device
memory: saved and restored in place with no host copy, stored as bfloat16/float8."""

from __future__ import annotations

import types

import ml_dtypes
import numpy as np
import pytest

import gpuckpt
from gpuckpt.arrays import RetypedDeviceArray, as_tensor, device_view
from gpuckpt.format import crc
from gpuckpt.plan import TensorSpec, build_save_plan
from gpuckpt.testing.fake_cuda import FakeRuntime

torch = pytest.importorskip("torch")
cuda = pytest.importorskip("numba.cuda")
pack = pytest.importorskip("gpuckpt.kernels.pack")
gtorch = pytest.importorskip("gpuckpt.torch")

KEY = "w/.ATTRIBUTES/VARIABLE_VALUE"
WIDTHS = {torch.bfloat16: (torch.int16, np.int16, ml_dtypes.bfloat16),
          torch.float8_e4m3fn: (torch.uint8, np.uint8, ml_dtypes.float8_e4m3fn),
          torch.float8_e5m2: (torch.uint8, np.uint8, ml_dtypes.float8_e5m2)}


class CudaTensorDouble:
    """Just enough of a CUDA ``torch.Tensor`` of a dtype NumPy lacks: its memory is a device array of
    integers of its width (simulated or fake CUDA); ``view`` to that integer dtype keeps the memory,
    like torch's; ``cpu()`` (a host copy) fails the test."""

    __module__ = "torch.testing_double"
    is_cuda = True
    is_cpu = False

    def __init__(self, memory, dtype):
        self.memory, self.dtype, self.shape = memory, dtype, tuple(memory.shape)
        self.device = types.SimpleNamespace(type="cuda", index=0)

    def detach(self):
        return self

    def data_ptr(self) -> int:
        return id(self.memory)  # stands for the memory's address (simulated arrays expose none)

    def stride(self) -> tuple[int, ...]:
        return tuple(s // self.memory.dtype.itemsize for s in self.memory.strides)

    def view(self, dtype):
        assert dtype == WIDTHS[self.dtype][0], dtype
        return self.memory

    def cpu(self):
        raise AssertionError("a CUDA tensor was copied through the host")

    def copy_(self, source):
        raise AssertionError("restored through a host value instead of in place")


@pytest.fixture(autouse=True)
def doubles_are_plain_tensors(monkeypatch):
    """The double is not a torch.Tensor; let tensor_view take it for one (DTensor refusal is tested elsewhere)."""
    monkeypatch.setattr(gtorch, "_refuse_subclasses", lambda tensor, name="": None)
    monkeypatch.setattr(pack, "CHUNK_BYTES", 4096)
    monkeypatch.setattr(pack, "MAX_BLOCKS", 8)


def values(dtype, shape=(13, 7), seed=0) -> np.ndarray:
    ml = WIDTHS[dtype][2]
    return np.random.default_rng(seed).standard_normal(shape).astype(ml)


@pytest.mark.parametrize("dtype", list(WIDTHS), ids=str)
def test_tensor_view_is_an_integer_view_on_the_device(dtype):
    want = values(dtype)
    memory = cuda.to_device(want.view(WIDTHS[dtype][1]))
    value = gtorch.tensor_view(CudaTensorDouble(memory, dtype), "w")
    assert isinstance(value, RetypedDeviceArray) and value.bits is memory
    view = device_view(value)
    assert view.dtype == np.dtype(WIDTHS[dtype][2]) and view.address == memory._ary.ctypes.data
    tensor = as_tensor(value, "w")
    assert tensor.dtype.name == np.dtype(WIDTHS[dtype][2]).name and tensor.shape == want.shape


@pytest.mark.parametrize("dtype", list(WIDTHS), ids=str)
def test_save_and_in_place_restore_round_trip_on_the_device(tmp_path, dtype):
    want = values(dtype, seed=1)
    integer = WIDTHS[dtype][1]
    source = CudaTensorDouble(cuda.to_device(want.view(integer)), dtype)
    path = gpuckpt.Checkpoint(w=gtorch.TorchTensor(source, "w")).write(tmp_path / "ck")
    stored = gpuckpt.load_checkpoint(path)
    assert stored.entry(KEY).dtype.name == np.dtype(WIDTHS[dtype][2]).name  # the checkpoint keeps the dtype
    assert stored.get_tensor(KEY).tobytes() == want.tobytes()
    dest = CudaTensorDouble(cuda.to_device(np.zeros(want.shape, integer)), dtype)
    gpuckpt.Checkpoint(w=gtorch.TorchTensor(dest, "w")).read(path).assert_consumed()
    assert dest.memory.copy_to_host().tobytes() == want.tobytes()  # the tensor's own memory, written on the device


@pytest.mark.parametrize("seed", range(20))
def test_bf16_integer_views_save_exactly_on_the_reordering_fake(seed):
    from gpuckpt.engine.gpu import GpuEngine

    rt = FakeRuntime(seed)
    want = values(torch.bfloat16, (33,), seed)
    bits = rt.array(want.view(np.int16))
    side = rt.stream()  # a training update queued just before the save, on a side stream
    rt.set_current_stream(0, side)
    update = (want.astype(np.float32) + 1).astype(ml_dtypes.bfloat16)
    rt.launch(side, lambda: bits.host.__setitem__(Ellipsis, update.view(np.int16)))
    tensor = as_tensor(RetypedDeviceArray(bits, ml_dtypes.bfloat16), "w")
    plan = build_save_plan([TensorSpec("w", tensor.dtype, tensor.shape, tensor.nbytes)])
    written: dict[int, bytes] = {}
    crcs = GpuEngine(staging_bytes=3 * 1024, runtime=rt).write(
        plan, [tensor], types.SimpleNamespace(write=lambda shard, offset, data: written.update({offset: bytes(data)})))
    data = b"".join(written[k] for k in sorted(written))
    assert data == update.tobytes() and crcs == [crc.masked_crc32c(np.frombuffer(data, np.uint8))]


def test_a_view_of_another_width_is_refused():
    with pytest.raises(gpuckpt.InvalidArgumentError, match="widths differ"):
        device_view(RetypedDeviceArray(cuda.to_device(np.zeros(4, np.int32)), ml_dtypes.bfloat16))
