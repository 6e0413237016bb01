"""DistributedCheckpoint: ``Checkpoint.save``/``restore`` for a job of many MPI ranks."""

from __future__ import annotations

import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from typing import Any

from ..checkpoint import resolve_restore_path
from ..engine.capture import CapturePool
from ..engine.select import EngineCache
from ..errors import InvalidArgumentError
from ..options import CheckpointOptions
from .comm import Group, mpi
from .restore import RestoreResult, restore_distributed
from .save import collect, save_distributed


class DistributedCheckpoint:
    """Saves and restores a :class:`gpuckpt.Checkpoint` whose variables are spread over MPI ranks.

    Every rank builds the same object structure and wraps its ``Checkpoint``; variables declared
    with :func:`set_layout` as ``Sharded`` hold this rank's block, all others are ``Replicated``.
    Every rank calls the same methods in the same order (they are collective).

    ``comm``: an mpi4py communicator (default ``MPI.COMM_WORLD``; it is duplicated).
    ``timeout``: seconds, from the call, within which every rank must have written its shard (or
    read its part); a rank silent past it fails the operation on every rank with
    ``DistributedError``, and rank 0 commits nothing if its own writing overran it. Set it well
    above the slowest rank's write time.
    ``replicated``: ``"read"`` (every rank reads replicated tensors; the faster in
    ``bench/bench_mpi.py``) or ``"broadcast"`` (rank 0 reads them and broadcasts); see ``restore.py``.
    """

    def __init__(self, checkpoint: Any, comm: Any = None, *, timeout: float = 300.0, replicated: str = "read"):
        self.checkpoint = checkpoint
        self.group = Group(comm, timeout=timeout)
        self.replicated = replicated
        self._engines = EngineCache()
        self._captures = CapturePool()  # host snapshots of async saves, reused
        self._background: ThreadPoolExecutor | None = None
        self._background_group: Group | None = None
        self._pending: Future | None = None
        self._lock = threading.Lock()

    @property
    def rank(self) -> int:
        return self.group.rank

    @property
    def size(self) -> int:
        return self.group.size

    # -- saving ----------------------------------------------------------------------------------

    def write(self, file_prefix: str | os.PathLike, options: CheckpointOptions | None = None, *, io=None) -> str:
        """Write a checkpoint at exactly ``file_prefix`` (no counter, no state file); returns the prefix.

        ``io`` substitutes the system calls of this rank's shard writes (fault injection in tests).
        """
        return self._save(os.fspath(file_prefix), options or CheckpointOptions(), state=False, io=io)

    def save(self, file_prefix: str | os.PathLike, options: CheckpointOptions | None = None, *, io=None) -> str:
        """Write ``file_prefix-N`` (N: the incremented ``save_counter``), then name it in the state file.

        With ``options.enable_async`` the values are snapshotted to host memory and the write and
        commit run on a background thread: this returns the path at once; :meth:`sync` (or the
        next save or restore) waits for it and raises its error, once.
        """
        options = options or CheckpointOptions()
        self.sync()
        counter = self.checkpoint.save_counter
        counter.assign_add(1)
        path = f"{os.path.abspath(os.fspath(file_prefix))}-{int(counter.numpy())}"
        try:
            return self._save(path, options, state=True, io=io)
        except BaseException:
            counter.assign_sub(1)  # nothing was committed (on every rank alike), so the number is free
            raise

    def _save(self, prefix: str, options: CheckpointOptions, *, state: bool, io) -> str:
        if not options.enable_async:
            self.sync()
            return save_distributed(prefix, collect(self.checkpoint), self.group, options=options,
                                    engines=self._engines, state=state, io=io)
        group = self._async_group()
        tensors = collect(self.checkpoint)
        captured = self._captures.capture({t.key: t.value for t in tensors})  # the values at this call
        tensors = [replace(t, value=captured.tensors[t.key]) for t in tensors]
        counter = self.checkpoint.save_counter if state else None
        self._pending = self._background.submit(self._save_in_background, prefix, tensors, captured, group,
                                                options, state, io, counter)
        return prefix

    def _save_in_background(self, prefix, tensors, captured, group, options, state, io, counter) -> str:
        try:
            return save_distributed(prefix, tensors, group, options=options, engines=self._engines, state=state,
                                    io=io)
        except BaseException:
            if counter is not None:
                counter.assign_sub(1)
            raise
        finally:
            self._captures.release(captured)

    def _async_group(self) -> Group:
        """A second communicator for background saves, so they never match the main thread's messages."""
        if self._background is None:
            MPI = mpi()
            if MPI.Query_thread() < MPI.THREAD_MULTIPLE:
                raise InvalidArgumentError("async distributed saves need MPI_THREAD_MULTIPLE; this MPI was initialised "
                                    "with less (set mpi4py.rc.thread_level = 'multiple' before importing MPI)")
            self._background_group = Group(self.group.comm, timeout=self.group.timeout, grace=self.group.grace)
            self._background = ThreadPoolExecutor(1, thread_name_prefix="gpuckpt-mpi-save")
        return self._background_group

    def sync(self) -> None:
        """Wait for the background save, if any; raise its error (once)."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    # -- restoring -------------------------------------------------------------------------------

    def restore(self, save_path: str | os.PathLike) -> RestoreResult:
        """Restore every live variable's part on this rank from a prefix, or a directory's latest checkpoint.

        The checkpoint may have been saved by any number of ranks (or by one process).
        """
        self.sync()
        prefix = resolve_restore_path(os.fspath(save_path))
        return restore_distributed(prefix, self.checkpoint, self.group, replicated=self.replicated)

    def close(self) -> None:
        """Wait for a pending save, then release the communicators and engines."""
        try:
            self.sync()
        finally:
            if self._background is not None:
                self._background.shutdown()
                self._background_group.close()
                self._background = None
            self.group.close()
            self._engines.close()
            self._captures.close()

    def __enter__(self) -> DistributedCheckpoint:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
