"""CheckpointOptions: TF's spellings, gpuckpt's fields, and validation at construction."""

from __future__ import annotations

import dataclasses

import pytest

import gpuckpt
from gpuckpt import CheckpointOptions


def test_defaults() -> None:
    options = CheckpointOptions()
    assert (options.io_device, options.enable_async, options.fsync) == (None, False, True)
    assert options.write_callbacks == () and options.max_shard_size is None


@pytest.mark.parametrize(("spelling", "device"), [
    ("/job:localhost/device:CPU:0", "cpu"), ("/device:GPU:1", "gpu"), ("CPU", "cpu"), ("cpu", "cpu"),
    ("GPU:0", "gpu")])
def test_tf_device_strings_map_to_io_device(spelling: str, device: str) -> None:
    options = CheckpointOptions(experimental_io_device=spelling)
    assert options.io_device == device and options.experimental_io_device == spelling


def test_async_alias() -> None:
    options = CheckpointOptions(experimental_enable_async_checkpoint=True)
    assert options.enable_async and options.experimental_enable_async_checkpoint


def test_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        CheckpointOptions().fsync = False  # type: ignore[misc]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"io_device": "tpu"}, "names no device"),
    ({"io_device": 0}, "must be a str"),
    ({"io_device": "cpu", "experimental_io_device": "GPU:0"}, "contradicts"),
    ({"enable_async": "yes"}, "must be a bool"),
    ({"fsync": None}, "must be a bool"),
    ({"experimental_write_callbacks": [lambda a, b: None]}, "0 or 1 argument"),
    ({"experimental_write_callbacks": 5}, "list of callables"),
    ({"experimental_sharding_callback": object()}, "MaxShardSizePolicy"),
])
def test_bad_values_are_invalid_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(gpuckpt.InvalidArgumentError, match=message):
        CheckpointOptions(**kwargs)


def test_sharding_policies() -> None:
    assert CheckpointOptions(experimental_sharding_callback=gpuckpt.MaxShardSizePolicy(10)).max_shard_size == 10
    assert CheckpointOptions(experimental_sharding_callback=gpuckpt.ShardByTaskPolicy()).max_shard_size is None
    with pytest.raises(ValueError, match="positive int"):
        gpuckpt.MaxShardSizePolicy(0)


def test_fsync_false_still_writes(tmp_path) -> None:
    ckpt = gpuckpt.Checkpoint(v=gpuckpt.Variable(1.0))
    path = ckpt.save(tmp_path / "c", options=CheckpointOptions(fsync=False))
    assert gpuckpt.latest_checkpoint(tmp_path) == path
