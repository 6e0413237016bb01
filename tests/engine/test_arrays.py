"""Recognising device arrays without touching their memory."""

from __future__ import annotations

import numpy as np

from gpuckpt.arrays import is_device_array, value_spec


class CudaArrayInterface:
    __cuda_array_interface__ = {"shape": (2,), "typestr": "<f4", "data": (0, False), "version": 3}


class DLPackOn:
    def __init__(self, device_type: int):
        self.device_type = device_type

    def __dlpack_device__(self):
        return (self.device_type, 0)


def test_device_arrays_are_recognised() -> None:
    assert is_device_array(CudaArrayInterface())
    assert is_device_array(DLPackOn(2)) and is_device_array(DLPackOn(13))  # CUDA, CUDA managed


def test_host_arrays_are_not() -> None:
    assert not is_device_array(np.zeros(3))  # NumPy has __dlpack_device__ too, on the CPU
    assert not is_device_array(DLPackOn(1)) and not is_device_array(b"bytes") and not is_device_array(3.0)


def test_value_spec_of_host_values() -> None:
    spec = value_spec(np.zeros((2, 3), np.int16))
    assert (spec.dtype.name, spec.shape, spec.on_device) == ("int16", (2, 3), False)
    assert value_spec(b"x").dtype.is_string


class _TorchLikeCudaTensor:
    """Just enough of a CUDA torch.Tensor (bfloat16, channels_last) to describe without a GPU."""

    __module__ = "torch.testing_double"
    is_cuda = True

    def __init__(self, host, device_index, strides_in_elements):
        import types

        self.host, self.shape = host, host.shape
        self.dtype = "torch.bfloat16"
        self.device = types.SimpleNamespace(index=device_index, type="cuda")
        self._strides = strides_in_elements

    def detach(self):
        return self

    def data_ptr(self):
        return self.host.ctypes.data

    def stride(self):
        return self._strides


def test_bf16_and_channels_last_torch_cuda_tensors_are_described_without_copies():
    import ml_dtypes

    from gpuckpt.arrays import as_tensor, device_view, is_device_array

    memory = np.zeros((2, 4, 5, 3), ml_dtypes.bfloat16)  # NHWC memory of an NCHW tensor
    t = _TorchLikeCudaTensor(memory.transpose(0, 3, 1, 2), 1, (60, 1, 15, 3))
    assert is_device_array(t)
    view = device_view(t)
    assert view.address == memory.ctypes.data and view.device == 1 and view.owner is t
    assert view.dtype == np.dtype(ml_dtypes.bfloat16) and view.strides == (120, 2, 30, 6) and not view.contiguous
    tensor = as_tensor(t, "w")
    assert tensor.dtype.name == "bfloat16" and tensor.shape == (2, 3, 4, 5) and tensor.nbytes == memory.nbytes
