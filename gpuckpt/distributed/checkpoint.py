"""DistributedCheckpoint: ``Checkpoint.save``/``restore`` for a job of many ranks (MPI or torch.distributed)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from ..checkpoint import Numbering, resolve_restore_path
from ..engine.select import EngineCache
from ..futures import SaveHandle
from ..options import CheckpointOptions
from .comm import Communicator, Group
from .restore import RestoreResult, restore_distributed
from .save import Tensor, collect, save_distributed
from .torch_dtensor import local_shards


def communicator(comm: Any = None, *, timeout: float = 300.0) -> Communicator:
    """The communicator for ``comm``: a :class:`~.comm.Communicator` as it is; a torch ``ProcessGroup``;
    an mpi4py communicator; or None: the default torch.distributed group when torch.distributed
    is initialized, else ``MPI.COMM_WORLD``."""
    if isinstance(comm, Communicator):
        return comm
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and (
            (comm is None and dist.is_initialized()) or isinstance(comm, dist.ProcessGroup)):
        from .torch_comm import TorchCommunicator

        return TorchCommunicator(comm, timeout=timeout)
    return Group(comm, timeout=timeout)


class DistributedCheckpoint:
    """Saves and restores a :class:`gpuckpt.Checkpoint` whose variables are spread over ranks.

    Every rank builds the same object structure and wraps its ``Checkpoint``; variables declared
    with :func:`set_layout` as ``Sharded``, and torch DTensors (FSDP2, tensor parallel), hold
    this rank's block; all others are ``Replicated``. Every rank calls the same methods in the
    same order (they are collective).

    ``comm``: see :func:`communicator` (torch.distributed's default group under ``torchrun``,
    else ``MPI.COMM_WORLD``; ``comm.SingleProcess()`` for one process without either).
    ``timeout``: seconds, from the call, within which every rank must have written its shard (or
    read its part); a rank silent past it fails the operation on every rank with
    ``DistributedError``, and rank 0 commits nothing if its own writing overran it. Set it well
    above the slowest rank's write time.
    ``replicated``: ``"read"`` (every rank reads replicated tensors; the faster in
    ``bench/bench_mpi.py``) or ``"broadcast"`` (rank 0 reads them and broadcasts); see ``restore.py``.
    """

    def __init__(self, checkpoint: Any, comm: Any = None, *, timeout: float = 300.0, replicated: str = "read"):
        self.checkpoint = checkpoint
        self.group = communicator(comm, timeout=timeout)
        self.replicated = replicated
        self._engines = EngineCache()
        self._background_group: Communicator | None = None

    @property
    def rank(self) -> int:
        return self.group.rank

    @property
    def size(self) -> int:
        return self.group.size

    @property
    def last_save(self) -> SaveHandle | None:
        """The most recent asynchronous save (``wait_committed()``, ``result()``), or None."""
        return self.checkpoint.last_save

    # -- saving ----------------------------------------------------------------------------------

    def write(self, file_prefix: str | os.PathLike, options: CheckpointOptions | None = None, *, io=None) -> str:
        """Write a checkpoint at exactly ``file_prefix`` (no counter, no state file); returns the prefix.

        ``io`` substitutes the system calls of this rank's shard writes (fault injection in tests).
        """
        return self._save(os.path.abspath(os.fspath(file_prefix)), options, None, _RankWriter(self, False, io, None))

    def save(self, file_prefix: str | os.PathLike, options: CheckpointOptions | None = None, *, io=None) -> str:
        """Write ``file_prefix-N`` (N: the incremented ``save_counter``), then name it in the state file.

        With ``options.enable_async`` the values are snapshotted to host memory and the write and
        commit run in the background, through the same runner as a single-process async save
        (``gpuckpt.futures``): this returns the path at once; :meth:`sync` (or the next save or
        restore) waits for it and raises its error, once. A failed save frees its number.
        """
        return self.save_numbered(f"{os.path.abspath(os.fspath(file_prefix))}-{{}}", options, io=io)

    def save_numbered(self, pattern: str, options: CheckpointOptions | None = None, *, io=None,
                      number: int | None = None, publish: Callable[[str], None] | None = None) -> str:
        """``save`` at ``pattern.format(N)``; ``publish(path)`` (rank 0, at the commit) replaces the plain
        state-file update (``DistributedCheckpointManager``'s retention)."""
        numbering = Numbering(pattern.format, advance=lambda previous: previous + 1 if number is None else number,
                              give_back_on_async_failure=True)  # one save in flight: no later one took a number
        return self._save(pattern, options, numbering, _RankWriter(self, True, io, publish))

    def _save(self, prefix: str, options: CheckpointOptions | None, numbering: Numbering | None,
              writer: _RankWriter) -> str:
        """One distributed save in flight at a time: wait for the previous one (raising its error), then
        save through the checkpoint's save hook (its counter, lock, snapshots and background runner)."""
        options = replace(options or CheckpointOptions(), max_in_flight=1)
        self.checkpoint.sync()
        if options.enable_async:
            writer.group = self._async_group()
        return self.checkpoint._write(prefix, options, numbering=numbering, writer=writer)

    def _async_group(self) -> Communicator:
        """A second communicator for background saves, so they never match the main thread's messages."""
        if self._background_group is None:
            self._background_group = self.group.duplicate()
        return self._background_group

    def sync(self) -> None:
        """Wait for the background save, if any; raise its error (once)."""
        self.checkpoint.sync()

    # -- restoring -------------------------------------------------------------------------------

    def restore(self, save_path: str | os.PathLike, options: CheckpointOptions | None = None) -> RestoreResult:
        """Restore every live variable's part on this rank from a prefix, or a directory's latest checkpoint.

        The checkpoint may have been saved by any number of ranks (or by one process), with any
        layout. Every rank verifies every byte it needs before any rank assigns, then reads the
        values straight into the variables' memory (a DTensor's local shard), verified again; a
        failure on any rank fails every rank with nothing assigned (``PartialDistributedRestoreError``
        only if bytes change between the two reads, naming what this rank assigned; with
        ``options.atomic_restore`` values are read once into new buffers and not even that can
        change a variable). PyTorch optimizer state
        not created yet (a fresh optimizer) is created from the checkpoint first, sharded like its
        parameter; it is removed again if the restore fails. Values of saved objects that do not
        exist yet (an optimizer attached later) are kept and assigned when they are attached
        (``experimental_skip_slot_variables``: not for optimizer slots), as a single-process restore does.
        """
        options = options or CheckpointOptions()
        self.sync()
        prefix = resolve_restore_path(os.fspath(save_path))
        created = _create_torch_slots(self.checkpoint, prefix)
        try:
            with local_shards():
                return restore_distributed(prefix, self.checkpoint, self.group,  # type: ignore[arg-type]  # any Communicator
                                           replicated=self.replicated, atomic=options.atomic_restore,
                                           skip_slots=options.experimental_skip_slot_variables)
        except BaseException:
            created.undo()
            raise

    def close(self) -> None:
        """Wait for a pending save, then release the communicators and engines."""
        try:
            self.sync()
        finally:
            if self._background_group is not None:
                self._background_group.close()
                self._background_group = None
            self.group.close()
            self._engines.close()

    def __enter__(self) -> DistributedCheckpoint:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _RankWriter:
    """This rank's part of one distributed save, as ``Checkpoint._write``'s writer: the tensors with
    their layouts, and the protocol of ``save.save_distributed`` run over them (which computes its
    own CRCs: an asynchronous capture need not)."""

    checksums = False

    def __init__(self, owner: DistributedCheckpoint, state: bool, io, publish: Callable[[str], None] | None):
        self.owner, self.state, self.io, self.publish = owner, state, io, publish
        self.group: Communicator = owner.group  # an asynchronous save's own communicator, set by ``_save``
        self.layouts: dict[str, Tensor] = {}

    def values(self) -> Mapping[str, Any]:
        tensors = collect(self.owner.checkpoint)
        self.layouts = {t.key: t for t in tensors}
        return {t.key: t.value for t in tensors}

    def write(self, path: str, tensors: Mapping[str, Any], options: CheckpointOptions,
              crcs: Mapping[str, int]) -> None:
        values = [replace(t, value=tensors[key]) for key, t in self.layouts.items()]
        save_distributed(path, values, self.group, options=options, engines=self.owner._engines, state=self.state,
                         io=self.io, publish=self.publish)


class _NothingCreated:
    def undo(self) -> None:
        pass


def _create_torch_slots(checkpoint: Any, prefix: str):
    """Optimizer state a restore needs that the live torch optimizers lack (none without torch)."""
    if "gpuckpt.torch" not in sys.modules:
        return _NothingCreated()
    from .torch_state import create_missing_slots

    return create_missing_slots(checkpoint, prefix)


__all__ = ["DistributedCheckpoint", "Tensor", "communicator"]
