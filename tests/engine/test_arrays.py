"""Recognising device arrays without touching their memory."""

from __future__ import annotations

import numpy as np

from gpuckpt.arrays import describe, is_device_array


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


def test_describe_host_values() -> None:
    spec = describe(np.zeros((2, 3), np.int16))
    assert (spec.dtype.name, spec.shape, spec.on_device) == ("int16", (2, 3), False)
    assert describe(b"x").dtype.is_string
