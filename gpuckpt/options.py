"""CheckpointOptions: how a checkpoint is written or read, validated once at construction.

TensorFlow's field names (``experimental_io_device``, ``experimental_enable_async_checkpoint``,
``experimental_write_callbacks``, ``enable_async``, ``experimental_skip_slot_variables``,
``experimental_sharding_callback``) are accepted and readable, so code written for
``tf.train.CheckpointOptions`` works unchanged; ``io_device`` and ``fsync`` are gpuckpt's own.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from .errors import InvalidArgumentError
from .storage.posixio import PosixIO, installed


@dataclass(frozen=True)
class StorageConfig:
    """How storage writes, passed whole from a save down to the commit: ``fsync`` (flush data and
    directory entries before a commit) and ``io``, the :class:`PosixIO` that makes the system calls
    (by default the process's installed one, see ``storage.posixio``; tests substitute faulty ones)."""

    fsync: bool = True
    io: PosixIO = field(default_factory=installed)

    def __post_init__(self) -> None:
        if not isinstance(self.fsync, bool):
            raise InvalidArgumentError(f"StorageConfig.fsync must be a bool, got {self.fsync!r}")
        if not isinstance(self.io, PosixIO):
            raise InvalidArgumentError(f"StorageConfig.io must be a PosixIO, got {self.io!r}")


@dataclass(frozen=True)
class ShardByTaskPolicy:
    """TF's default sharding: one data file per host (gpuckpt: one data file)."""


@dataclass(frozen=True)
class MaxShardSizePolicy:
    """Start a new data file once the current one would exceed ``max_shard_size`` bytes."""

    max_shard_size: int

    def __post_init__(self) -> None:
        if isinstance(self.max_shard_size, bool) or not isinstance(self.max_shard_size, int) \
                or self.max_shard_size <= 0:
            raise InvalidArgumentError(
                f"max_shard_size must be a positive int, got {self.max_shard_size!r}")


ShardingPolicy = ShardByTaskPolicy | MaxShardSizePolicy


@dataclass(frozen=True)
class CheckpointOptions:
    """Options for ``save``/``write``/``read``/``restore``; every field is checked in ``__post_init__``.

    ``io_device``: None (choose automatically), ``"cpu"`` or ``"gpu"``; ``experimental_io_device``
    is TF's spelling and takes device strings such as ``"/job:localhost/device:CPU:0"``.
    ``enable_async`` (alias ``experimental_enable_async_checkpoint``): take a snapshot, return,
    and write in the background (docs/async.md); ``max_in_flight``: how many such saves may be
    pending at once before the next one waits (each holds one snapshot in host memory).
    ``experimental_write_callbacks``: callables of 0 or 1 argument (the saved path), run in
    order once the checkpoint is committed. ``experimental_skip_slot_variables``: restore
    ignores optimizer slots. ``experimental_sharding_callback``: None or a gpuckpt sharding
    policy. ``fsync``: flush data and directory entries to disk before the commit.
    ``atomic_restore``: a restore reads every value into new buffers and assigns only once
    all of them verified (all or nothing, at the cost of a copy of the state in host memory);
    by default values are read straight into the variables (see docs/api.md, "Failed restores";
    a distributed restore first verifies every value on every rank, docs/distributed.md).
    ``restore_ring_bytes``: device memory a GPU restore may hold (its staging ring).
    """

    io_device: str | None = None
    enable_async: bool = False
    max_in_flight: int = 1
    fsync: bool = True
    experimental_io_device: str | None = None
    experimental_enable_async_checkpoint: bool = False
    experimental_write_callbacks: tuple[Callable, ...] | None = None
    experimental_skip_slot_variables: bool = False
    experimental_sharding_callback: ShardingPolicy | None = field(default=None)
    atomic_restore: bool = False
    restore_ring_bytes: int = 256 << 20

    def __post_init__(self) -> None:
        for name in ("enable_async", "fsync", "experimental_enable_async_checkpoint",
                     "experimental_skip_slot_variables", "atomic_restore"):
            _check_bool(name, getattr(self, name))
        if isinstance(self.max_in_flight, bool) or not isinstance(self.max_in_flight, int) or self.max_in_flight < 1:
            raise InvalidArgumentError(f"CheckpointOptions.max_in_flight must be an int of at least 1, "
                                       f"got {self.max_in_flight!r}")
        if (isinstance(self.restore_ring_bytes, bool) or not isinstance(self.restore_ring_bytes, int)
                or self.restore_ring_bytes < 4096):
            raise InvalidArgumentError(f"CheckpointOptions.restore_ring_bytes must be an int of at least 4096, "
                                       f"got {self.restore_ring_bytes!r}")
        enable_async = self.enable_async or self.experimental_enable_async_checkpoint
        object.__setattr__(self, "enable_async", enable_async)
        object.__setattr__(self, "experimental_enable_async_checkpoint", enable_async)
        object.__setattr__(self, "io_device", _resolve_io_device(self.io_device, self.experimental_io_device))
        if self.experimental_write_callbacks is not None:
            object.__setattr__(self, "experimental_write_callbacks",
                               _check_callbacks(self.experimental_write_callbacks))
        _check_sharding(self.experimental_sharding_callback)

    @property
    def storage(self) -> StorageConfig:
        """The storage configuration of a save with these options (the installed PosixIO, now)."""
        return StorageConfig(fsync=self.fsync)

    @property
    def write_callbacks(self) -> tuple[Callable, ...]:
        """The write callbacks, empty when none were given."""
        return self.experimental_write_callbacks or ()

    @property
    def max_shard_size(self) -> int | None:
        """The byte limit per data file that the sharding policy sets, if any."""
        policy = self.experimental_sharding_callback
        return policy.max_shard_size if isinstance(policy, MaxShardSizePolicy) else None


def storage_config(options: CheckpointOptions | None, io: PosixIO | None = None) -> StorageConfig:
    """The StorageConfig of a save with ``options`` (defaults when None); ``io`` overrides the PosixIO."""
    fsync = options.fsync if options is not None else True
    return StorageConfig(fsync=fsync) if io is None else StorageConfig(fsync=fsync, io=io)


def _check_bool(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise InvalidArgumentError(f"CheckpointOptions.{name} must be a bool, got {value!r}")


def _normalize_device(value: object, field_name: str) -> str | None:
    """Map ``"cpu"``, ``"GPU:0"``, ``"/job:localhost/device:CPU:0"`` and the like to cpu/gpu."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidArgumentError(f"CheckpointOptions.{field_name} must be a str or None, got {value!r}")
    last = value.strip().rsplit("/", 1)[-1]
    match = re.fullmatch(r"(?:device:)?(cpu|gpu)(?::\d+)?", last, flags=re.IGNORECASE)
    if match is None:
        raise InvalidArgumentError(
            f"CheckpointOptions.{field_name}={value!r} names no device; use 'cpu', 'gpu' or a TF "
            "device string such as '/job:localhost/device:CPU:0'")
    return match.group(1).lower()


def _resolve_io_device(io_device: object, tf_device: object) -> str | None:
    ours = _normalize_device(io_device, "io_device")
    theirs = _normalize_device(tf_device, "experimental_io_device")
    if ours is not None and theirs is not None and ours != theirs:
        raise InvalidArgumentError(
            f"CheckpointOptions: io_device={io_device!r} contradicts experimental_io_device={tf_device!r}")
    return ours or theirs


def _check_callbacks(callbacks: object) -> tuple[Callable, ...]:
    if callable(callbacks):
        callbacks = (callbacks,)
    if not isinstance(callbacks, Sequence):
        raise InvalidArgumentError(
            f"CheckpointOptions.experimental_write_callbacks must be a list of callables, got {callbacks!r}")
    for callback in callbacks:
        if not callable(callback) or callback_arity(callback) not in (0, 1):
            raise InvalidArgumentError(
                f"write callback {callback!r} must be a callable taking 0 or 1 argument (the saved path)")
    return tuple(callbacks)


def callback_arity(callback: Callable) -> int:
    """The number of parameters ``callback`` declares (TF's rule: 0 or 1 is allowed)."""
    try:
        return len(inspect.signature(callback).parameters)
    except (TypeError, ValueError):  # some builtins have no signature; pass them the path
        return 1


def _check_sharding(policy: object) -> None:
    if policy is not None and not isinstance(policy, (ShardByTaskPolicy, MaxShardSizePolicy)):
        raise InvalidArgumentError(
            f"CheckpointOptions.experimental_sharding_callback must be None, ShardByTaskPolicy() or "
            f"MaxShardSizePolicy(max_shard_size); got {policy!r}")
