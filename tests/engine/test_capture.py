"""Snapshots for asynchronous saves: private copies of every kind of value, in reused buffers."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from gpuckpt.engine.capture import ALIGN, CapturePool


def values() -> dict[str, object]:
    rng = np.random.default_rng(5)
    return {
        "f32": rng.standard_normal((7, 3)).astype(np.float32),
        "bf16": rng.standard_normal(5).astype(ml_dtypes.bfloat16),
        "scalar": np.int64(42),
        "empty": np.zeros((0, 4), np.float64),
        "strided": np.arange(40, dtype=np.int16).reshape(5, 8)[:, ::3],
        "big_endian": np.arange(6, dtype=">i4"),
        "strings": np.array([b"a", b"", b"ccc"], dtype=object),
        "graph": b"object graph bytes",
    }


def test_every_kind_of_value_is_copied_exactly() -> None:
    original = values()
    captured = CapturePool().capture(original)
    assert list(captured.tensors) == list(original)
    for key, value in original.items():
        got = captured.tensors[key]
        if isinstance(value, bytes):
            assert got == value
        else:
            assert np.asarray(got).dtype == np.asarray(value).dtype and np.array_equal(got, value), key
    numeric = [v for v in original.values() if isinstance(v, (np.ndarray, np.generic)) and np.asarray(v).dtype != object]
    assert captured.nbytes == sum(-(-np.asarray(v).nbytes // ALIGN) * ALIGN for v in numeric)


def test_copies_do_not_follow_later_changes() -> None:
    original = values()
    captured = CapturePool().capture(original)
    original["f32"][:] = 0
    original["strings"][0] = b"changed"
    assert captured.tensors["f32"].any()
    assert captured.tensors["strings"][0] == b"a"


def test_buffers_are_reused_and_replaced_when_too_small() -> None:
    pool = CapturePool()
    first = pool.capture({"x": np.ones(1000, np.float32)})
    pool.release(first)
    second = pool.capture({"x": np.ones(10, np.float32)})
    assert second.buffer is first.buffer
    pool.release(second)
    third = pool.capture({"x": np.ones(5000, np.float32)})
    assert third.buffer is not first.buffer and third.buffer.nbytes >= 20_000


def test_two_captures_in_flight_use_two_buffers() -> None:
    pool = CapturePool()
    a = pool.capture({"x": np.full(100, 1.0)})
    b = pool.capture({"x": np.full(100, 2.0)})
    assert a.buffer is not b.buffer
    assert (a.tensors["x"] == 1).all() and (b.tensors["x"] == 2).all()


def test_device_arrays_are_snapshot_on_the_device_when_there_is_room() -> None:
    cuda = pytest.importorskip("numba.cuda")
    from gpuckpt.engine.capture import DeviceSnapshot

    host = np.arange(33, dtype=np.float64)
    device = cuda.to_device(host)
    captured = CapturePool().capture({"d": device, "h": np.ones(3, np.int8)})
    assert not captured.pinned and len(captured.device_buffers) == 1
    snap = captured.tensors["d"]
    assert isinstance(snap, DeviceSnapshot) and snap.dtype == host.dtype and snap.shape == host.shape
    device.copy_to_device(np.zeros(33))
    assert np.array_equal(snap.copy_to_host(), host)


def test_device_arrays_go_to_pinned_host_memory_when_the_device_is_full(monkeypatch) -> None:
    cuda = pytest.importorskip("numba.cuda")
    import gpuckpt.engine.capture as capture
    from gpuckpt.engine import cuda as runtime

    monkeypatch.setattr(runtime.NumbaRuntime, "free_device_bytes", lambda self: capture.SPARE_BYTES)
    host = np.arange(33, dtype=np.float64)
    device = cuda.to_device(host)
    strided = cuda.to_device(np.arange(24, dtype=np.int32).reshape(4, 6))[:, ::2]
    captured = CapturePool().capture({"d": device, "s": strided, "h": np.ones(3, np.int8)})
    assert captured.pinned and not captured.device_buffers
    assert np.array_equal(np.asarray(captured.tensors["d"]), host)  # reading waits for the copy
    assert np.array_equal(np.asarray(captured.tensors["s"]), np.arange(24, dtype=np.int32).reshape(4, 6)[:, ::2])
    device.copy_to_device(np.zeros(33))
    assert np.array_equal(np.asarray(captured.tensors["d"]), host)
