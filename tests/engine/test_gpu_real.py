"""The save ring on a real GPU (skipped elsewhere; bench/gpu_check runs these): the same bytes as the
CPU path for contiguous, strided and bf16 device arrays, and a torch side-stream producer fenced."""

from __future__ import annotations

import numpy as np
import pytest

import gpuckpt
from gpuckpt.engine.select import EngineCache
from gpuckpt.saver import write_tensors
from tests.kernels.test_package import real_gpu_reason

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def real_gpu():
    reason = real_gpu_reason()
    if reason:
        pytest.skip(reason)


def files(prefix) -> tuple[bytes, bytes]:
    return (open(f"{prefix}.index", "rb").read(), open(f"{prefix}.data-00000-of-00001", "rb").read())


def test_ring_saves_the_cpu_paths_bytes(tmp_path):
    import ml_dtypes
    from numba import cuda

    rng = np.random.default_rng(1)
    nhwc = rng.standard_normal((8, 16, 16, 32)).astype(np.float32)
    host = {
        "big": rng.standard_normal(9_000_001).astype(np.float32),  # odd size, several slots with small staging
        "conv": np.ascontiguousarray(nhwc.transpose(0, 3, 1, 2)),
        "b16": rng.standard_normal((333, 7)).astype(ml_dtypes.bfloat16),
        **{f"s{i}": rng.integers(0, 255, 1 + i * 37).astype(np.uint8) for i in range(2000)},
    }
    device = {k: cuda.to_device(v) for k, v in host.items()}
    device["conv"] = cuda.to_device(nhwc).transpose((0, 3, 1, 2))  # channels_last memory
    engines = EngineCache(staging_bytes=24 << 20)
    write_tensors(tmp_path / "gpu", device, engines=engines)
    write_tensors(tmp_path / "gpu2", device, engines=engines)  # cached pointer tables
    write_tensors(tmp_path / "cpu", host)
    assert files(tmp_path / "gpu") == files(tmp_path / "cpu") == files(tmp_path / "gpu2")
    engines.close()


def test_a_torch_side_stream_producer_is_fenced(tmp_path):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA device")
    x = torch.zeros(1 << 24, device="cuda")
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        for _ in range(64):
            x.add_(1.0)  # still queued when the save starts
        gpuckpt.Checkpoint(x=gpuckpt.Variable(x)).write(tmp_path / "ck")
    saved = gpuckpt.load_checkpoint(tmp_path / "ck").get_tensor("x/.ATTRIBUTES/VARIABLE_VALUE")
    assert (saved == 64).all()
