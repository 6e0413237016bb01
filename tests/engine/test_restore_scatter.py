"""The restore ring assigns each verified slot with one scatter launch (simulator), whatever the tensor
count; a destination on another GPU than the ring's is copied instead (a kernel could not write there
without peer access)."""

from __future__ import annotations

import numpy as np
import pytest

from gpuckpt.engine.select import EngineCache
from gpuckpt.saver import write_tensors
from tests.engine.test_gpu_engine import restore_through_ring

cuda = pytest.importorskip("numba.cuda")
pack = pytest.importorskip("gpuckpt.kernels.pack")
gpu_restore = pytest.importorskip("gpuckpt.engine.gpu_restore")
gather = pytest.importorskip("gpuckpt.kernels.gather")


@pytest.fixture(autouse=True)
def quick_kernels(monkeypatch):
    monkeypatch.setattr(pack, "CHUNK_BYTES", 4096)
    monkeypatch.setattr(pack, "MAX_BLOCKS", 8)


def tensors() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(4)
    out = {f"t{i}": rng.integers(0, 256, i % 13, dtype=np.uint8) for i in range(300)}
    out["big"] = rng.standard_normal(3000).astype(np.float32)  # 12 KB: split over slots
    return out


def test_one_scatter_per_slot_for_hundreds_of_tensors(tmp_path, monkeypatch):
    values = tensors()
    write_tensors(tmp_path / "ck", values)
    engines = EngineCache()
    ring = engines.ring(2 * 4096)
    batches: list = []
    real = gpu_restore.slot_batches
    monkeypatch.setattr(gpu_restore, "slot_batches", lambda *a: batches.extend(real(*a)) or list(batches))
    restored = restore_through_ring(tmp_path / "ck", values, ring)
    assert all(restored[k].copy_to_host().tobytes() == v.tobytes() for k, v in values.items())
    assert len(batches) >= 3 and ring.launches == sum(1 for b in batches if any(p.nbytes for p in b))
    engines.close()


def test_a_destination_on_another_gpu_is_copied_not_scattered(tmp_path, monkeypatch):
    values = {"a": np.arange(40, dtype=np.float32), "b": np.arange(9, dtype=np.int64), "c": np.ones(5, np.int8)}
    write_tensors(tmp_path / "ck", values)
    engines = EngineCache()
    ring = engines.ring(8192)
    elsewhere: list[int] = []
    real = gpu_restore.device_of_pointer

    def owner(address: int) -> int:  # pretend "b" lives on GPU 1
        if elsewhere and address == elsewhere[0]:
            return 1
        return real(address)

    monkeypatch.setattr(gpu_restore, "device_of_pointer", owner)
    original = cuda.device_array

    def recording(shape, dtype=np.float64, *args, **kwargs):
        arr = original(shape, dtype, *args, **kwargs)
        if np.dtype(dtype) == np.int64 and shape == (9,):
            from gpuckpt.kernels import _launch

            elsewhere.append(_launch.address(arr))
        return arr

    monkeypatch.setattr(cuda, "device_array", recording)
    scattered: list[int] = []
    launch = gather.launch_scatter

    def recording_scatter(table_dev, nrows, src, stream):
        scattered.extend(int(a) for a in table_dev.copy_to_host()[:nrows, 0])
        launch(table_dev, nrows, src, stream)

    monkeypatch.setattr(gather, "launch_scatter", recording_scatter)
    restored = restore_through_ring(tmp_path / "ck", values, ring)
    assert elsewhere and all(restored[k].copy_to_host().tobytes() == v.tobytes() for k, v in values.items())
    assert ring.launches == 1 and len(scattered) == 2 and elsewhere[0] not in scattered  # "b" by a copy
    engines.close()
