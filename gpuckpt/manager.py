"""CheckpointManager: numbered saves in one directory, retention, and TF's state file.

The manager only ever deletes checkpoints it lists as managed, and only after the new
checkpoint is committed. Like TF it writes the state file twice around the deletions: once
naming the new checkpoint (so a crash mid-sweep still finds it), once without the deleted ones.

Each save holds the directory's lock (``storage.recovery.DirectoryLock``) from start to end,
so managers in several processes never interleave their state-file updates and deletions,
and begins by sweeping away what interrupted saves left behind (docs/durability.md).

Confinement: the manager deletes only checkpoints inside its directory (resolved, so never
through a symbolic link out of it), and ignores paths in the state file that point outside it
unless ``follow_paths_outside_directory=True``. A damaged state file, or one naming a missing
checkpoint, falls back to the newest ``<checkpoint_name>-<N>`` that verifies
(``storage.fallback``), so ``restore_or_initialize`` never starts from scratch beside one.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from . import retention
from .checkpoint import Checkpoint, Numbering
from .errors import CheckpointError, CommittedSaveError, InvalidArgumentError, StatePublishError
from .format.statefile import CheckpointState
from .options import CheckpointOptions, StorageConfig
from .retention import CheckpointInfo
from .session import restore_newest_verified
from .storage import fallback, filesystem, recovery

log = logging.getLogger(__name__)


class CheckpointManager:
    """Saves ``checkpoint`` as ``directory/checkpoint_name-N`` and keeps the newest ``max_to_keep``.

    ``clock`` (gpuckpt's addition, default ``time.time``) supplies the timestamps that
    ``keep_checkpoint_every_n_hours`` compares; tests inject a fake one.
    ``follow_paths_outside_directory`` (gpuckpt's addition) lets the state file name checkpoints
    outside ``directory`` for restoring; they are never deleted either way.
    """

    def __init__(self, checkpoint: Checkpoint, directory: str | os.PathLike, max_to_keep: int | None,
                 keep_checkpoint_every_n_hours: float | None = None, checkpoint_name: str = "ckpt",
                 step_counter: Any = None, checkpoint_interval: int | None = None,
                 init_fn: Callable[[], Any] | None = None, last_checkpoint_step: int | None = None, *,
                 clock: Callable[[], float] = time.time, follow_paths_outside_directory: bool = False):
        if max_to_keep is not None and max_to_keep <= 0:
            raise ValueError(f"Expected a positive integer or `None` for `max_to_keep`, got {max_to_keep}.")
        if checkpoint_interval is not None and step_counter is None:
            raise ValueError("`step_counter` should be passed if `checkpoint_interval` is not None.")
        self._checkpoint = checkpoint
        self._directory = os.fspath(directory)
        self._prefix = os.path.join(self._directory, checkpoint_name)
        self._max_to_keep = max_to_keep
        self._keep_every_n_hours = keep_checkpoint_every_n_hours
        self._step_counter = step_counter
        self._checkpoint_interval = checkpoint_interval
        # the step of the last save, where checkpoint_interval counts from (TF 2.21's last_checkpoint_step)
        self._last_checkpoint_step: int | None = (
            int(last_checkpoint_step) if last_checkpoint_step is not None and checkpoint_interval is not None
            else None)
        self._init_fn = init_fn
        self._clock = clock
        self._follow_outside = follow_paths_outside_directory
        self._name = checkpoint_name
        try:
            state, damage = filesystem.read_state(self._directory), None
        except CheckpointError as exc:
            state, damage = None, exc
        self._recover(state)
        self._fall_back_if_needed(state, damage)

    def _recover(self, state: CheckpointState | None) -> None:
        """Take over the checkpoints a previous manager listed as managed (TF's rules)."""
        now = self._clock()
        self._managed: list[CheckpointInfo] = []
        self._latest: str | None = None
        if state is None:
            self._last_preserved = now - 1.0  # a quickly re-created manager must not preserve at once
            return
        self._latest = self._followed(state.model_checkpoint_path)
        self._last_preserved = state.last_preserved_timestamp
        if now < self._last_preserved:
            log.warning("time.time() returned a value %f seconds behind the last preserved checkpoint "
                        "timestamp.", self._last_preserved - now)
            self._last_preserved = now
        paths = state.all_model_checkpoint_paths
        stamps = state.all_model_checkpoint_timestamps or (self._last_preserved,) * len(paths)
        for path, stamp in zip(paths, stamps):
            stamp = min(stamp, now)
            followed = self._followed(path)
            if stamp > self._last_preserved and followed is not None:
                self._managed.append(CheckpointInfo(followed, stamp))

    def _fall_back_if_needed(self, state: CheckpointState | None, damage: CheckpointError | None) -> None:
        """Without a usable latest checkpoint, take the newest ``<name>-<N>`` that verifies (with a warning).

        A latest whose index is aside (an overwrite in flight or cut short) is kept: the sweep of
        ``restore_or_initialize`` puts it back, and an older one would roll the run back.
        """
        if self._latest is not None and (os.path.exists(self._latest + ".index") or _aside(self._latest)):
            return
        if damage is not None:
            reason = f"ignored the damaged checkpoint state file: {damage}"
        elif state is None:
            return  # no state file: like TF, nothing is managed (a write() may have left files here)
        elif self._latest is None:
            reason = "the checkpoint state file names a checkpoint outside the directory"
        else:
            reason = f"the checkpoint state file names {self._latest!r}, which has no index"
        if not fallback.numbered_checkpoints(self._directory, self._name):
            if damage is not None:
                log.warning("%s; no checkpoint named %r to fall back to", reason, self._name)
            return
        found = fallback.newest_verifiable(self._directory, reason, name=self._name)
        if found is None:
            return
        self._latest = found
        if state is None:  # damaged: what it listed is unknown, so manage what is on disk, oldest first
            now = self._clock()
            self._managed = [CheckpointInfo(c.prefix, min(_mtime(c.prefix + ".index"), now))
                             for c in reversed(fallback.numbered_checkpoints(self._directory, self._name))]
        elif all(info.path != found for info in self._managed):
            self._managed.append(CheckpointInfo(found, self._clock()))

    def _followed(self, path: str) -> str | None:
        """A state file's path made absolute; None (with a warning) if it leads outside the directory
        and the manager was not told to follow such paths."""
        absolute = self._absolute(path)
        if self._follow_outside or self._inside(absolute):
            return absolute
        log.warning("ignoring %r named in the checkpoint state file of %r: it is outside that directory "
                    "(pass follow_paths_outside_directory=True to follow it)", path, self._directory)
        return None

    def _inside(self, prefix: str) -> bool:
        """Whether ``prefix`` names a file in this directory (or below), with symbolic links resolved."""
        root = os.path.realpath(self._directory)
        parent = os.path.realpath(os.path.dirname(os.path.abspath(prefix)))
        return os.path.commonpath([root, parent]) == root

    def _relative(self, path: str) -> str:
        return os.path.relpath(path, self._directory)

    def _absolute(self, path: str) -> str:
        return path if os.path.isabs(path) else os.path.join(self._directory, path)

    # -- properties -------------------------------------------------------------------

    @property
    def directory(self) -> str:
        return self._directory

    @property
    def checkpoint(self) -> Checkpoint:
        return self._checkpoint

    @property
    def checkpoint_interval(self) -> int | None:
        return self._checkpoint_interval

    @property
    def latest_checkpoint(self) -> str | None:
        """The newest checkpoint's prefix, or None."""
        return self._latest

    @property
    def checkpoints(self) -> list[str]:
        """Managed checkpoint prefixes, oldest first."""
        return [info.path for info in self._managed]

    # -- saving -----------------------------------------------------------------------

    def save(self, checkpoint_number: Any = None, check_interval: bool = True,
             options: CheckpointOptions | None = None) -> str | None:
        """Save a new checkpoint unless the interval says not yet; return its prefix or None.

        With ``options.enable_async`` it returns once the values are captured; the checkpoint
        joins ``checkpoints`` and ``latest_checkpoint``, and older ones are deleted, once it
        is committed. Each save holds the directory lock while it writes and commits.
        """
        if not self._interval_allows(check_interval):
            return None
        options = options or CheckpointOptions()
        number = None if checkpoint_number is None else _checked_number(checkpoint_number)
        storage = options.storage
        return self._checkpoint._write(
            self._prefix, options, numbering=Numbering(lambda n: f"{self._prefix}-{n if number is None else number}"),
            guard=lambda: self._locked_and_cleaned(storage),
            write_done_callback=lambda path: self._record_and_delete_old(path, storage))

    @contextlib.contextmanager
    def _locked_and_cleaned(self, storage: StorageConfig) -> Iterator[None]:
        """Around a save's writing and commit: the directory lock, then what interrupted saves left cleaned up."""
        with recovery.DirectoryLock(self._directory, storage):
            recovery.clean_leftovers(os.path.dirname(self._prefix), os.path.basename(self._prefix), storage)
            self._forget_deleted()
            yield

    def _forget_deleted(self) -> None:
        """Stop managing checkpoints whose index is gone (deleted by another manager or by hand)."""
        self._managed = [info for info in self._managed if os.path.lexists(info.path + ".index")]

    def _interval_allows(self, check_interval: bool) -> bool:
        if self._checkpoint_interval is None:
            return True
        step = int(np.asarray(self._step_counter))
        last = self._last_checkpoint_step
        if last is not None and (step == last or check_interval and step < last + self._checkpoint_interval):
            return False
        self._last_checkpoint_step = step
        return True

    def _record_and_delete_old(self, path: str, storage: StorageConfig) -> None:
        """List the committed ``path`` in the state file, then apply retention.

        StatePublishError: the checkpoint was withdrawn (nothing changed); CommittedSaveError: it is
        committed and listed, but deleting old checkpoints or rewriting the state file failed.
        """
        previous = self._managed, self._latest
        self._managed = [info for info in self._managed if info.path != path]
        self._managed.append(CheckpointInfo(path, self._clock()))
        self._latest = path
        try:  # first, so that a crash while deleting still finds the new checkpoint
            filesystem.publish_state(self._directory, self._state(), path, storage)
        except StatePublishError:
            self._managed, self._latest = previous
            raise
        if self._max_to_keep is None:
            return
        try:
            self._delete_old(storage)
        except CheckpointError as exc:
            raise CommittedSaveError(f"checkpoint {path!r} is committed and listed, but retention failed: {exc}",
                                     checkpoint=path, path=exc.path, errno=exc.errno) from exc

    def _delete_old(self, storage: StorageConfig) -> None:
        """Delete what the retention policy no longer keeps, then list only what is left."""
        outcome = retention.decide_retention(self._managed, max_to_keep=self._max_to_keep,
                                             keep_checkpoint_every_n_hours=self._keep_every_n_hours,
                                             last_preserved_timestamp=self._last_preserved)
        for info in outcome.deleted:
            if self._inside(info.path):
                filesystem.remove_checkpoint(info.path, storage)
            else:
                log.warning("not deleting checkpoint %r: it is outside the manager's directory %r",
                            info.path, self._directory)
        self._managed = list(outcome.managed)
        self._last_preserved = outcome.last_preserved_timestamp
        filesystem.write_state(self._directory, self._state(), storage)

    def _state(self) -> CheckpointState:
        """The state file's contents; written only after a save has set the latest checkpoint."""
        latest = self._latest
        assert latest is not None, "_record_and_delete_old sets the latest checkpoint before writing the state"
        return CheckpointState(
            model_checkpoint_path=self._relative(latest),
            all_model_checkpoint_paths=tuple(self._relative(i.path) for i in self._managed),
            all_model_checkpoint_timestamps=tuple(i.timestamp for i in self._managed),
            last_preserved_timestamp=self._last_preserved)

    # -- restoring --------------------------------------------------------------------

    def restore_or_initialize(self) -> str | None:
        """Restore the latest checkpoint and return its path; else run ``init_fn`` and return None.

        First puts back a checkpoint whose overwrite a crash interrupted (best effort: skipped
        where the directory cannot be locked, e.g. when it is read-only). A checkpoint whose data
        fails verification is skipped, with a warning naming it, for the newest older one that
        verifies; if none does, the newest one's error is raised (training never silently restarts).
        """
        if self._latest is not None:
            recovery.try_clean_leftovers(os.path.dirname(self._prefix), os.path.basename(self._prefix))
            candidates = [self._latest] + [p for p in reversed(self.checkpoints) if p != self._latest]
            restored = restore_newest_verified(self._checkpoint, candidates)
            if self._checkpoint_interval is not None:
                self._last_checkpoint_step = int(np.asarray(self._step_counter))
            return restored
        if self._init_fn is not None:
            self._init_fn()
        return None

    def sync(self) -> None:
        """Wait for the checkpoint's pending saves (see ``Checkpoint.sync``)."""
        self._checkpoint.sync()


def _aside(prefix: str) -> bool:
    """Whether the index of ``prefix`` was renamed aside by an overwrite (live or cut short)."""
    return any(recovery.LEFTOVER.fullmatch(os.path.basename(p))
               for p in glob.glob(glob.escape(prefix) + ".index.old-*"))


def _mtime(path: str) -> float:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return 0.0


def _checked_number(value: Any) -> int:
    """A ``checkpoint_number`` (int, NumPy or gpuckpt integer scalar) as an int; else InvalidArgumentError."""
    array = np.asarray(value.numpy() if hasattr(value, "numpy") else value)
    if array.shape != () or array.dtype.kind not in "iu":
        raise InvalidArgumentError(f"checkpoint_number must be an integer scalar, got {value!r}")
    return int(array)
