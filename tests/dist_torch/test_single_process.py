"""The distributed pipeline as a one-rank job (``SingleProcess``: no MPI, no torch.distributed), and the
communicator seam's contract, in this process."""

from __future__ import annotations

import os

import numpy as np
import pytest

import gpuckpt
from gpuckpt.distributed import (
    Communicator,
    DistributedCheckpoint,
    DistributedCheckpointManager,
    DistributedError,
    Sharded,
    SingleProcess,
    layout_of,
)
from gpuckpt.distributed.comm import Failure, Group, agree
from gpuckpt.storage.filesystem import PosixIO


def _model(fill: float) -> gpuckpt.Module:
    model = gpuckpt.Module()
    model.w = gpuckpt.Variable(np.full((4, 3), fill, np.float32))
    model.names = gpuckpt.Variable(np.array([b"a", b"bc"], dtype=object))
    return model


class Failing(PosixIO):
    def pwrite(self, fd, data, offset):
        raise OSError(5, "injected I/O error")


def test_one_rank_saves_restores_and_names_the_checkpoint(tmp_path):
    dist = DistributedCheckpoint(gpuckpt.Checkpoint(model=_model(2.0)), comm=SingleProcess(timeout=30))
    path = dist.save(tmp_path / "ckpt")
    assert path == str(tmp_path / "ckpt-1") and gpuckpt.latest_checkpoint(tmp_path) == path
    assert sorted(os.listdir(tmp_path)) == ["checkpoint", "ckpt-1.data-00000-of-00001", "ckpt-1.index"]
    restored = _model(0.0)
    result = DistributedCheckpoint(gpuckpt.Checkpoint(model=restored), comm=SingleProcess()).restore(tmp_path)
    assert np.all(restored.w.numpy() == 2.0) and restored.names.numpy().tolist() == [b"a", b"bc"]
    assert result.unused_keys == () and len(result.restored_keys) == 3  # w, names, save_counter
    # and a plain single-process Checkpoint reads it
    again = _model(0.0)
    gpuckpt.Checkpoint(model=again).restore(path).assert_consumed()
    assert np.all(again.w.numpy() == 2.0)


def test_async_saves_run_on_the_shared_runner_and_a_failure_frees_the_number(tmp_path):
    model = _model(1.0)
    dist = DistributedCheckpoint(gpuckpt.Checkpoint(model=model), comm=SingleProcess(timeout=30))
    path = dist.save(tmp_path / "ckpt", gpuckpt.CheckpointOptions(enable_async=True))
    model.w.assign(np.full((4, 3), 9.0, np.float32))  # after the snapshot: not in ckpt-1
    assert dist.last_save.result(timeout=60) == path
    with gpuckpt.load_checkpoint(path) as reader:
        assert np.all(reader.get_tensor("model/w/.ATTRIBUTES/VARIABLE_VALUE") == 1.0)
    dist.save(tmp_path / "ckpt", gpuckpt.CheckpointOptions(enable_async=True), io=Failing())
    with pytest.raises(DistributedError, match="could not write data file .*Input/output error"):
        dist.sync()
    assert int(dist.checkpoint.save_counter.numpy()) == 1
    assert gpuckpt.latest_checkpoint(tmp_path) == path and not (tmp_path / "ckpt-2.index").exists()
    assert dist.save(tmp_path / "ckpt") == str(tmp_path / "ckpt-2")  # the freed number is used again
    dist.close()


def test_the_manager_keeps_the_newest_and_restores_the_latest(tmp_path):
    dist = DistributedCheckpoint(gpuckpt.Checkpoint(model=_model(0.0)), comm=SingleProcess(timeout=30))
    manager = DistributedCheckpointManager(dist, tmp_path, max_to_keep=2)
    assert manager.restore_or_initialize() is None
    for value in (1.0, 2.0, 3.0):
        dist.checkpoint.model.w.assign(np.full((4, 3), value, np.float32))
        manager.save(options=gpuckpt.CheckpointOptions(enable_async=value == 3.0))
    manager.sync()
    assert manager.checkpoints == [str(tmp_path / "ckpt-2"), str(tmp_path / "ckpt-3")]
    assert not (tmp_path / "ckpt-1.index").exists() and manager.latest_checkpoint == str(tmp_path / "ckpt-3")
    fresh = DistributedCheckpoint(gpuckpt.Checkpoint(model=_model(0.0)), comm=SingleProcess())
    DistributedCheckpointManager(fresh, tmp_path, max_to_keep=2).restore_or_initialize()
    assert np.all(fresh.checkpoint.model.w.numpy() == 3.0) and int(fresh.checkpoint.save_counter.numpy()) == 3


def test_a_failing_decision_reaches_every_rank_as_a_failure():
    sent = []

    class Root(SingleProcess):
        size = 3

        def collect_reports(self, round, deadline):
            return {1: "one"}, {2: "no report within 1 s"}

        def send_verdict(self, verdict, round):
            sent.append(verdict)

    def decide(reports, missing):
        assert reports == {0: "zero", 1: "one"} and missing == {2: "no report within 1 s"}
        raise OSError("disk full")

    with pytest.raises(DistributedError, match="disk full") as caught:
        agree(Root(), "zero", decide, what="save")
    assert caught.value.ranks == (0,) and sent == [Failure((0,), "rank 0: OSError: disk full")]


def test_every_communicator_meets_the_protocol():
    assert isinstance(SingleProcess(), Communicator)
    for name in ("next_round", "send_report", "collect_reports", "send_verdict", "receive_verdict", "bcast_arrays",
                 "duplicate", "close", "agree", "barrier"):
        assert callable(getattr(Group, name)), name
    torch_comm = pytest.importorskip("gpuckpt.distributed.torch_comm")
    for name in ("next_round", "send_report", "collect_reports", "send_verdict", "receive_verdict", "bcast_arrays",
                 "duplicate", "close", "agree", "barrier"):
        assert callable(getattr(torch_comm.TorchCommunicator, name)), name


def test_a_trackable_may_report_its_own_layout():
    class Block(gpuckpt.Variable):
        def _checkpoint_layout(self):
            return Sharded((8, 3), (4, 0), (4, 3), replica=1, replicas=2)

    block = Block(np.zeros((4, 3), np.float32))
    assert layout_of(block) == Sharded((8, 3), (4, 0), (4, 3), replica=1, replicas=2)
    with pytest.raises(gpuckpt.errors.InvalidArgumentError, match="replica 2 is not in"):
        Sharded((8, 3), (4, 0), (4, 3), replica=2, replicas=2)


def test_replicas_of_a_block_write_it_once():
    from gpuckpt.distributed.save import Tensor, local_tensors

    tensors = [Tensor(f"k{i}", np.zeros((2, 3), np.float32), Sharded((4, 3), (0, 0), (2, 3), replica=r, replicas=2))
               for i in range(8) for r in (0, 1)]
    writers = {}
    for t in tensors:
        if local_tensors([t], 0, 1):
            writers.setdefault(t.key, []).append(t.layout.replica)
    assert sorted(writers) == [f"k{i}" for i in range(8)] and all(len(v) == 1 for v in writers.values())
    assert {v[0] for v in writers.values()} == {0, 1}  # spread over the replicas


def _saved_with_head(tmp_path) -> str:
    model = _model(2.0)
    model.head = gpuckpt.Module()
    model.head.b = gpuckpt.Variable(np.arange(12, dtype=np.float32).reshape(4, 3))
    return DistributedCheckpoint(gpuckpt.Checkpoint(model=model), comm=SingleProcess()).save(tmp_path / "ckpt")


def test_values_of_objects_created_after_the_restore_arrive_when_they_are_attached(tmp_path):
    from gpuckpt.distributed import set_layout

    path = _saved_with_head(tmp_path)
    model = _model(0.0)
    result = DistributedCheckpoint(gpuckpt.Checkpoint(model=model), comm=SingleProcess()).restore(path)
    assert result.deferred_keys == ("model/head/b/.ATTRIBUTES/VARIABLE_VALUE",) and result.unused_keys == ()
    assert np.all(model.w.numpy() == 2.0)
    head = gpuckpt.Module()
    head.b = set_layout(gpuckpt.Variable(np.zeros((2, 3), np.float32)), Sharded((4, 3), (2, 0), (2, 3)))
    model.head = head  # created after the restore, holding rows 2:4 of the saved (4, 3) tensor
    np.testing.assert_array_equal(head.b.numpy(), np.arange(6, 12, dtype=np.float32).reshape(2, 3))
    # a layout that does not fit the saved tensor is an error naming the key
    model = _model(0.0)
    DistributedCheckpoint(gpuckpt.Checkpoint(model=model), comm=SingleProcess()).restore(path)
    wrong = gpuckpt.Module()
    wrong.b = gpuckpt.Variable(np.zeros((5, 3), np.float32))
    with pytest.raises(gpuckpt.CheckpointError, match="model/head/b"):
        model.head = wrong


def _flip_byte(path: str, shard, key: str) -> None:
    with gpuckpt.load_checkpoint(path) as reader:
        entry = reader.entry(key)
    data = bytearray(shard.read_bytes())
    data[entry.offset] ^= 0x01
    shard.write_bytes(bytes(data))


def _fresh_with_head() -> gpuckpt.Module:
    model = _model(5.0)
    model.head = gpuckpt.Module()
    model.head.b = gpuckpt.Variable(np.full((4, 3), 5.0, np.float32))
    return model


@pytest.mark.parametrize("atomic", [False, True])
def test_a_corrupt_value_fails_the_restore_before_any_variable_changes(tmp_path, atomic):
    from gpuckpt.distributed import PartialDistributedRestoreError

    path = _saved_with_head(tmp_path)
    _flip_byte(path, tmp_path / "ckpt-1.data-00000-of-00001", "model/head/b/.ATTRIBUTES/VARIABLE_VALUE")
    model = _fresh_with_head()
    with pytest.raises(DistributedError, match="no variable was changed.*checksum mismatch.*model/head/b") as caught:
        DistributedCheckpoint(gpuckpt.Checkpoint(model=model), comm=SingleProcess()).restore(
            path, gpuckpt.CheckpointOptions(atomic_restore=atomic))
    assert not isinstance(caught.value, PartialDistributedRestoreError) and caught.value.ranks == (0,)
    assert np.all(model.w.numpy() == 5.0) and np.all(model.head.b.numpy() == 5.0)


def test_bytes_that_change_after_verification_are_zero_filled_and_named(tmp_path, monkeypatch):
    """The one partial outcome: the file changes between the verification and the reads into the variables."""
    from gpuckpt.distributed import PartialDistributedRestoreError
    from gpuckpt.distributed import restore as stage

    path = _saved_with_head(tmp_path)
    verify = stage.verify_host

    def verify_then_damage(storage, items):
        failed = verify(storage, items)
        _flip_byte(path, tmp_path / "ckpt-1.data-00000-of-00001", "model/head/b/.ATTRIBUTES/VARIABLE_VALUE")
        return failed

    monkeypatch.setattr(stage, "verify_host", verify_then_damage)
    model = _fresh_with_head()
    with pytest.raises(PartialDistributedRestoreError, match="after every value had verified.*checksum mismatch") \
            as partial:
        DistributedCheckpoint(gpuckpt.Checkpoint(model=model), comm=SingleProcess()).restore(path)
    assert partial.value.failed == ("model/head/b/.ATTRIBUTES/VARIABLE_VALUE",) and partial.value.ranks == (0,)
    assert "model/w/.ATTRIBUTES/VARIABLE_VALUE" in partial.value.restored
    assert np.all(model.w.numpy() == 2.0) and np.all(model.head.b.numpy() == 0.0)  # verified twice, and zero-filled


def test_a_verification_pass_reads_through_bounded_windows_on_the_reader_threads(tmp_path, monkeypatch):
    from gpuckpt.engine import cpu

    monkeypatch.setattr(cpu, "VERIFY_WINDOW_BYTES", 16)  # each (4, 3) float32 value is 48 bytes: three windows
    monkeypatch.setattr(cpu, "VERIFY_JOB_BYTES", 48)  # one value per job: two jobs, on the reader threads
    windows = []
    real = cpu._verify_one
    monkeypatch.setattr(cpu, "_verify_one", lambda s, item, window: windows.append(window.nbytes) or
                        real(s, item, window))
    path = _saved_with_head(tmp_path)
    model = _fresh_with_head()
    DistributedCheckpoint(gpuckpt.Checkpoint(model=model), comm=SingleProcess()).restore(path)
    assert sorted(windows) == [8, 16, 16]  # save_counter (8 bytes) alone, then each value
    np.testing.assert_array_equal(model.head.b.numpy(), np.arange(12, dtype=np.float32).reshape(4, 3))
    _flip_byte(path, tmp_path / "ckpt-1.data-00000-of-00001", "model/head/b/.ATTRIBUTES/VARIABLE_VALUE")
    model = _fresh_with_head()
    with pytest.raises(DistributedError, match="no variable was changed.*checksum mismatch.*model/head/b"):
        DistributedCheckpoint(gpuckpt.Checkpoint(model=model), comm=SingleProcess()).restore(path)
    assert np.all(model.head.b.numpy() == 5.0) and np.all(model.w.numpy() == 5.0)


