"""DALI adapter: input pipelines saved with the training state, and resumed batch for batch after a SIGKILL.

The pipelines run on the CPU (``device_id=None``) over files the tests write: a shuffling
reader and random augmentations (a coin-flip mirror, a random gain and random noise), so a
resumed pipeline matches only if the reader's position and every random generator's state
came back. Run as a script (``python tests/adapters/test_dali.py child ...``) it is the
training process the resume tests start and kill.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import gpuckpt

dali = pytest.importorskip("nvidia.dali", reason="the DALI adapter needs DALI: pip install 'gpuckpt[dali]'")
fn, pipeline_def = dali.fn, dali.pipeline_def
gpuckpt_dali = pytest.importorskip("gpuckpt.dali")  # imported once DALI is known to be there

BATCH = 4
FILES = 10  # 10 samples in batches of 4: epochs end mid-batch, so positions across epochs are exercised
SAMPLE = (6, 8, 3)  # a tiny image, height x width x channels
SAMPLE_SIZE = int(np.prod(SAMPLE))
STATE_KEY = "data/.ATTRIBUTES/DALI_PIPELINE_STATE"


def write_samples(root: Path, count: int = FILES) -> Path:
    """``count`` small .npy samples, each distinct, for DALI's numpy reader."""
    root.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        np.save(root / f"sample-{i:03d}.npy", np.arange(SAMPLE_SIZE, dtype=np.float32).reshape(SAMPLE) + 1000 * i)
    return root


@pipeline_def(batch_size=BATCH, num_threads=1, device_id=None, seed=1234, enable_checkpointing=True)
def augmented(file_root: str, shard_id: int = 0, num_shards: int = 1):
    """Shuffled image-like samples, mirrored at random, scaled by a random gain, plus random noise."""
    x = fn.readers.numpy(file_root=file_root, random_shuffle=True, shard_id=shard_id, num_shards=num_shards,
                         name="Reader", seed=99)
    x = fn.reshape(x, layout="HWC")
    x = fn.flip(x, horizontal=fn.random.coin_flip(probability=0.5), vertical=0)
    x = x * fn.random.uniform(range=(0.5, 1.5))
    return x + fn.random.normal(x, stddev=0.1)


def pipeline_factory(file_root: str, num_pipelines: int | None = None) -> gpuckpt_dali.PipelineFactory:
    """A factory for one bare pipeline (``num_pipelines=None``) or a list of shards."""
    if num_pipelines is None:
        return gpuckpt_dali.PipelineFactory(lambda checkpoint: augmented(file_root, checkpoint=checkpoint))
    return gpuckpt_dali.PipelineFactory(
        lambda checkpoints: [augmented(file_root, shard_id=i, num_shards=num_pipelines, checkpoint=c)
                             for i, c in enumerate(checkpoints)], num_pipelines=num_pipelines)


def torch_iterator_factory(file_root: str, num_pipelines: int = 1) -> gpuckpt_dali.PipelineFactory:
    """A factory for PyTorch's DALIGenericIterator over ``num_pipelines`` shards."""
    from nvidia.dali.plugin.pytorch import DALIGenericIterator

    def build(checkpoints):
        pipes = [augmented(file_root, shard_id=i, num_shards=num_pipelines, checkpoint=c)
                 for i, c in enumerate(checkpoints)]
        return DALIGenericIterator(pipes, ["x"], reader_name="Reader", auto_reset=True)

    return gpuckpt_dali.PipelineFactory(build, num_pipelines=num_pipelines)


def jax_iterator_factory(file_root: str) -> gpuckpt_dali.PipelineFactory:
    from nvidia.dali.plugin.jax import DALIGenericIterator

    return gpuckpt_dali.PipelineFactory(
        lambda checkpoint: DALIGenericIterator([augmented(file_root, checkpoint=checkpoint)], ["x"],
                                               reader_name="Reader", auto_reset=True))


def gpu_factory(file_root: str) -> gpuckpt_dali.PipelineFactory:
    """The benchmark's JPEG pipeline on GPU 0: nvJPEG decode, random crop and mirror on the device."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
    from dali_input import image_pipeline

    return gpuckpt_dali.PipelineFactory(
        lambda checkpoint: image_pipeline(file_root, gpu=True, batch_size=BATCH, checkpoint=checkpoint))


FACTORIES = {"pipeline": pipeline_factory, "torch": torch_iterator_factory, "jax": jax_iterator_factory,
             "gpu": gpu_factory}


def next_batch(source) -> np.ndarray:
    """The next batch of a pipeline, list of pipelines or framework iterator, as one host array.

    Iterators raise StopIteration at the end of each epoch and (``auto_reset``) start the next.
    """
    if isinstance(source, list):
        return np.stack([next_batch(p) for p in source])
    if hasattr(source, "run"):
        out = source.run()[0]
        if hasattr(out, "as_cpu"):  # a GPU pipeline's TensorListGPU
            out = out.as_cpu()
        return np.array(out.as_tensor())
    while True:
        try:
            batch = next(source)
        except StopIteration:
            continue
        outputs = batch if isinstance(batch, list) else [batch]
        return np.stack([np.asarray(o["x"]) for o in outputs])


# -- the training process -------------------------------------------------------------------


class Training:
    """A model whose weights depend on every batch, its step, and the input pipeline, in one Checkpoint."""

    def __init__(self, data: gpuckpt_dali.PipelineFactory, directory: Path):
        self.data = data
        self.weights = gpuckpt.Variable(np.zeros(SAMPLE, np.float64))
        self.step = gpuckpt.Variable(np.int64(0))
        self.checkpoint = gpuckpt.Checkpoint(model=self.weights, step=self.step, data=data)
        self.manager = gpuckpt.CheckpointManager(self.checkpoint, str(directory), max_to_keep=2)

    def train(self, steps: int, save_every: int, *, enable_async: bool = False, kill_at: int | None = None,
              record=None) -> None:
        """Resume from the latest checkpoint, then train up to ``steps``; SIGKILL self after step ``kill_at``."""
        self.manager.restore_or_initialize()
        source = self.data.build()
        options = gpuckpt.CheckpointOptions(enable_async=enable_async)
        for step in range(int(self.step.numpy()), steps):
            batch = next_batch(source)
            if record is not None:
                record(step, batch)
            self.weights.assign(self.weights.numpy() * 0.5 + float(batch.mean()))
            self.step.assign(step + 1)
            if (step + 1) % save_every == 0:
                self.manager.save(checkpoint_number=step + 1, options=options)
            if step + 1 == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
        self.checkpoint.sync()


def child(argv: list[str]) -> None:
    """``child DIR FILES KIND STEPS EVERY [--async] [--kill-at N] [--pipelines N]``: train, record every batch."""
    ap = argparse.ArgumentParser()
    ap.add_argument("directory", type=Path)
    ap.add_argument("files")
    ap.add_argument("kind", choices=sorted(FACTORIES))
    ap.add_argument("steps", type=int)
    ap.add_argument("every", type=int)
    ap.add_argument("--async", dest="enable_async", action="store_true")
    ap.add_argument("--kill-at", type=int)
    ap.add_argument("--pipelines", type=int)
    args = ap.parse_args(argv)
    factory = FACTORIES[args.kind]
    data = factory(args.files, args.pipelines) if args.pipelines else factory(args.files)
    batches = args.directory / "batches"
    batches.mkdir(parents=True, exist_ok=True)

    def record(step: int, batch: np.ndarray) -> None:
        (batches / f"{step:04d}.bin").write_bytes(batch.tobytes())

    training = Training(data, args.directory / "ckpt")
    training.train(args.steps, args.every, enable_async=args.enable_async, kill_at=args.kill_at, record=record)
    np.save(args.directory / "weights.npy", training.weights.numpy())


def run_child(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, __file__, "child", *map(str, args)], check=False, capture_output=True,
                          text=True, timeout=300)


# -- resume after SIGKILL ---------------------------------------------------------------------


STEPS, EVERY, KILL_AT = 9, 3, 7  # saves after steps 3 and 6; killed after step 7; 9 steps cross two epochs


@pytest.mark.parametrize("kind, enable_async, pipelines", [
    ("pipeline", False, None),
    ("pipeline", True, None),
    ("pipeline", False, 2),
    ("torch", True, 2),
])
def test_training_resumes_after_sigkill_with_the_same_batches(tmp_path, kind, enable_async, pipelines) -> None:
    if kind == "torch":
        pytest.importorskip("torch", reason="the PyTorch iterator needs torch")
    files = write_samples(tmp_path / "files")
    extra = (["--async"] if enable_async else []) + (["--pipelines", pipelines] if pipelines else [])

    reference = tmp_path / "reference"
    child([str(reference), str(files), kind, str(STEPS), str(EVERY), *map(str, extra)])  # uninterrupted, here
    run = tmp_path / "run"
    killed = run_child(run, files, kind, STEPS, EVERY, *extra, "--kill-at", KILL_AT)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert sorted(p.name for p in (run / "batches").iterdir()) == [f"{s:04d}.bin" for s in range(KILL_AT)]
    for path in (run / "batches").iterdir():
        path.unlink()

    latest = int(gpuckpt.latest_checkpoint(str(run / "ckpt")).rsplit("-", 1)[1])
    assert latest == 6 or (enable_async and latest == 3)  # an async ckpt-6 may still have been in flight

    resumed = run_child(run, files, kind, STEPS, EVERY, *extra)
    assert resumed.returncode == 0, resumed.stderr
    replayed = sorted(p.name for p in (run / "batches").iterdir())
    assert replayed == [f"{s:04d}.bin" for s in range(latest, STEPS)]  # from the latest committed checkpoint
    for name in replayed:
        assert (run / "batches" / name).read_bytes() == (reference / "batches" / name).read_bytes(), name
    starts_over = (reference / "batches" / "0000.bin").read_bytes()
    assert all((reference / "batches" / name).read_bytes() != starts_over for name in replayed)  # not trivially
    assert np.load(run / "weights.npy").tobytes() == np.load(reference / "weights.npy").tobytes()
    state = gpuckpt.load_checkpoint(str(run / "ckpt")).get_tensor(STATE_KEY)
    assert state.shape == (pipelines or 1,) and all(isinstance(s, bytes) and s for s in state)


@pytest.mark.gpu
def test_a_gpu_pipeline_resumes_after_sigkill_with_the_same_batches(tmp_path) -> None:
    if dali.backend.GetCUDADeviceCount() < 1:
        pytest.skip("no CUDA device for DALI")
    pytest.importorskip("PIL", reason="the GPU pipeline decodes JPEGs written with pillow")
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
    from dali_input import write_jpegs

    images = write_jpegs(str(tmp_path / "images"), 10)
    reference, run = tmp_path / "reference", tmp_path / "run"
    child([str(reference), images, "gpu", str(STEPS), str(EVERY)])
    assert run_child(run, images, "gpu", STEPS, EVERY, "--kill-at", KILL_AT).returncode == -signal.SIGKILL
    for path in (run / "batches").iterdir():
        path.unlink()
    resumed = run_child(run, images, "gpu", STEPS, EVERY)
    assert resumed.returncode == 0, resumed.stderr
    replayed = sorted(p.name for p in (run / "batches").iterdir())
    assert replayed == [f"{s:04d}.bin" for s in range(6, STEPS)]
    for name in replayed:
        assert (run / "batches" / name).read_bytes() == (reference / "batches" / name).read_bytes(), name


# -- in-process behaviour ----------------------------------------------------------------------


@pytest.fixture
def files(tmp_path) -> str:
    return str(write_samples(tmp_path / "files"))


def batches_after(source, count: int) -> list[bytes]:
    return [next_batch(source).tobytes() for _ in range(count)]


def test_a_pipeline_in_a_checkpoint_is_adapted_and_saved_as_a_string_per_pipeline(tmp_path, files) -> None:
    pipe = augmented(files)
    batches_after(pipe, 3)
    checkpoint = gpuckpt.Checkpoint(data=pipe)
    assert checkpoint.data is pipe
    path = checkpoint.save(tmp_path / "ckpt")
    reader = gpuckpt.load_checkpoint(path)
    assert reader.entry(STATE_KEY).dtype.name == "string"
    (state,) = reader.get_tensor(STATE_KEY)
    assert state == pipe.checkpoint()
    assert gpuckpt_dali.trackable(pipe) is gpuckpt_dali.trackable(pipe)


def test_an_unbuilt_pipeline_restores_in_place_and_builds_from_the_checkpoint(tmp_path, files) -> None:
    pipe = augmented(files)
    batches_after(pipe, 4)
    path = gpuckpt.Checkpoint(data=pipe).save(tmp_path / "ckpt")
    expected = batches_after(pipe, 5)

    assert batches_after(augmented(files), 5) != expected  # a pipeline that starts over differs
    fresh = augmented(files)
    gpuckpt.Checkpoint(data=fresh).restore(path).assert_consumed()
    assert batches_after(fresh, 5) == expected
    assert fresh.is_restored_from_checkpoint


def test_restore_or_initialize_then_build_resumes_without_touching_dali_strings(tmp_path, files) -> None:
    first = Training(pipeline_factory(files), tmp_path / "ckpt")
    first.train(5, save_every=5)
    expected = batches_after(first.data.built, 4)

    again = Training(pipeline_factory(files), tmp_path / "ckpt")
    again.manager.restore_or_initialize()
    assert int(again.step.numpy()) == 5
    assert batches_after(again.data.build(), 4) == expected
    assert again.data.build() is again.data.built  # built once


def test_a_fresh_start_builds_with_no_checkpoint_and_saving_before_build_keeps_the_start(tmp_path, files) -> None:
    expected = batches_after(augmented(files), 3)
    seen = []
    factory = gpuckpt_dali.PipelineFactory(lambda checkpoint: seen.append(checkpoint) or augmented(files))
    checkpoint = gpuckpt.Checkpoint(data=factory)
    path = checkpoint.save(tmp_path / "ckpt")  # nothing built yet: an empty state, "from the beginning"
    assert list(gpuckpt.load_checkpoint(path).get_tensor(STATE_KEY)) == [b""]
    gpuckpt.Checkpoint(data=factory).restore(path).assert_consumed()
    assert batches_after(factory.build(), 3) == expected
    assert seen == [None]


def test_a_deferred_restore_reaches_a_factory_attached_later(tmp_path, files) -> None:
    holder = gpuckpt.Module()
    holder.data = pipeline_factory(files)
    batches_after(holder.data.build(), 2)
    path = gpuckpt.Checkpoint(holder=holder).save(tmp_path / "ckpt")
    expected = batches_after(holder.data.built, 3)

    root = gpuckpt.Module()
    status = gpuckpt.Checkpoint(holder=root).restore(path)  # no data yet: its state waits on root
    root.data = pipeline_factory(files)
    status.assert_consumed()
    assert batches_after(root.data.build(), 3) == expected


def test_async_saves_take_the_pipeline_state_when_save_is_called(tmp_path, files) -> None:
    factory = pipeline_factory(files)
    weights = gpuckpt.Variable(np.zeros(3))
    checkpoint = gpuckpt.Checkpoint(model=weights, data=factory)
    source = factory.build()
    batches_after(source, 3)
    weights.assign(np.full(3, 3.0))
    checkpoint.save(tmp_path / "ckpt", options=gpuckpt.CheckpointOptions(enable_async=True))
    expected = batches_after(source, 4)  # the pipeline moves on while the save drains
    weights.assign(np.full(3, 7.0))
    checkpoint.sync()

    again = pipeline_factory(files)
    restored = gpuckpt.Variable(np.zeros(3))
    gpuckpt.Checkpoint(model=restored, data=again).restore(tmp_path / "ckpt-1").assert_consumed()
    assert restored.numpy().tolist() == [3.0, 3.0, 3.0]
    assert batches_after(again.build(), 4) == expected


def test_several_pipelines_save_one_state_each_and_a_different_count_is_refused(tmp_path, files) -> None:
    factory = pipeline_factory(files, num_pipelines=2)
    weights = gpuckpt.Variable(np.arange(3.0))
    checkpoint = gpuckpt.Checkpoint(model=weights, data=factory)
    source = factory.build()
    batches_after(source, 2)
    path = checkpoint.save(tmp_path / "ckpt")
    live = [p.checkpoint() for p in source]
    expected = batches_after(source, 3)
    states = gpuckpt.load_checkpoint(path).get_tensor(STATE_KEY)
    assert states.shape == (2,) and list(states) == live

    for count in (None, 3):
        target = gpuckpt.Variable(np.zeros(3))
        wrong = pipeline_factory(files, num_pipelines=count)
        with pytest.raises(gpuckpt.InvalidArgumentError, match=r"DALI_PIPELINE_STATE.*shape \(2,\)") as info:
            gpuckpt.Checkpoint(model=target, data=wrong).restore(path)
        assert info.value.key == STATE_KEY
        assert target.numpy().tolist() == [0.0, 0.0, 0.0]  # all or nothing: nothing was assigned
        assert wrong.built is None

    right = pipeline_factory(files, num_pipelines=2)
    gpuckpt.Checkpoint(model=gpuckpt.Variable(np.zeros(3)), data=right).restore(path).assert_consumed()
    assert batches_after(right.build(), 3) == expected


def test_a_framework_iterator_saves_its_pipelines_states(tmp_path, files) -> None:
    pytest.importorskip("torch", reason="the PyTorch iterator needs torch")
    from nvidia.dali.plugin.pytorch import DALIGenericIterator

    iterator = DALIGenericIterator([augmented(files)], ["x"], reader_name="Reader", auto_reset=True)
    batches_after(iterator, 4)  # into the second epoch
    path = gpuckpt.Checkpoint(data=iterator).save(tmp_path / "ckpt")
    assert list(gpuckpt.load_checkpoint(path).get_tensor(STATE_KEY)) == iterator.checkpoints()
    expected = batches_after(iterator, 4)

    with pytest.raises(gpuckpt.InvalidArgumentError, match="already built.*PipelineFactory"):
        gpuckpt.Checkpoint(data=iterator).restore(path)
    factory = torch_iterator_factory(files)
    gpuckpt.Checkpoint(data=factory).restore(path).assert_consumed()
    assert batches_after(factory.build(), 4) == expected


def test_the_jax_iterator_resumes(tmp_path, files) -> None:
    pytest.importorskip("jax", reason="the JAX iterator needs jax")
    factory = jax_iterator_factory(files)
    checkpoint = gpuckpt.Checkpoint(data=factory)
    source = factory.build()
    batches_after(source, 3)
    path = checkpoint.save(tmp_path / "ckpt")
    expected = batches_after(source, 3)
    again = jax_iterator_factory(files)
    gpuckpt.Checkpoint(data=again).restore(path).assert_consumed()
    assert batches_after(again.build(), 3) == expected


def test_misuse_is_refused_with_errors_that_say_what_to_do(tmp_path, files) -> None:
    built = augmented(files)
    batches_after(built, 1)
    path = gpuckpt.Checkpoint(data=built).save(tmp_path / "ckpt")
    with pytest.raises(gpuckpt.InvalidArgumentError, match="already built"):
        gpuckpt.Checkpoint(data=built).restore(path)

    ignores = gpuckpt_dali.PipelineFactory(lambda checkpoint: augmented(files))
    gpuckpt.Checkpoint(data=ignores).restore(path)
    with pytest.raises(gpuckpt.InvalidArgumentError, match="not restored from the checkpoint's state.*checkpoint="):
        ignores.build()

    factory = pipeline_factory(files)
    factory.build()
    with pytest.raises(gpuckpt.InvalidArgumentError, match="already built"):
        gpuckpt.Checkpoint(data=factory).restore(path)

    @pipeline_def(batch_size=BATCH, num_threads=1, device_id=None, seed=1)
    def untracked():
        return fn.readers.numpy(file_root=files, name="Reader")

    with pytest.raises(gpuckpt.InvalidArgumentError, match="enable_checkpointing=True"):
        gpuckpt.Checkpoint(data=untracked()).save(tmp_path / "off")

    wrong_count = gpuckpt_dali.PipelineFactory(lambda checkpoints: [augmented(files)], num_pipelines=2)
    with pytest.raises(gpuckpt.InvalidArgumentError, match="returned 1 pipelines.*declared with 2"):
        wrong_count.build()
    with pytest.raises(gpuckpt.InvalidArgumentError, match="expected a DALI Pipeline"):
        gpuckpt_dali.PipelineFactory(lambda checkpoint: object()).build()
    with pytest.raises(gpuckpt.InvalidArgumentError, match="num_pipelines"):
        gpuckpt_dali.PipelineFactory(augmented, num_pipelines=0)


def test_a_corrupt_dali_state_is_an_invalid_argument_naming_the_factory(tmp_path, files) -> None:
    class Fake(gpuckpt.Trackable):
        def _serialize_tensors(self):
            return {gpuckpt_dali.STATE: np.array([b"not a DALI checkpoint"], dtype=object)}

    path = gpuckpt.Checkpoint(data=Fake()).save(tmp_path / "fake")  # garbage under the DALI key
    factory = pipeline_factory(files)
    gpuckpt.Checkpoint(data=factory).restore(path).assert_consumed()
    with pytest.raises(gpuckpt.InvalidArgumentError, match="PipelineFactory.*restored state failed"):
        factory.build()


def test_inspect_and_verify_read_a_checkpoint_with_a_dali_state(tmp_path, files, capsys) -> None:
    from gpuckpt import cli

    factory = pipeline_factory(files, num_pipelines=2)
    checkpoint = gpuckpt.Checkpoint(model=gpuckpt.Variable(np.ones(5, np.float32)), data=factory)
    batches_after(factory.build(), 2)
    path = checkpoint.save(tmp_path / "ckpt")
    assert cli.main(["inspect", path]) == 0
    listing = capsys.readouterr().out
    assert STATE_KEY in listing and "string" in listing
    assert cli.main(["verify", path]) == 0
    assert "verified" in capsys.readouterr().out


def python_blocks(doc: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (Path(__file__).resolve().parents[2] / doc).read_text(), re.DOTALL)


def test_the_dali_docs_run_as_written(tmp_path) -> None:
    """docs/dali.md's blocks, in order, and docs/api.md's DALI example, with /tmp/run moved into tmp_path.

    (Until the docs-run test covers every docs/*.md file; then this one is redundant.)
    """
    code = "\n".join(python_blocks("docs/dali.md"))
    assert "PipelineFactory" in code
    exec(compile(code.replace("/tmp/run", str(tmp_path / "run")), "docs/dali.md", "exec"), {})
    assert (tmp_path / "run" / "dali-manager" / "checkpoint").exists()
    (api,) = [block for block in python_blocks("docs/api.md") if "gpuckpt.dali" in block]
    for restarts in range(2):  # the second run restores the first's checkpoint, pipeline position included
        namespace: dict = {}
        exec(compile(api.replace("/tmp/run", str(tmp_path / "api")), "docs/api.md", "exec"), namespace)
        assert namespace["pipe"].is_restored_from_checkpoint == bool(restarts)


def test_the_benchmarks_dali_pipeline_resumes_and_its_overlap_runs_complete(tmp_path, capsys, monkeypatch) -> None:
    """bench/dali_input.py's JPEG pipeline (CPU here) restores exactly, and bench_overlap.py --dali runs."""
    pytest.importorskip("PIL", reason="the benchmark writes its JPEGs with pillow")
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2] / "bench"))
    import bench_overlap
    import dali_input

    images = dali_input.write_jpegs(str(tmp_path / "images"), 12)
    pipe = dali_input.image_pipeline(images, gpu=False, batch_size=4)
    for _ in range(4):
        pipe.run()
    path = gpuckpt.Checkpoint(data=pipe).save(tmp_path / "ckpt")
    expected = [np.array(pipe.run()[0].as_tensor()).tobytes() for _ in range(3)]
    starting_over = dali_input.image_pipeline(images, gpu=False, batch_size=4)
    assert [np.array(starting_over.run()[0].as_tensor()).tobytes() for _ in range(3)] != expected
    factory = gpuckpt_dali.PipelineFactory(
        lambda checkpoint: dali_input.image_pipeline(images, gpu=False, batch_size=4, checkpoint=checkpoint))
    gpuckpt.Checkpoint(data=factory).restore(path).assert_consumed()
    assert [np.array(factory.build().run()[0].as_tensor()).tobytes() for _ in range(3)] == expected

    assert bench_overlap.main(["--state-mib", "1", "--steps", "4", "--every", "2", "--no-tf", "--dali",
                               "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert all(f"gpuckpt+dali: {label}" in out for label in ("no checkpoints", "sync saves", "async saves"))


def test_importing_gpuckpt_does_not_import_dali_and_the_adapter_names_its_extra() -> None:
    code = ("import sys, gpuckpt; print('nvidia.dali' in sys.modules)\n"
            "sys.modules['nvidia.dali'] = None\n"
            "try:\n    import gpuckpt.dali\nexcept ImportError as exc:\n    print(exc)\n")
    out = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "False", "nvidia.dali is needed for this and is not installed: pip install 'gpuckpt[dali]'"]


if __name__ == "__main__" and sys.argv[1:2] == ["child"]:
    child(sys.argv[2:])
