"""Hostile and damaged files: never outside the directory, never a hang, memory bounded by the bytes present.

Every case is a set of files crafted here, then handed to gpuckpt's entry points (load, restore,
``gpuckpt verify``/``inspect``, ``latest_checkpoint``, ``CheckpointManager``) in a child process
under a timeout and a 4 GiB address-space cap (``hostile_child``). Each asserts the exception's
type, that it names the path or key at fault, that the child's peak memory stayed small, and
that nothing outside the checkpoint's directory changed.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest

import gpuckpt
from gpuckpt.errors import DataLossReason
from gpuckpt.format import bundle, crc, dtypes, objgraph, sstable, statefile
from gpuckpt.format.bundle import BundleEntry, Extent
from gpuckpt.format.slices import slice_key
from gpuckpt.saver import write_tensors
from tests.robustness.hostile_child import Outcome, run

F32 = dtypes.BY_NAME["float32"]
SMALL = 96 << 20  # how much the child's peak memory may grow on any of these files


def tree_digest(root: Path, skip: Path | None = None) -> dict[str, str]:
    """Path -> content hash (or link target) of everything under ``root`` except ``skip``."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        if skip is not None and Path(dirpath) == skip:
            dirnames.clear()
            continue
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            if path.is_symlink():
                out[str(path)] = "->" + os.readlink(path)
            elif path.is_file():
                out[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def saved_checkpoint(directory: Path, value: float = 1.0, name: str = "ckpt") -> str:
    """A real checkpoint ``directory/<name>-1`` of one float32[4] variable, listed in the state file."""
    checkpoint = gpuckpt.Checkpoint(v=gpuckpt.Variable(np.full(4, value, np.float32)))
    return checkpoint.save(directory / name)


def expect_error(outcomes, kind: str, *, names: str) -> None:
    for o in outcomes:
        assert o.outcome != "escaped", f"{o.op}: {o.type} escaped:\n{o.message}"
        assert o.grew < SMALL, f"{o.op} grew peak memory by {o.grew >> 20} MiB"
        if o.op in ("verify", "inspect"):
            # the CLI's exit statuses (docs/cli.md): verify says 1 for a damaged checkpoint, 2 for none
            status = "1" if o.op == "verify" and kind == "DataLossError" else "2"
            assert o.outcome == "ok" and o.value == status and names in o.message, (o.op, o.value, o.message)
            assert "Traceback" not in o.message
            continue
        assert o.outcome == "CheckpointError" and o.type == kind, (o.op, o.type, o.message)
        assert names in o.message and (names in (o.path or "") or names == o.key), (o.op, o.message, o.path, o.key)


def all_ops(target: str) -> list[tuple[str, str]]:
    return [(op, target) for op in ("load", "restore", "verify", "inspect")]


class Batch:
    """The crafted cases' ops, run in one child (each child costs a second of start-up on a loaded
    machine). Peak memory is a high-water mark, so the batch's total growth bounds every op's."""

    def __init__(self, root: Path):
        self.root = root
        self.ops: dict[str, list[tuple[str, str]]] = {}
        self.results: dict[str, list[Outcome]] = {}

    def dir(self, name: str) -> Path:
        path = self.root / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def add(self, name: str, ops: list[tuple[str, str]]) -> None:
        self.ops[name] = ops

    def run(self) -> None:
        flat = [(name, op) for name, ops in self.ops.items() for op in ops]
        outcomes = run([op for _, op in flat], timeout=240)
        for (name, _), outcome in zip(flat, outcomes):
            self.results.setdefault(name, []).append(outcome)
        assert max(o.rss_after for o in outcomes) - outcomes[0].rss_before < SMALL


CRAFTERS = []


def crafted(fn):
    """Register ``fn(batch)``: it crafts files and adds the ops whose outcomes its test checks."""
    CRAFTERS.append(fn)
    return fn


@pytest.fixture(scope="module")
def batch(tmp_path_factory) -> Batch:
    b = Batch(tmp_path_factory.mktemp("hostile"))
    for craft in CRAFTERS:
        craft(b)
    b.run()
    return b


# -- outside the directory ---------------------------------------------------------------------

@crafted
def _outside(b: Batch) -> None:
    run_dir, victim, other = b.dir("outside/run"), b.dir("outside/victim"), b.dir("outside/other/run")
    saved_checkpoint(victim)
    saved_checkpoint(other)
    (run_dir / "sub").symlink_to(victim, target_is_directory=True)
    paths = ["../victim/ckpt-1", str(other / "ckpt-1"), "sub/ckpt-1"]
    state = statefile.CheckpointState(paths[0], tuple(paths), (10.0, 11.0, 12.0), 1.0)
    (run_dir / "checkpoint").write_text(statefile.format(state))
    b.before_outside = tree_digest(b.root / "outside", skip=run_dir)
    b.add("outside", [("manager_save", str(run_dir))])


def test_state_file_naming_other_runs_deletes_nothing_outside(batch: Batch) -> None:
    run_dir = batch.root / "outside" / "run"
    [outcome] = batch.results["outside"]
    assert outcome.outcome == "ok", outcome.message
    result = json.loads(outcome.value)
    assert result["restored"] is None  # nothing inside the directory to restore
    assert result["saved"] == [str(run_dir / "ckpt-1"), str(run_dir / "ckpt-2")]
    assert tree_digest(batch.root / "outside", skip=run_dir) == batch.before_outside
    assert sorted(p.name for p in run_dir.glob("*.index")) == ["ckpt-2.index"]


def test_paths_outside_are_followed_only_when_asked_and_never_deleted(tmp_path: Path) -> None:
    run_dir, victim = tmp_path / "run", tmp_path / "victim"
    run_dir.mkdir()
    victim.mkdir()
    saved_checkpoint(victim, 7.0)
    state = statefile.CheckpointState(str(victim / "ckpt-1"), (str(victim / "ckpt-1"),), (10.0,), 1.0)
    (run_dir / "checkpoint").write_text(statefile.format(state))
    before = tree_digest(victim)
    v = gpuckpt.Variable(np.zeros(4, np.float32))
    refusing = gpuckpt.CheckpointManager(gpuckpt.Checkpoint(v=v), run_dir, max_to_keep=1)
    assert refusing.latest_checkpoint is None and refusing.checkpoints == []
    manager = gpuckpt.CheckpointManager(gpuckpt.Checkpoint(v=v), run_dir, max_to_keep=1,
                                        follow_paths_outside_directory=True)
    assert manager.restore_or_initialize() == str(victim / "ckpt-1") and float(v.numpy()[0]) == 7.0
    manager.save()
    manager.save()
    assert tree_digest(victim) == before


@crafted
def _lock_symlink(b: Batch) -> None:
    run_dir, elsewhere = b.dir("lock/run"), b.dir("lock/elsewhere")
    (run_dir / ".gpuckpt.lock").symlink_to(elsewhere / "created-by-lock")
    (b.dir("lockfifo") / ".gpuckpt.lock").parent.mkdir(exist_ok=True)
    os.mkfifo(b.root / "lockfifo" / ".gpuckpt.lock")
    b.before_lock = tree_digest(b.root / "lock", skip=run_dir)
    b.add("lock", [("manager_save", str(run_dir)), ("manager_save", str(b.root / "lockfifo"))])


def test_lock_file_symlink_or_fifo_is_refused_and_creates_nothing(batch: Batch) -> None:
    run_dir = batch.root / "lock" / "run"
    link, fifo = batch.results["lock"]
    assert link.outcome == "CheckpointError" and link.type == "DataLossError", link.message
    assert link.path == str(run_dir / ".gpuckpt.lock") and link.reason == DataLossReason.NOT_REGULAR_FILE
    assert not (batch.root / "lock" / "elsewhere" / "created-by-lock").exists()
    assert tree_digest(batch.root / "lock", skip=run_dir) == batch.before_lock
    assert fifo.type == "DataLossError" and fifo.reason == DataLossReason.NOT_REGULAR_FILE, fifo.message


# -- not regular files: no hang ----------------------------------------------------------------

@crafted
def _not_regular(b: Batch) -> None:
    for kind in ("fifo_index", "fifo_shard", "dir_shard", "zero_index"):
        prefix = saved_checkpoint(b.dir(kind))
        target = prefix + (".index" if kind.endswith("index") else ".data-00000-of-00001")
        os.unlink(target)
        if kind.startswith("fifo"):
            os.mkfifo(target)
        elif kind == "dir_shard":
            os.mkdir(target)
        else:
            os.symlink("/dev/zero", target)
        b.add(kind, all_ops(prefix))


@pytest.mark.parametrize("kind", ["fifo_index", "fifo_shard", "dir_shard", "zero_index"])
def test_index_or_shard_that_is_not_a_regular_file(batch: Batch, kind: str) -> None:
    target = batch.results[kind][0].target + (".index" if kind.endswith("index") else ".data-00000-of-00001")
    expect_error(batch.results[kind], "DataLossError", names=target)


STATE_KINDS = ["fifo", "dev_zero", "directory", "empty", "nul_path", "garbage"]


def damage_state_file(state_path: Path, kind: str) -> None:
    if state_path.exists():
        state_path.unlink()
    if kind == "fifo":
        os.mkfifo(state_path)
    elif kind == "dev_zero":
        os.symlink("/dev/zero", state_path)
    elif kind == "directory":
        state_path.mkdir()
    elif kind == "empty":
        state_path.write_bytes(b"")
    elif kind == "nul_path":
        state_path.write_bytes(b'model_checkpoint_path: "ckpt-1\\000"\n')
    else:
        state_path.write_bytes(b"model_checkpoint_path: \"ckpt-1\n\xff\xfe{{{")


@crafted
def _damaged_state(b: Batch) -> None:
    for kind in STATE_KINDS:
        directory = b.dir(f"state-{kind}")
        damage_state_file(directory / "checkpoint", kind)
        b.add(f"state-{kind}", [("latest", str(directory)), ("manager", str(directory))])


@pytest.mark.parametrize("kind", STATE_KINDS)
def test_damaged_state_file_without_checkpoints(batch: Batch, kind: str) -> None:
    latest, manager = batch.results[f"state-{kind}"]
    expect_error([latest], "DataLossError", names=str(batch.root / f"state-{kind}" / "checkpoint"))
    assert manager.outcome == "ok", manager.message  # a manager warns and starts: nothing verifiable here
    assert json.loads(manager.value)["restored"] is None


FALLBACK_KINDS = ["fifo", "empty", "garbage", "nul_path"]


@crafted
def _fallback(b: Batch) -> None:
    for kind in FALLBACK_KINDS:
        directory = b.dir(f"fallback-{kind}")
        for value in (1.0, 2.0, 3.0):
            checkpoint = gpuckpt.Checkpoint(v=gpuckpt.Variable(np.full(4, value, np.float32)))
            checkpoint.save_counter.assign(int(value) - 1)
            checkpoint.save(directory / "ckpt")
        newest = directory / "ckpt-3.data-00000-of-00001"
        newest.write_bytes(newest.read_bytes()[:-1] + b"\x00")  # ckpt-3 fails its CRC: ckpt-2 is the one
        damage_state_file(directory / "checkpoint", kind)
        b.add(f"fallback-{kind}", [("latest", str(directory)), ("manager", str(directory))])


@pytest.mark.parametrize("kind", FALLBACK_KINDS)
def test_damaged_state_file_falls_back_to_the_newest_checkpoint_that_verifies(batch: Batch, kind: str) -> None:
    directory = batch.root / f"fallback-{kind}"
    latest, manager = batch.results[f"fallback-{kind}"]
    assert latest.outcome == "ok" and latest.value == str(directory / "ckpt-2"), latest.message
    assert "ckpt-3" in latest.message and "state file" in latest.message  # the warning names what was skipped
    assert json.loads(manager.value)["restored"] == str(directory / "ckpt-2"), manager.message
    assert json.loads(manager.value)["value"] == 2.0


# -- bounded parsing ---------------------------------------------------------------------------

def write_raw(prefix: str, entries: dict, data: bytes = b"", num_shards: int = 1) -> None:
    Path(prefix + ".index").write_bytes(bundle.build_index(num_shards, entries))
    Path(bundle.data_file_name(prefix, 0, num_shards)).write_bytes(data)


def sparse_index_naming_a_huge_block(path: str, size: int) -> None:
    """A real footer and metaindex block at the end of a sparse file; the index handle spans the hole."""
    meta = b"\x00\x00\x00\x00\x01\x00\x00\x00"  # an empty block: one restart at 0, count 1
    trailer = bytes([0]) + struct.pack("<I", crc.masked_crc32c(meta + b"\x00"))
    meta_at = size - sstable.FOOTER_SIZE - len(meta) - 5
    handles = sstable._handle(meta_at, len(meta)) + sstable._handle(0, meta_at - 5 - 16)
    footer = handles + bytes(40 - len(handles)) + struct.pack("<Q", sstable.MAGIC)
    with open(path, "wb") as f:
        f.truncate(meta_at)
        f.seek(meta_at)
        f.write(meta + trailer + footer)


@crafted
def _bounded(b: Batch) -> None:
    prefix = str(b.dir("shards") / "ck")
    Path(prefix + ".index").write_bytes(bundle.build_index(2**31 - 1, {}))
    b.add("shards", all_ops(prefix))

    prefix = str(b.dir("sparse_zeros") / "ck")
    with open(prefix + ".index", "wb") as f:
        f.truncate(4 << 30)
    b.add("sparse_zeros", all_ops(prefix))

    prefix = str(b.dir("sparse_block") / "ck")
    sparse_index_naming_a_huge_block(prefix + ".index", 3 << 30)
    b.add("sparse_block", all_ops(prefix))

    prefix = str(b.dir("alias") / "ck")
    rows, row = 1500, 1 << 18  # 1,500 slices of 1 MiB each, all pointing at the same 1 MiB
    data = np.zeros(row, np.float32).tobytes()
    slices = tuple((Extent(i, 1), Extent(0, None)) for i in range(rows))
    entries = {"t": BundleEntry(F32, (rows, row), slices=slices)}
    for extents in slices:
        entries[slice_key("t", extents)] = BundleEntry(F32, (1, row), 0, 0, len(data), crc.masked_crc32c(data))
    write_raw(prefix, entries, data)
    b.add("alias", all_ops(prefix))

    prefix = str(b.dir("repeat") / "ck")
    extents = (Extent(0, None),)
    entries = {"t": BundleEntry(F32, (1 << 18,), slices=(extents,) * 100_000),
               slice_key("t", extents): BundleEntry(F32, (1 << 18,), 0, 0, len(data), crc.masked_crc32c(data))}
    write_raw(prefix, entries, data)
    b.add("repeat", all_ops(prefix))

    prefix = str(b.dir("missing_slice") / "ck")
    first, second = (Extent(0, 4),), (Extent(4, 4),)
    entries = {"t": BundleEntry(F32, (8,), slices=(first, second)),
               slice_key("t", first): BundleEntry(F32, (4,), 0, 0, 16, crc.masked_crc32c(data[:16]))}
    write_raw(prefix, entries, data[:32])
    b.add("missing_slice", all_ops(prefix))

    prefix = str(b.dir("huge_shape") / "ck")
    write_raw(prefix, {"huge": BundleEntry(F32, (0, 2**62, 2**62), 0, 0, 0, crc.masked_crc32c(b""))})
    b.add("huge_shape", all_ops(prefix))


def test_index_declaring_two_billion_shards(batch: Batch) -> None:
    index = batch.results["shards"][0].target + ".index"
    assert os.stat(index).st_size < 128
    expect_error(batch.results["shards"], "DataLossError", names=index)
    assert "declares 2147483647 data shards" in batch.results["shards"][0].message
    assert {o.reason for o in batch.results["shards"] if o.outcome == "CheckpointError"} == {DataLossReason.BAD_INDEX}


@pytest.mark.parametrize("case", ["sparse_zeros", "sparse_block"])
def test_sparse_index(batch: Batch, case: str) -> None:
    index = batch.results[case][0].target + ".index"
    assert os.stat(index).st_blocks * 512 < (1 << 20) < os.stat(index).st_size
    expect_error(batch.results[case], "DataLossError", names=index)
    if case == "sparse_block":
        assert "sparse" in batch.results[case][0].message


@pytest.mark.parametrize(("case", "names", "says"), [
    ("alias", ".index", "overlapping"),
    ("repeat", "t", "more than once"),
    ("missing_slice", "t", "missing"),
    ("huge_shape", "huge", "larger than any array"),
])
def test_index_validated_before_any_tensor_is_touched(batch: Batch, case: str, names: str, says: str) -> None:
    outcomes = batch.results[case]
    expect_error(outcomes, "DataLossError", names=outcomes[0].target + names if names == ".index" else names)
    assert says in outcomes[0].message
    assert {o.reason for o in outcomes if o.outcome == "CheckpointError"} == {DataLossReason.BAD_ENTRY}


@crafted
def _graphs(b: Batch) -> None:
    for name, graph in (("graph_float", np.arange(3, dtype=np.float32)),
                        ("graph_strings", np.array([b"a", b"b"], dtype=object))):
        prefix = write_tensors(b.dir(name) / "ck", {"v": np.zeros(4, np.float32), objgraph.OBJECT_GRAPH_KEY: graph})
        b.add(name, [("restore", str(prefix))])
    for depth in (12_000, 30_000):
        nodes = [objgraph.GraphNode(children=(objgraph.ChildRef(i + 1, "a"),)) for i in range(depth)]
        key = "/".join(["a"] * depth) + "/.ATTRIBUTES/VARIABLE_VALUE"
        nodes.append(objgraph.GraphNode(attributes=(objgraph.AttributeRef("VARIABLE_VALUE", "x", key),)))
        graph = objgraph.encode(objgraph.ObjectGraph(tuple(nodes)))
        prefix = write_tensors(b.dir(f"chain{depth}") / "ck",
                               {key: np.zeros(2, np.float32), objgraph.OBJECT_GRAPH_KEY: graph})
        b.add(f"chain{depth}", [("restore", str(prefix))])


@pytest.mark.parametrize("case", ["graph_float", "graph_strings"])
def test_object_graph_that_is_not_one_string(batch: Batch, case: str) -> None:
    [outcome] = batch.results[case]
    assert outcome.outcome == "CheckpointError" and outcome.type == "DataLossError", outcome.message
    assert outcome.key == objgraph.OBJECT_GRAPH_KEY and ("not as one string" in outcome.message or "not a scalar string" in outcome.message)


@pytest.mark.parametrize("depth", [12_000, 30_000])
def test_deep_chain_object_graph(batch: Batch, depth: int) -> None:
    [outcome] = batch.results[f"chain{depth}"]
    assert outcome.outcome == "ok", outcome.message
    assert outcome.grew < SMALL, f"grew by {outcome.grew >> 20} MiB"


@crafted
def _control(b: Batch) -> None:
    directory = b.dir("control")
    prefix = saved_checkpoint(directory)
    b.add("control", [*all_ops(prefix), ("latest", str(directory)), ("manager", str(directory))])


def test_valid_checkpoint_reads_in_the_same_harness(batch: Batch) -> None:
    """The control: the same ops on an intact checkpoint succeed (so the cases above fail for their cause)."""
    outcomes = batch.results["control"]
    assert [o.outcome for o in outcomes] == ["ok"] * 6, [o.message for o in outcomes]
    assert [o.value for o in outcomes[2:4]] == ["0", "0"]
    assert outcomes[4].value == outcomes[0].target and json.loads(outcomes[5].value)["value"] == 1.0


def test_paths_with_a_nul_or_a_file_as_directory_give_checkpoint_errors(tmp_path: Path) -> None:
    a_file = tmp_path / "file"
    a_file.write_bytes(b"")
    nul = str(tmp_path / "a\0b")

    def checkpoint():
        return gpuckpt.Checkpoint(v=gpuckpt.Variable(1.0))

    assert gpuckpt.latest_checkpoint(a_file) is None  # TF: no state file there
    cases = {
        "latest_checkpoint": lambda: gpuckpt.latest_checkpoint(nul),
        "load_checkpoint": lambda: gpuckpt.load_checkpoint(nul),
        "load under a file": lambda: gpuckpt.load_checkpoint(a_file / "ck"),
        "restore": lambda: checkpoint().restore(nul),
        "save": lambda: checkpoint().save(nul),
        "manager": lambda: gpuckpt.CheckpointManager(checkpoint(), nul, 1).save(),
        "manager in a file": lambda: gpuckpt.CheckpointManager(checkpoint(), a_file, 1).save(),
    }
    for name, call in cases.items():
        with pytest.raises(gpuckpt.CheckpointError) as caught:
            call()
        assert caught.value.path is not None, name


def test_messages_about_a_state_file_never_echo_its_contents(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"hunter2:x:0:0:topsecret\n")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "checkpoint").symlink_to(secret)
    with pytest.raises(gpuckpt.DataLossError) as caught:
        gpuckpt.latest_checkpoint(run_dir)
    assert caught.value.path == str(run_dir / "checkpoint")
    assert "hunter2" not in str(caught.value) and "topsecret" not in str(caught.value)


def test_a_tensor_too_large_for_memory_is_a_checkpoint_error(tmp_path: Path, monkeypatch) -> None:
    """A sparse data shard can claim more bytes than memory holds: the allocation failure is named."""
    prefix = saved_checkpoint(tmp_path)

    def no_memory(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr("gpuckpt.reader.aligned_empty", no_memory)
    with gpuckpt.load_checkpoint(prefix) as reader:
        with pytest.raises(gpuckpt.InvalidArgumentError, match=r"cannot allocate 16 bytes for key 'v/"):
            reader.get_tensor("v/.ATTRIBUTES/VARIABLE_VALUE")
