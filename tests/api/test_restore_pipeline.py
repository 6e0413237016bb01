"""The restore pipeline: in-place reads, files closed on return, no reference cycles, values kept for later."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import warnings
import weakref
from pathlib import Path

import numpy as np
import pytest

import gpuckpt
from gpuckpt import session
from gpuckpt.restorer import UnrestoredValuesWarning


def _fds() -> list[str]:
    out = []
    for name in os.listdir("/proc/self/fd"):
        try:
            out.append(os.readlink(f"/proc/self/fd/{name}"))
        except OSError:
            pass
    return out


def test_values_are_read_into_the_variables_own_memory(tmp_path, monkeypatch) -> None:
    path = gpuckpt.Checkpoint(a=gpuckpt.Variable(np.arange(1000, dtype=np.float32)),
                              b=gpuckpt.Variable(np.int64(7))).write(tmp_path / "ck")
    a, b = gpuckpt.Variable(np.zeros(1000, np.float32)), gpuckpt.Variable(np.int64(0))
    arrays = (a.value(), b.value())
    fresh = []
    real = session.aligned_empty
    monkeypatch.setattr(session, "aligned_empty", lambda *args: fresh.append(args) or real(*args))
    gpuckpt.Checkpoint(a=a, b=b).read(path).assert_consumed()
    assert a.value() is arrays[0] and b.value() is arrays[1]
    np.testing.assert_array_equal(a.numpy(), np.arange(1000, dtype=np.float32))
    assert int(b.numpy()) == 7
    assert fresh == [], "no new array per variable"


def test_restores_in_an_eval_loop_hold_no_file_while_a_manager_deletes_old_checkpoints(tmp_path) -> None:
    model = gpuckpt.Module()
    model.w = gpuckpt.Variable(np.zeros(64, np.float32))
    optimizer = gpuckpt.Module()
    optimizer.m = gpuckpt.Variable(np.zeros(64, np.float32))
    manager = gpuckpt.CheckpointManager(gpuckpt.Checkpoint(model=model, optimizer=optimizer), tmp_path, max_to_keep=2)
    evaluated = gpuckpt.Module()
    evaluated.w = gpuckpt.Variable(np.zeros(64, np.float32))
    eval_ckpt = gpuckpt.Checkpoint(model=evaluated)
    before = _fds()
    for step in range(10):
        model.w.assign(np.full(64, step, np.float32))
        path = manager.save()
        eval_ckpt.restore(path).expect_partial()  # the optimizer's values wait, in memory
        np.testing.assert_array_equal(evaluated.w.numpy(), np.full(64, step, np.float32))
        opened = [f for f in _fds() if str(tmp_path) in f]
        assert opened == [], opened
    deleted = [f for f in _fds() if f.endswith("(deleted)") and f not in before]
    assert deleted == [], "a deleted checkpoint file is still held"
    assert len(_fds()) <= len(before) + 1  # the manager may hold its directory lock
    assert len(manager.checkpoints) == 2


def test_deferred_values_are_restored_after_the_files_are_gone(tmp_path) -> None:
    path = gpuckpt.Checkpoint(v=gpuckpt.Variable([1.0, 2.0])).write(tmp_path / "ck")
    ckpt = gpuckpt.Checkpoint()
    status = ckpt.read(path)
    for name in os.listdir(tmp_path):
        os.remove(tmp_path / name)
    ckpt.v = gpuckpt.Variable([0.0, 0.0])
    np.testing.assert_array_equal(ckpt.v.numpy(), [1.0, 2.0])
    status.assert_consumed()


def test_a_restored_model_dies_with_its_last_reference_without_the_collector(tmp_path) -> None:
    path = gpuckpt.Checkpoint(model=gpuckpt.Module(), v=gpuckpt.Variable(1.0)).write(tmp_path / "ck")
    gc.disable()
    try:
        model = gpuckpt.Module()
        ckpt = gpuckpt.Checkpoint(model=model)  # v waits on ckpt: ckpt -> pending value -> restore
        status = ckpt.read(path)
        status.assert_existing_objects_matched()
        alive = weakref.ref(model), weakref.ref(ckpt)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UnrestoredValuesWarning)
            del model, ckpt, status
            assert alive[0]() is None and alive[1]() is None
        assert [w for w in caught if w.category is UnrestoredValuesWarning], "the warning fires at once"
    finally:
        gc.enable()


def test_expect_partial_silences_the_warning_deterministically(tmp_path) -> None:
    path = gpuckpt.Checkpoint(a=gpuckpt.Variable(1.0), b=gpuckpt.Variable(2.0)).write(tmp_path / "ck")
    gc.disable()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UnrestoredValuesWarning)
            gpuckpt.Checkpoint(a=gpuckpt.Variable(0.0)).read(path).expect_partial()
        assert not [w for w in caught if w.category is UnrestoredValuesWarning]
    finally:
        gc.enable()


def test_a_cpu_restore_imports_nothing_of_cuda(tmp_path) -> None:
    path = gpuckpt.Checkpoint(v=gpuckpt.Variable(np.ones(8, np.float32))).write(tmp_path / "ck")
    code = ("import sys, numpy as np, gpuckpt\n"
            f"c = gpuckpt.Checkpoint(v=gpuckpt.Variable(np.zeros(8, np.float32)))\n"
            f"c.read({path!r}).assert_consumed()\n"
            "assert float(c.v.numpy().sum()) == 8.0\n"
            "print(sorted(m for m in sys.modules if m.startswith(('numba', 'cupy'))))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_a_sliced_checkpoint_restores_into_a_variable_in_place(tmp_path) -> None:
    from gpuckpt.format import bundle, crc
    from gpuckpt.format.bundle import BundleEntry, Extent
    from gpuckpt.format.dtypes import BY_NAME
    from gpuckpt.format.slices import slice_key

    whole = np.arange(12, dtype=np.float32).reshape(4, 3)
    top, bottom = whole[:1].tobytes(), whole[1:].tobytes()
    prefix = str(tmp_path / "ck")
    with open(prefix + ".data-00000-of-00001", "wb") as f:
        f.write(top + bottom)
    f32 = BY_NAME["float32"]
    extents = ((Extent(0, 1), Extent(0, None)), (Extent(1, 3), Extent(0, None)))
    entries = {"w": BundleEntry(f32, (4, 3), slices=extents),
               slice_key("w", extents[0]): BundleEntry(f32, (1, 3), 0, 0, 12, crc.masked_crc32c(top)),
               slice_key("w", extents[1]): BundleEntry(f32, (3, 3), 0, 12, 36, crc.masked_crc32c(bottom))}
    with open(prefix + ".index", "wb") as f:
        f.write(bundle.build_index(1, entries))
    out = np.zeros((4, 3), np.float32)
    with gpuckpt.CheckpointReader(prefix) as reader:
        reader.read_into("w", out)
        np.testing.assert_array_equal(reader.get_tensor("w"), whole)
    np.testing.assert_array_equal(out, whole)


@pytest.mark.parametrize("atomic", [False, True])
def test_a_failed_read_names_no_computed_checksum(tmp_path, atomic) -> None:
    path = gpuckpt.Checkpoint(v=gpuckpt.Variable(np.arange(4, dtype=np.float32))).write(tmp_path / "ck")
    data = tmp_path / "ck.data-00000-of-00001"
    raw = bytearray(data.read_bytes())
    raw[0] ^= 1
    data.write_bytes(bytes(raw))
    entry = gpuckpt.CheckpointReader(path).entry("v/.ATTRIBUTES/VARIABLE_VALUE")
    v = gpuckpt.Variable(np.full(4, 9, np.float32))
    with pytest.raises(gpuckpt.DataLossError) as info:
        gpuckpt.Checkpoint(v=v).read(path, options=gpuckpt.CheckpointOptions(atomic_restore=atomic))
    message = str(info.value)
    assert f"{entry.crc32c:#010x}" in message and "data-00000-of-00001" in message
    assert "computed" not in message
    np.testing.assert_array_equal(v.numpy(), np.full(4, 9, np.float32) if atomic else np.zeros(4, np.float32))


def test_restore_or_initialize_falls_back_to_the_newest_checkpoint_that_verifies(tmp_path) -> None:
    v = gpuckpt.Variable(np.zeros(16, np.float32))
    manager = gpuckpt.CheckpointManager(gpuckpt.Checkpoint(v=v), tmp_path, max_to_keep=3)
    for step in (1, 2, 3):
        v.assign(np.full(16, step, np.float32))
        manager.save()
    newest = manager.latest_checkpoint
    data = Path(newest + ".data-00000-of-00001")
    raw = bytearray(data.read_bytes())
    raw[3] ^= 0x10  # inside v
    data.write_bytes(bytes(raw))
    resumed = gpuckpt.Variable(np.zeros(16, np.float32))
    again = gpuckpt.CheckpointManager(gpuckpt.Checkpoint(v=resumed), tmp_path, max_to_keep=3)
    with pytest.warns(session.SkippedCheckpointWarning, match=rf"{newest} failed verification"):
        assert again.restore_or_initialize() == str(tmp_path / "ckpt-2")
    np.testing.assert_array_equal(resumed.numpy(), np.full(16, 2, np.float32))


def test_restore_or_initialize_raises_when_no_checkpoint_verifies(tmp_path) -> None:
    v = gpuckpt.Variable(np.zeros(4, np.float32))
    manager = gpuckpt.CheckpointManager(gpuckpt.Checkpoint(v=v), tmp_path, max_to_keep=1)
    path = manager.save()
    data = Path(path + ".data-00000-of-00001")
    raw = bytearray(data.read_bytes())
    raw[0] ^= 1
    data.write_bytes(bytes(raw))
    initialized = []
    again = gpuckpt.CheckpointManager(gpuckpt.Checkpoint(v=v), tmp_path, max_to_keep=1,
                                      init_fn=lambda: initialized.append(1))
    with pytest.warns(session.SkippedCheckpointWarning), pytest.raises(gpuckpt.DataLossError):
        again.restore_or_initialize()
    assert initialized == []


def test_torch_tensors_are_read_into_their_own_memory(tmp_path, monkeypatch) -> None:
    torch = pytest.importorskip("torch")
    saved = torch.nn.Linear(4, 3)
    path = gpuckpt.Checkpoint(model=saved).write(tmp_path / "ck")
    live = torch.nn.Linear(4, 3)
    pointers = (live.weight.data_ptr(), live.bias.data_ptr())
    fresh = []
    real = session.aligned_empty
    monkeypatch.setattr(session, "aligned_empty", lambda *args: fresh.append(args) or real(*args))
    gpuckpt.Checkpoint(model=live).read(path).assert_consumed()
    assert (live.weight.data_ptr(), live.bias.data_ptr()) == pointers and fresh == []
    assert torch.equal(live.weight, saved.weight) and torch.equal(live.bias, saved.bias)


def test_repeated_restores_hold_the_values_of_one_restore_for_an_object_never_created(tmp_path) -> None:
    saved = gpuckpt.Checkpoint(model=gpuckpt.Module(), optimizer=gpuckpt.Module())
    saved.model.w = gpuckpt.Variable(np.zeros(4, np.float32))
    saved.optimizer.m = gpuckpt.Variable(np.ones(1 << 16, np.float32))
    path = saved.write(tmp_path / "ck")
    evaluated = gpuckpt.Checkpoint(model=gpuckpt.Module())
    evaluated.model.w = gpuckpt.Variable(np.zeros(4, np.float32))
    restores = []
    for _ in range(5):
        evaluated.read(path).expect_partial()  # "optimizer" waits on the root, in memory
        restores.append(weakref.ref(evaluated._deferred_state().by_name["optimizer"][0].matching))
    assert len(evaluated._deferred_state().by_name["optimizer"]) == 1
    assert [r() is not None for r in restores] == [False] * 4 + [True]  # older restores' values are freed
    evaluated.optimizer = gpuckpt.Module()
    evaluated.optimizer.m = gpuckpt.Variable(np.zeros(1 << 16, np.float32))
    np.testing.assert_array_equal(evaluated.optimizer.m.numpy(), np.ones(1 << 16, np.float32))


def test_scratch_reads_of_sliced_tensors_are_bounded(tmp_path, monkeypatch) -> None:
    """The slices (12 and 36 bytes) are read in groups of at most SCRATCH_BYTES, one after the other."""
    from gpuckpt.engine import cpu
    from gpuckpt.storage.reader import FileSystemReader

    monkeypatch.setattr(cpu, "SCRATCH_BYTES", 40)
    calls = []
    real_read = FileSystemReader.read_verified
    monkeypatch.setattr(FileSystemReader, "read_verified",
                        lambda self, targets, **kw: calls.append([t.length for t in targets])
                        or real_read(self, targets, **kw))
    test_a_sliced_checkpoint_restores_into_a_variable_in_place(tmp_path)
    assert calls == [[12], [36], [12], [36]]  # read_into, then get_tensor


def test_a_dropped_reader_closes_its_files_and_joins_no_thread(tmp_path) -> None:
    """Issue 13.4: nothing that can block runs when a reader is collected (the threads are process-wide)."""
    import threading

    from gpuckpt.reader import CheckpointReader

    path = gpuckpt.Checkpoint(**{f"v{i}": gpuckpt.Variable(np.full(1 << 20, i, np.float32)) for i in range(4)}
                              ).write(tmp_path / "ck")
    assert "__del__" not in vars(CheckpointReader)
    reader = CheckpointReader(path)
    out = [np.zeros(1 << 20, np.float32) for _ in range(4)]
    reader.read_tensors([(f"v{i}/.ATTRIBUTES/VARIABLE_VALUE", o) for i, o in enumerate(out)])  # uses the pool
    threads = {t.ident for t in threading.enumerate() if t.name.startswith("gpuckpt-read")}
    assert threads
    gc.disable()
    try:
        del reader  # no close(): the finalizer closes descriptors only
        assert not [f for f in _fds() if str(tmp_path) in f]
    finally:
        gc.enable()
    assert threads <= {t.ident for t in threading.enumerate()}  # the pool lives on, nothing was joined


def test_a_strict_restore_that_refuses_closes_its_files_before_raising(tmp_path) -> None:
    torch = pytest.importorskip("torch")
    path = gpuckpt.Checkpoint(model=torch.nn.Linear(3, 2)).write(tmp_path / "ck")
    with pytest.raises(gpuckpt.UnmatchedStateError) as raised:
        gpuckpt.Checkpoint(model=torch.nn.Linear(3, 2, bias=False)).read(path)
    assert raised.traceback  # its frames (and the session in them) are still alive here
    assert not [fd for fd in _fds() if fd.startswith(str(tmp_path))]
