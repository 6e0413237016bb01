"""Reuse across saves: the cached structure (save_cache), plan and index template (saver), and the
CRCs an asynchronous save's capture computes while copying."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

import gpuckpt
from gpuckpt import save_cache, saver
from gpuckpt.engine import capture as capture_module
from gpuckpt.engine.capture import CapturePool
from gpuckpt.engine.cpu import CpuEngine
from gpuckpt.format import crc, dtypes
from gpuckpt.format.bundle import data_file_name, parse_index
from gpuckpt.plan import TensorSpec, build_save_plan


@pytest.fixture
def walks(monkeypatch) -> list[int]:
    """Counts the full graph walks saves make."""
    count: list[int] = []
    real = save_cache.walk

    def counting(*args, **kwargs):
        count.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(save_cache, "walk", counting)
    return count


class Holder(gpuckpt.trackable.Trackable):
    """A trackable whose value may change shape and dtype from save to save."""

    def __init__(self, value: np.ndarray):
        self.value = value

    def _serialize_tensors(self):
        return {"VALUE": self.value}


def model() -> tuple[gpuckpt.Checkpoint, gpuckpt.Module]:
    m = gpuckpt.Module()
    m.holder = Holder(np.zeros((2, 3), np.float32))
    m.w = gpuckpt.Variable(np.arange(6, dtype=np.float32).reshape(2, 3))
    m.layers = [gpuckpt.Variable(np.ones(4, np.int64)), gpuckpt.Variable(np.float64(2.5))]
    m.note = gpuckpt.Variable(b"hello")
    return gpuckpt.Checkpoint(model=m), m


def files(prefix: str) -> dict[str, bytes]:
    out = {".index": Path(prefix + ".index").read_bytes()}
    index = parse_index(out[".index"])
    for shard in range(index.num_shards):
        name = data_file_name(prefix, shard, index.num_shards)
        out[name[len(prefix):]] = Path(name).read_bytes()
    return out


def uncached_bytes(m: gpuckpt.Module, tmp_path: Path, name: str) -> dict[str, bytes]:
    """What a fresh Checkpoint (no cache) writes for the same objects."""
    return files(gpuckpt.Checkpoint(model=m).write(tmp_path / name))


def test_unchanged_structure_is_walked_once_and_writes_the_same_bytes(tmp_path: Path, walks: list[int]) -> None:
    ckpt, m = model()
    ckpt.write(tmp_path / "a")
    m.w.assign(np.full((2, 3), 7, np.float32))  # values change, structure does not
    m.note.assign(b"a longer string value")  # a string's size changes: re-planned, not re-walked
    ckpt.write(tmp_path / "b")
    assert len(walks) == 1
    assert files(str(tmp_path / "b")) == uncached_bytes(m, tmp_path, "fresh")


@pytest.mark.parametrize("change", ["added variable", "replaced variable", "reshaped value", "recast value",
                                    "changed tracked list", "deleted attribute"])
def test_any_structural_change_walks_again(tmp_path: Path, walks: list[int], change: str) -> None:
    ckpt, m = model()
    ckpt.write(tmp_path / "a")
    if change == "added variable":
        m.extra = gpuckpt.Variable(np.zeros(3, np.float32))
    elif change == "replaced variable":
        m.w = gpuckpt.Variable(np.arange(6, dtype=np.float32).reshape(2, 3))
    elif change == "reshaped value":
        m.holder.value = np.zeros((3, 2), np.float32)
    elif change == "recast value":
        m.holder.value = np.zeros((2, 3), np.float64)
    elif change == "changed tracked list":
        m.layers.append(gpuckpt.Variable(np.zeros(2, np.float32)))
    else:
        del m.note
    ckpt.write(tmp_path / "b")
    assert len(walks) == 2
    assert files(str(tmp_path / "b")) == uncached_bytes(m, tmp_path, "fresh")
    ckpt.write(tmp_path / "c")  # and the new structure is cached in turn
    assert len(walks) == 2 + 1  # the fresh Checkpoint above walked once


def test_saveable_checks_still_run_on_a_cached_structure(tmp_path: Path, walks: list[int]) -> None:
    ckpt, m = model()
    ckpt.write(tmp_path / "a")
    m.step = 5  # a plain value the checkpoint would leave out
    with pytest.raises(gpuckpt.InvalidArgumentError, match=r"\(root\)\.model\.step"):
        ckpt.write(tmp_path / "b")
    assert len(walks) == 1


def test_cache_holds_objects_weakly(tmp_path: Path) -> None:
    import weakref

    ckpt, m = model()
    ckpt.write(tmp_path / "a")
    gone = weakref.ref(m.layers[0])
    m.layers[0] = gpuckpt.Variable(np.ones(4, np.int64))
    assert gone() is None


def _plan(n: int):
    return build_save_plan([TensorSpec(f"layer_{i:05d}/.ATTRIBUTES/VARIABLE_VALUE", dtypes.from_numpy(np.dtype(np.float32)), (i % 7, 3),
                                       (i % 7) * 12) for i in range(n)])


def test_index_template_gives_index_bytes_over_several_blocks() -> None:
    plan = _plan(6000)  # several 256 KiB data blocks
    template = saver.IndexTemplate(plan)
    rng = np.random.default_rng(1)
    for _ in range(2):
        crcs = [int(c) for c in rng.integers(1, 2**32, len(plan.items))]
        assert template.fill(crcs) == saver.index_bytes(plan, crcs)
    crcs[17] = 0  # proto3 omits a zero CRC: another layout, so no template
    assert template.fill(crcs) is None


def test_capture_checksums_what_it_copies() -> None:
    values = {"a": np.arange(1 << 18, dtype=np.float32), "b": np.float64(3.0), "big_endian": np.arange(3, dtype=">i4"),
              "strided": np.arange(20, dtype=np.int16)[::2], "s": b"text", "empty": np.zeros(0, np.float32)}
    capture = CapturePool().capture(values, checksum=True)
    for key in ("a", "b", "empty"):
        assert capture.crcs[key] == crc.masked_crc32c(np.ascontiguousarray(values[key]).tobytes())
        assert np.array_equal(capture.tensors[key], values[key])
    assert set(capture.crcs) == {"a", "b", "empty"}  # the rest are converted or packed before writing
    assert CapturePool().capture(values).crcs == {}


def test_async_save_writes_the_captured_crcs_and_the_values_at_call_time(tmp_path: Path, monkeypatch) -> None:
    gate = threading.Event()
    real_write = CpuEngine.write
    seen: list[list[int]] = []

    def gated_write(self, plan, tensors, writer):
        assert gate.wait(30)
        seen.append([t.string_crc for t in tensors])
        return real_write(self, plan, tensors, writer)

    monkeypatch.setattr(CpuEngine, "write", gated_write)
    monkeypatch.setattr(capture_module, "CRC_PIECE", 4096)  # several pieces per value
    ckpt, m = model()
    big = gpuckpt.Variable(np.random.default_rng(0).standard_normal(50_000).astype(np.float32))
    m.big = big
    expected = big.numpy().copy()
    path = ckpt.save(tmp_path / "ckpt", options=gpuckpt.CheckpointOptions(enable_async=True))
    big.numpy()[:] = -1  # training goes on before the files are written
    m.w.assign(np.zeros((2, 3), np.float32))
    gate.set()
    ckpt.sync()
    assert sum(c is not None for c in seen[0]) == 6 + 2  # numeric values came with their CRCs (strings: own)
    index = parse_index(Path(path + ".index").read_bytes())
    data = Path(data_file_name(path, 0, 1)).read_bytes()
    numeric = {k: e for k, e in index.entries.items() if not e.dtype.is_string}
    assert len(numeric) == 6
    for key, entry in numeric.items():  # a string's CRC also covers its lengths (format/strings.py)
        assert entry.crc32c == crc.masked_crc32c(data[entry.offset : entry.offset + entry.size]), key
    restored_ckpt, restored = model()
    restored.big = gpuckpt.Variable(np.zeros(50_000, np.float32))
    restored_ckpt.read(path).expect_partial()
    assert np.array_equal(restored.big.numpy(), expected)
    assert np.array_equal(restored.w.numpy(), np.arange(6, dtype=np.float32).reshape(2, 3))


class Validating(gpuckpt.Variable):
    """A variable that checks itself before every save (as state-dict objects do)."""

    calls: list[str] = []

    def _checkpoint_validate(self, path: str) -> None:
        Validating.calls.append(path)


class Parent(gpuckpt.Variable):
    """A variable that declares a dependency of its own."""

    def __init__(self, value, child: gpuckpt.Variable):
        super().__init__(value)
        self.child = child

    def _trackable_children(self):
        return [("child", self.child)]


def test_only_classes_that_can_never_change_their_edges_skip_the_cached_save_checks() -> None:
    from gpuckpt.saveable import is_plain_leaf

    assert is_plain_leaf(gpuckpt.Variable(1.0)) and is_plain_leaf(Holder(np.zeros(2)))
    assert not is_plain_leaf(Validating(1.0)) and not is_plain_leaf(Parent(1.0, gpuckpt.Variable(2.0)))
    assert not is_plain_leaf(gpuckpt.Module()) and not is_plain_leaf(gpuckpt.trackable.TrackedList([]))


def test_a_cached_save_still_validates_and_sees_new_edges_of_other_classes(tmp_path: Path, walks) -> None:
    Validating.calls.clear()
    parent = Parent(1.0, gpuckpt.Variable(2.0))
    ckpt = gpuckpt.Checkpoint(v=Validating(3.0), p=parent)
    for i in range(2):
        ckpt.write(str(tmp_path / f"c{i}"))
    assert len(Validating.calls) == 2 and len(walks) == 1  # validated on the cached save too
    parent.child = gpuckpt.Variable(np.zeros(3, np.float32))  # a new object behind the same edge
    ckpt.write(str(tmp_path / "c2"))
    assert len(walks) == 2
    reader = gpuckpt.CheckpointReader(str(tmp_path / "c2"))
    assert reader.get_tensor("p/child/.ATTRIBUTES/VARIABLE_VALUE").shape == (3,)
