"""The distributed save and restore stages run in one process, rank by rank, without MPI.

Each "rank" writes its shard with ``write_shard``; rank 0's ``commit`` merges the reports;
reads go through ``read_targets`` with another rank count's layout. The same code runs under
``mpirun`` in ``test_mpi.py``.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

import gpuckpt
from gpuckpt.distributed.comm import Failure
from gpuckpt.distributed.restore import live_targets, read_targets
from gpuckpt.distributed.save import Committed, collect, commit, merge_index, write_shard
from gpuckpt.engine.select import EngineCache
from gpuckpt.errors import CheckpointError

from .mpi_worker import build, expected, same, truth

KEYS = {name: f"model/{name}/.ATTRIBUTES/VARIABLE_VALUE" for name in truth()}


def write_all(prefix: str, size: int, *, change=None) -> dict:
    """Every rank's report after writing its shard (``change(rank, model)`` may alter a rank's model)."""
    engines = EngineCache()
    try:
        reports = {}
        for rank in range(size):
            model, _ = build(rank, size, fill=True)
            if change is not None:
                change(rank, model)
            reports[rank] = write_shard(prefix, collect(gpuckpt.Checkpoint(model=model)), rank, size, engines=engines)
        return reports
    finally:
        engines.close()


@pytest.fixture(scope="module")
def saved4(tmp_path_factory) -> str:
    prefix = str(tmp_path_factory.mktemp("dist") / "ckpt-1")
    assert commit(prefix, write_all(prefix, 4), {}, 4, fsync=False, state=True) == Committed(prefix)
    return prefix


def test_merged_checkpoint_reads_whole_tensors_like_a_single_process_one(saved4, tmp_path):
    single, _ = build(0, 1, fill=True)
    truth_prefix = gpuckpt.Checkpoint(model=single).write(tmp_path / "single")
    with gpuckpt.load_checkpoint(saved4) as merged, gpuckpt.load_checkpoint(truth_prefix) as reference:
        assert set(merged.keys()) == set(reference.keys())
        for key in reference.keys():
            assert same(merged.get_tensor(key), reference.get_tensor(key)), key  # the object graph too
        assert merged.index.num_shards == 4
        emb = merged.entry(KEYS["emb"])
        assert emb.is_sliced and len(emb.slices) == 4 and merged.entry(KEYS["grid"]).is_sliced
    assert gpuckpt.latest_checkpoint(os.path.dirname(saved4)) == saved4


@pytest.mark.parametrize("size", [1, 2, 3, 5])
def test_every_rank_count_restores_its_part(saved4, size):
    with gpuckpt.CheckpointReader(saved4) as reader:
        for rank in range(size):
            model, lay = build(rank, size, fill=False)
            targets = live_targets(gpuckpt.Checkpoint(model=model))
            values, nbytes = read_targets(reader, targets)
            got = dict(zip((t.key for t in targets), values))
            for name in truth():
                assert same(got[KEYS[name]], expected(name, lay)), (size, rank, name)
            assert nbytes > 0


def test_a_failed_rank_means_no_commit(tmp_path):
    prefix = str(tmp_path / "ckpt-1")
    reports = write_all(prefix, 2)
    verdict = commit(prefix, {0: reports[0]}, {1: "no report within 3 s"}, 2, fsync=False, state=True)
    assert verdict == Failure((1,), "rank 1: no report within 3 s")
    assert not os.path.exists(prefix + ".index") and not os.path.exists(tmp_path / "checkpoint")


def test_ranks_that_disagree_on_the_model_are_refused(tmp_path):
    prefix = str(tmp_path / "ckpt-1")

    def extra(rank, model):
        if rank == 1:
            model.extra = gpuckpt.Variable(np.ones(3, np.float32))

    reports = write_all(prefix, 2, change=extra)
    with pytest.raises(CheckpointError, match="rank 1 and rank 0 disagree on the replicated tensors"):
        merge_index([reports[0], reports[1]], 2)


def test_blocks_that_do_not_tile_are_refused(tmp_path):
    prefix = str(tmp_path / "ckpt-1")
    reports = write_all(prefix, 3)
    overlap = r"do not tile its global shape: blocks \[13:25, 0:5\] and \[13:25, 0:5\] overlap"
    with pytest.raises(CheckpointError, match=overlap):
        merge_index([reports[0], reports[1], reports[1]], 3)  # rank 2's blocks missing, rank 1's twice
    with pytest.raises(CheckpointError, match="blocks cover 125 of the 185 elements"):
        merge_index([reports[0], reports[1]], 3)


def test_device_variables_are_saved_by_the_gpu_engine_and_restored_in_place(tmp_path):
    """Sharded device arrays (Numba's simulator on CI) go through the GPU engine, as in one process."""
    cuda = pytest.importorskip("numba.cuda")
    from gpuckpt.distributed import Sharded, set_layout
    from gpuckpt.distributed.restore import _assign

    whole = np.arange(40 * 3, dtype=np.float32).reshape(40, 3)
    prefix = str(tmp_path / "ckpt-1")

    def model_of(rank: int, size: int, fill: bool) -> gpuckpt.Module:
        layout = Sharded.split(whole.shape, rank, size)
        block = whole[layout.box.region()] if fill else np.zeros(layout.lengths, np.float32)
        model = gpuckpt.Module()
        model.w = set_layout(gpuckpt.Variable(cuda.to_device(np.ascontiguousarray(block))), layout)
        return model

    from gpuckpt.saver import tensors_for_engine

    assert tensors_for_engine({"w": model_of(0, 2, True).w.value()})[2], "the GPU engine should save device arrays"
    engines = EngineCache()
    try:
        reports = {r: write_shard(prefix, collect(gpuckpt.Checkpoint(model=model_of(r, 2, True))), r, 2,
                                  engines=engines) for r in range(2)}
    finally:
        engines.close()
    assert commit(prefix, reports, {}, 2, fsync=False, state=False) == Committed(prefix)
    with gpuckpt.CheckpointReader(prefix) as reader:
        np.testing.assert_array_equal(reader.get_tensor("model/w/.ATTRIBUTES/VARIABLE_VALUE"), whole)
        for rank in range(3):
            model = model_of(rank, 3, False)
            targets = live_targets(gpuckpt.Checkpoint(model=model))
            values, _ = read_targets(reader, targets)
            _assign(targets, dict(zip((t.key for t in targets), values)))
            assert model.w.on_device
            np.testing.assert_array_equal(model.w.numpy(), whole[Sharded.split(whole.shape, rank, 3).box.region()])


def test_blocks_of_zero_elements_are_skipped_and_an_empty_tensor_gets_a_plain_entry(tmp_path):
    from gpuckpt.distributed import Sharded, set_layout

    prefix = str(tmp_path / "ckpt-1")
    engines = EngineCache()
    try:
        reports = {}
        for rank in range(3):  # 2 rows over 3 ranks: rank 2 holds none; the (0, 4) tensor has no elements at all
            model = gpuckpt.Module()
            small, empty = Sharded.split((2, 4), rank, 3), Sharded.split((0, 4), rank, 3)
            model.small = set_layout(gpuckpt.Variable(np.full(small.lengths, rank, np.int16)), small)
            model.empty = set_layout(gpuckpt.Variable(np.zeros(empty.lengths, np.int16)), empty)
            reports[rank] = write_shard(prefix, collect(gpuckpt.Checkpoint(model=model)), rank, 3, engines=engines)
    finally:
        engines.close()
    assert commit(prefix, reports, {}, 3, fsync=False, state=False) == Committed(prefix)
    with gpuckpt.CheckpointReader(prefix) as reader:
        assert len(reader.entry("model/small/.ATTRIBUTES/VARIABLE_VALUE").slices) == 2
        np.testing.assert_array_equal(reader.get_tensor("model/small/.ATTRIBUTES/VARIABLE_VALUE"),
                                      np.array([[0] * 4, [1] * 4], np.int16))
        empty = reader.get_tensor("model/empty/.ATTRIBUTES/VARIABLE_VALUE")
        assert empty.shape == (0, 4) and empty.dtype == np.int16
