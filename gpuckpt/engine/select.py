"""Which engine saves or restores: the GPU engine for device tensors, the CPU engine otherwise.

``CheckpointOptions(io_device="cpu")`` (TF's ``experimental_io_device="/cpu:0"``) sends device
tensors through host memory and the CPU engine instead; ``"gpu"`` insists on the GPU engine and
fails clearly when none is usable.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..arrays import DeviceTensor, HostTensor, host_tensor
from ..errors import InvalidArgumentError
from . import cuda

if TYPE_CHECKING:  # the GPU engines import numba; they are imported on first use
    from .gpu import GpuEngine
    from .gpu_restore import RestoreRing


def gpu_usable() -> bool:
    """True when Numba's CUDA (a real device, or the simulator) is importable and available."""
    return cuda.usable()


def wants_gpu(tensors: Sequence[HostTensor | DeviceTensor], io_device: str | None) -> bool:
    """Whether these tensors go through the GPU engine under ``io_device``."""
    has_device = any(isinstance(t, DeviceTensor) for t in tensors)
    if io_device == "cpu" or not has_device:
        return False
    if not gpu_usable():
        if io_device == "gpu":
            raise InvalidArgumentError("io_device='gpu' was requested but no CUDA device is usable "
                                       "(install gpuckpt[gpu] and check the driver)")
        return False
    return True


def to_host(tensor: HostTensor | DeviceTensor, key: str) -> HostTensor:
    """A device tensor copied to host memory (the CPU engine's input); host tensors unchanged."""
    if isinstance(tensor, HostTensor):
        return tensor
    host = tensor.data.copy_to_host().view(tensor.dtype.numpy).reshape(tensor.shape)
    return host_tensor(host, key)


class EngineCache:
    """The engines one Checkpoint keeps between saves, so the GPU engine's pinned staging and
    device arena are allocated once and reused; ``close()`` releases them."""

    def __init__(self, staging_bytes: int | None = None):
        self.staging_bytes = staging_bytes
        self._gpu: GpuEngine | None = None
        self._ring: RestoreRing | None = None

    def gpu(self) -> GpuEngine:
        """The GPU engine, created on first use."""
        if self._gpu is None:
            from .gpu import GpuEngine

            self._gpu = GpuEngine() if self.staging_bytes is None else GpuEngine(self.staging_bytes)
        return self._gpu

    def ring(self, ring_bytes: int | None = None) -> RestoreRing:
        """The GPU restore ring of ``ring_bytes`` (default: ``gpu_restore.DEFAULT_RING_BYTES``), created on
        first use; a restore releases it when it ends (``release_ring``)."""
        from .gpu_restore import DEFAULT_RING_BYTES, RestoreRing

        size = ring_bytes or DEFAULT_RING_BYTES
        if self._ring is None or self._ring.ring_bytes != size:
            if self._ring is not None:
                self._ring.close()
            self._ring = RestoreRing(size)
        return self._ring

    def release_ring(self) -> None:
        """Free the restore ring (a restore runs once in a while; its memory goes back at once)."""
        if self._ring is not None:
            self._ring.close()
            self._ring = None

    def close(self) -> None:
        if self._gpu is not None:
            self._gpu.close()
            self._gpu = None
        if self._ring is not None:
            self._ring.close()
            self._ring = None
