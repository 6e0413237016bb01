"""The GPU restore ring on Numba's simulator: device memory bounded by the ring, reads in place,
verification on the device before bytes reach a variable, and what a failure leaves."""

from __future__ import annotations

import numpy as np
import pytest

import gpuckpt

cuda = pytest.importorskip("numba.cuda")
pack = pytest.importorskip("gpuckpt.kernels.pack")

RING = 8192


@pytest.fixture(autouse=True)
def quick_kernels(monkeypatch):
    monkeypatch.setattr(pack, "CHUNK_BYTES", 4096)
    monkeypatch.setattr(pack, "MAX_BLOCKS", 8)


@pytest.fixture
def device_allocations(monkeypatch):
    """Bytes of every device allocation made through numba.cuda (device_array and to_device)."""
    sizes: list[int] = []
    real_array, real_to_device = cuda.device_array, cuda.to_device

    def device_array(shape, dtype=np.float64, *args, **kwargs):
        sizes.append(int(np.prod(shape)) * np.dtype(dtype).itemsize)
        return real_array(shape, dtype, *args, **kwargs)

    def to_device(obj, *args, **kwargs):
        sizes.append(int(np.asarray(obj).nbytes))
        return real_to_device(obj, *args, **kwargs)

    monkeypatch.setattr(cuda, "device_array", device_array)
    monkeypatch.setattr(cuda, "to_device", to_device)
    return sizes


def _values() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    return {"big": rng.standard_normal(5000).astype(np.float32),  # 20 KB: spans several slots
            "mid": rng.integers(0, 100, 700).astype(np.int64),
            "small": np.arange(7, dtype=np.float16), "empty": np.zeros((0, 3), np.float32)}


def test_device_memory_held_is_the_ring_whatever_the_checkpoint(tmp_path, device_allocations) -> None:
    values = _values()
    path = gpuckpt.Checkpoint(**{k: gpuckpt.Variable(v) for k, v in values.items()}).write(tmp_path / "ck")
    device = {k: cuda.to_device(np.zeros_like(v)) for k, v in values.items()}
    variables = {k: gpuckpt.Variable(d) for k, d in device.items()}
    device_allocations.clear()
    options = gpuckpt.CheckpointOptions(restore_ring_bytes=RING)
    gpuckpt.Checkpoint(**variables).read(path, options=options).assert_consumed()
    for k, v in values.items():
        np.testing.assert_array_equal(device[k].copy_to_host(), v)  # in the variables' own memory
    total = sum(v.nbytes for v in values.values())
    big = [n for n in device_allocations if n > 1024]  # the kernels' small per-launch tables aside
    assert sum(big) <= RING < total, (big, total)
    assert max(len(big), 1) <= 2  # the ring's two slots, allocated once per restore and released after it


def test_a_corrupt_tensor_inside_one_slot_never_reaches_its_variable(tmp_path) -> None:
    values = {"a": np.arange(100, dtype=np.float32), "b": np.arange(50, dtype=np.int64)}
    path = gpuckpt.Checkpoint(**{k: gpuckpt.Variable(v) for k, v in values.items()}).write(tmp_path / "ck")
    data = tmp_path / "ck.data-00000-of-00001"
    raw = bytearray(data.read_bytes())
    raw[values["a"].nbytes + 9] ^= 0x20  # inside "b"
    data.write_bytes(bytes(raw))
    device = {k: cuda.to_device(np.full_like(v, 7)) for k, v in values.items()}
    with pytest.raises(gpuckpt.PartialRestoreError, match="'b/.ATTRIBUTES/VARIABLE_VALUE'.*verified on the GPU") as info:
        gpuckpt.Checkpoint(**{k: gpuckpt.Variable(d) for k, d in device.items()}).read(
            path, options=gpuckpt.CheckpointOptions(restore_ring_bytes=RING))
    assert info.value.restored == ()  # one slot: verified as a whole before anything is copied
    assert all((d.copy_to_host() == 7).all() for d in device.values())


def test_a_corrupt_tensor_spanning_slots_is_zeroed_not_left_unverified(tmp_path) -> None:
    values = _values()
    path = gpuckpt.Checkpoint(**{k: gpuckpt.Variable(v) for k, v in values.items()}).write(tmp_path / "ck")
    entry = gpuckpt.CheckpointReader(path).entry("big/.ATTRIBUTES/VARIABLE_VALUE")
    data = tmp_path / "ck.data-00000-of-00001"
    raw = bytearray(data.read_bytes())
    raw[entry.offset + entry.size - 10] ^= 0x01  # in the last slot of "big"
    data.write_bytes(bytes(raw))
    device = {k: cuda.to_device(np.full_like(v, 5)) for k, v in values.items()}
    with pytest.raises(gpuckpt.PartialRestoreError) as info:
        gpuckpt.Checkpoint(**{k: gpuckpt.Variable(d) for k, d in device.items()}).read(
            path, options=gpuckpt.CheckpointOptions(restore_ring_bytes=RING))
    assert "big/.ATTRIBUTES/VARIABLE_VALUE" in info.value.failed
    assert (device["big"].copy_to_host() == 0).all()


def test_host_variables_restore_device_checkpoints_and_the_reverse(tmp_path) -> None:
    values = _values()
    on_device = gpuckpt.Checkpoint(**{k: gpuckpt.Variable(cuda.to_device(v)) for k, v in values.items()})
    path = on_device.write(tmp_path / "from-device")
    host = {k: gpuckpt.Variable(np.zeros_like(v)) for k, v in values.items()}
    gpuckpt.Checkpoint(**host).read(path).assert_consumed()
    for k, v in values.items():
        np.testing.assert_array_equal(host[k].numpy(), v)
    path = gpuckpt.Checkpoint(**host).write(tmp_path / "from-host")
    device = {k: cuda.to_device(np.zeros_like(v)) for k, v in values.items()}
    gpuckpt.Checkpoint(**{k: gpuckpt.Variable(d) for k, d in device.items()}).read(
        path, options=gpuckpt.CheckpointOptions(restore_ring_bytes=RING)).assert_consumed()
    for k, v in values.items():
        np.testing.assert_array_equal(device[k].copy_to_host(), v)
