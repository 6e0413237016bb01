"""Checkpoint: TF's ``tf.train.Checkpoint`` façade over graph walk, saver and restorer."""

from __future__ import annotations

import contextlib
import copy
import functools
import os
import threading
import weakref
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from . import gcpause, saver
from . import strict as strict_restore
from .engine.capture import CapturePool
from .engine.select import EngineCache
from .errors import CommittedSaveError, InvalidArgumentError, NotFoundError
from .format.statefile import CheckpointState
from .futures import AsyncSaver, SaveHandle
from .graph import LiveGraph, LiveObjects, live_objects, walk
from .options import CheckpointOptions, callback_arity
from .pystate import PythonState, is_plain
from .reader import latest_checkpoint
from .save_cache import SaveCache
from .session import open_session
from .status import CheckpointLoadStatus, InitializationOnlyStatus, NameBasedSaverStatus, load_status
from .storage import commit as storage_commit
from .storage import filesystem
from .trackable.base import Trackable, as_trackable, is_trackable
from .trackable.module import AutoTrackable
from .trackable.variable import Variable

_SUFFIX_HINT = ("Please double-check that the path is correct. You may be missing the checkpoint suffix "
                "(e.g. the '-1' in 'path/to/ckpt-1').")


class Checkpoint(AutoTrackable):
    """Groups trackable objects and saves or restores them in TF's checkpoint format.

    ``Checkpoint(model=m, optimizer=opt)`` makes itself the root of the object graph, with
    the keyword arguments as children in sorted order; ``Checkpoint(root, **kwargs)``
    makes ``root`` the graph root and attaches the keyword arguments (and ``root`` itself,
    as TF does) to it. Lists, dicts and tuples are accepted and tracked.
    """

    def __init__(self, root: Any = None, **kwargs: Any):
        self._init_machinery()
        self._self_root: Callable[[], Trackable | None] | None = None  # the graph root, strongly or weakly held
        self._self_attached: list[tuple[str, Callable[[], Trackable | None]]] = []
        self._self_save_counter: Variable | None = None
        root_obj = None
        if root is not None:
            root_obj = _dereference(root, "root")
            self._self_root = weakref.ref(root_obj) if isinstance(root, weakref.ref) else _Strong(root_obj)
            kwargs["root"] = root
        for name, value in sorted(kwargs.items()):
            if isinstance(value, weakref.ref) and root_obj is None:
                raise InvalidArgumentError(
                    f"Checkpoint was given {name} by weak reference without a root: the Checkpoint itself would "
                    "be the root and could not save it; pass it as root=..., or pass the object itself")
            if type(value) in (dict, list, tuple) and value and is_plain(value):  # empty ones may gain trackables
                value = PythonState(value)  # Checkpoint(meta={"epoch": 3}): saved, restored into ckpt.meta.value
            setattr(self, name, value)  # with a root, a weak reference stays as it is, not tracked (as in TF)
            converted = _dereference(getattr(self, name), name)
            if root_obj is not None:
                self._attach(root_obj, name, converted, weakly=isinstance(value, weakref.ref))
        if root_obj is not None:
            self._self_save_counter = root_obj._lookup_dependency("save_counter")  # type: ignore[assignment]

    def _init_machinery(self) -> None:
        """The per-object save machinery: staging memory, locks, background writer (never copied)."""
        self._self_engines = EngineCache()  # GPU staging, sized once, reused by every save
        self._self_save_lock = threading.RLock()  # one save or write at a time; managers hold it too
        self._self_async: AsyncSaver | None = None  # the background writer, created by the first async save
        self._self_captures = CapturePool()  # host snapshots of async saves, reused
        self._self_last_save: SaveHandle | None = None
        self._self_save_cache = SaveCache()  # the last save's graph walk, keys and object graph
        self._self_plans = saver.PlanCache()  # the last save's plan and index layout
        weakref.finalize(self, self._self_engines.close)

    def __deepcopy__(self, memo: dict) -> "Checkpoint":
        """A copy holding copies of every object (variables included) and its own save machinery, as TF's."""
        copied = type(self).__new__(type(self))
        memo[id(self)] = copied
        _leave_pending_restores(self._root(), self._attached(), memo)
        copied._init_machinery()
        for name, value in self.__dict__.items():
            if name not in _MACHINERY:
                object.__setattr__(copied, name, copy.deepcopy(value, memo))
        return copied

    def _root(self) -> Trackable:
        """The object at the root of the graph: the one given as ``root``, else this checkpoint."""
        if self._self_root is None:
            return self
        root = self._self_root()
        if root is None:
            raise InvalidArgumentError("the root object of this Checkpoint was passed by weak reference and no "
                                       "longer exists; nothing is left to save or restore")
        return root

    def _attached(self) -> list[tuple[str, Trackable]]:
        """The edges attached to the root from outside (the kwargs, ``root`` itself, ``save_counter``)."""
        edges = []
        for name, ref in self._self_attached:
            value = ref()
            if value is None:
                raise InvalidArgumentError(f"the object passed to Checkpoint as {name!r} by weak reference no "
                                           "longer exists")
            edges.append((name, value))
        return edges

    def _attach(self, root: Trackable, name: str, value: Trackable, weakly: bool) -> None:
        existing = root._lookup_dependency(name)
        if existing is None:
            self._self_attached.append((name, weakref.ref(value) if weakly else _Strong(value)))
        elif existing is not value:
            raise ValueError(f"Cannot create a Checkpoint with keyword argument {name} if root.{name} "
                             "already exists.")

    @property
    def save_counter(self) -> Variable:
        """An int64 variable counting ``save()`` calls; created on first use, saved as ``save_counter``."""
        return self._maybe_create_save_counter()

    def _maybe_create_save_counter(self) -> Variable:
        """Create the counter as the next child of the graph root; a deferred value restores it."""
        if self._self_save_counter is None:
            counter = Variable(np.int64(0), name="save_counter", trainable=False)
            self._self_save_counter = counter
            if self._self_root is not None:
                self._self_attached.append(("save_counter", _Strong(counter)))
                self._root()._apply_deferred("save_counter", counter)
            else:
                self._dependencies()["save_counter"] = counter
                self._dependencies_changed()
        return self._self_save_counter

    def _graph(self) -> LiveGraph:
        return walk(self._root(), self._attached())

    def _live_objects(self) -> LiveObjects:
        return live_objects(self._root(), self._attached())

    # -- saving -----------------------------------------------------------------------

    def write(self, file_prefix: str | os.PathLike, options: CheckpointOptions | None = None) -> str:
        """Write a checkpoint at exactly ``file_prefix``; no counter, no state file. Returns the prefix.

        With ``options.enable_async`` it returns once the values are captured; ``last_save``
        then tells when the files are committed.
        """
        return self._write(os.fspath(file_prefix), options)

    def save(self, file_prefix: str | os.PathLike, options: CheckpointOptions | None = None) -> str:
        """Write ``file_prefix-N`` (N: the incremented ``save_counter``) and name it in the state file.

        With ``options.enable_async`` it returns once the values are captured (``save_counter``
        already reads N); the state file names the checkpoint only once it is committed.
        """
        options = options or CheckpointOptions()
        prefix = os.fspath(file_prefix)
        return self._write(prefix, options, numbering=Numbering(lambda n: f"{prefix}-{n}"),
                           write_done_callback=functools.partial(self._publish, options=options))

    def _write(self, file_prefix: str, options: CheckpointOptions | None = None, *,
               numbering: Numbering | None = None, write_done_callback: Callable[[str], object] | None = None,
               guard: Callable[[], AbstractContextManager] | None = None, writer: SaveWriter | None = None) -> str:
        """The one save entry point (``write``, ``save``, ``CheckpointManager`` and ``DistributedCheckpoint``).

        Under the save lock: raise an earlier background error (a synchronous save also waits for
        the asynchronous ones), take a number when ``numbering`` says so (``file_prefix`` is then
        ignored for ``numbering.path``), and write the values now or capture them and write them in
        the background. ``guard()`` is entered around the writing and ``write_done_callback(path)``,
        which runs once the files are committed, before the options' write callbacks. ``writer``
        replaces how values are gathered and written (a distributed save writes its rank's shard).
        A save that commits nothing gives its number back (see ``_run_save``). Returns the path.
        """
        options = options or CheckpointOptions()
        source = writer if writer is not None else _LocalWriter(self)
        with self._self_save_lock:
            self._make_room(options)
            path, undo = self._take_number(file_prefix, numbering)

            def persist(tensors: Mapping[str, Any], crcs: Mapping[str, int]) -> None:
                with guard() if guard is not None else contextlib.nullcontext():
                    source.write(path, tensors, options, crcs)
                    if write_done_callback is not None:
                        write_done_callback(path)

            give_back = numbering is not None and numbering.give_back_on_async_failure
            self._run_save(path, options, source, persist, undo, give_back_async=give_back)
        return path

    def _take_number(self, file_prefix: str, numbering: Numbering | None) -> tuple[str, Callable[[], object]]:
        """The save's path, and how to give its number back (nothing to give back without ``numbering``)."""
        if numbering is None:
            return file_prefix, _nothing
        counter = self.save_counter
        previous = int(counter.numpy())
        number = numbering.advance(previous)
        counter.assign(number)
        return numbering.path(number), functools.partial(counter.assign, previous)

    def _make_room(self, options: CheckpointOptions) -> None:
        """Before a save, the error of an earlier background save is raised; a synchronous save
        also waits for the asynchronous ones in flight (an async one waits in ``_stage``)."""
        if self._self_async is None:
            return
        if options.enable_async:
            self._self_async.raise_pending_error()
        else:
            self._self_async.sync()

    def _run_save(self, path: str, options: CheckpointOptions, source: SaveWriter,
                  persist: Callable[[Mapping[str, Any], Mapping[str, int]], None], undo: Callable[[], object], *,
                  give_back_async: bool) -> None:
        """``persist`` the current ``source.values()`` now, or capture them (with their CRCs, if the
        writer takes them) and persist them in the background.

        Called with the save lock held, after ``_make_room``. ``undo`` (give the checkpoint number
        back) runs when a synchronous save commits nothing; an asynchronous one that fails later
        leaves its number unused, since later saves may already have taken the next ones, unless
        ``give_back_async`` (a caller that lets no later save start first).
        """
        if options.enable_async:
            self._stage(path, options, source, persist, undo, give_back_async)
            return
        try:
            with gcpause.paused():  # thousands of per-tensor records, as in a restore
                persist(source.values(), {})
        except BaseException as exc:
            if not isinstance(exc, CommittedSaveError):  # only then does the checkpoint stay listed
                undo()
            raise
        _run_callbacks(options, path)

    def _publish(self, path: str, options: CheckpointOptions) -> None:
        """Name the committed checkpoint at ``path`` in its directory's state file."""
        directory = os.path.dirname(path) or os.curdir
        relative = os.path.relpath(path, directory)
        filesystem.publish_state(directory, CheckpointState(relative, (relative,)), path, options.storage)

    def _tensors(self) -> dict[str, Any]:
        """Every value to save under its checkpoint key, the object graph last (the graph walk, keys
        and encoded graph of the last save reused while they still hold: ``save_cache``)."""
        return self._self_save_cache.tensors(self._root(), self._attached())

    def _write_files(self, prefix: str, tensors: Mapping[str, Any], options: CheckpointOptions,
                     crcs: Mapping[str, int]) -> None:
        saver.write_tensors(prefix, tensors, options=options, max_shard_size=options.max_shard_size,
                            engines=self._self_engines, known_crcs=crcs, plans=self._self_plans)

    def _stage(self, path: str, options: CheckpointOptions, source: SaveWriter,
               persist: Callable[[Mapping[str, Any], Mapping[str, int]], None], undo: Callable[[], object],
               give_back_async: bool) -> None:
        """Wait for a place in flight, capture the values, and ``persist`` them in the background."""
        background = self._background()
        try:
            background.reserve(options.max_in_flight)  # waits while the bound is reached
        except BaseException:
            undo()
            raise
        try:
            with gcpause.paused():  # the caller's part only: the background write runs with the collector on
                captured = self._self_captures.capture(source.values(), checksum=source.checksums)
        except BaseException:
            undo()
            background.cancel()
            raise
        handle = SaveHandle(path)
        handle._set_staged()

        def job() -> None:
            try:
                persist(captured.tensors, captured.crcs)
            except BaseException:
                if give_back_async:
                    undo()
                raise
            finally:
                self._self_captures.release(captured)
            _run_callbacks(options, path)

        self._self_last_save = background.submit(handle, job)

    def _background(self) -> AsyncSaver:
        if self._self_async is None:
            self._self_async = AsyncSaver()
        return self._self_async

    @property
    def last_save(self) -> SaveHandle | None:
        """The most recent asynchronous save (``wait_committed()``, ``result()``), or None."""
        return self._self_last_save

    def close(self) -> None:
        """Wait for saves in flight, then release staging memory (also done when collected)."""
        if self._self_async is not None:
            self._self_async.wait()
        self._self_engines.close()
        self._self_captures.close()
        self._self_save_cache.clear()

    def sync(self) -> None:
        """Wait until every save started by this object is committed; raise a background save's error.

        TensorFlow's ``sync`` also waits; it raises a background error only on its next save. The
        files that overwrites replaced are deleted by then too (``storage.commit.settle``).
        """
        try:
            if self._self_async is not None:
                self._self_async.sync()
        finally:
            storage_commit.settle()

    # -- restoring --------------------------------------------------------------------

    def read(self, save_path: str | os.PathLike, options: CheckpointOptions | None = None, *,
             strict: bool = True) -> CheckpointLoadStatus | NameBasedSaverStatus:
        """Restore from the checkpoint at prefix ``save_path``; values of objects created later wait for them.
        A TF1 checkpoint (no object graph) is restored by variable name (``gpuckpt.namebased``).

        PyTorch modules and optimizers are restored strictly (``gpuckpt.strict``): any missing or
        unexpected key raises ``UnmatchedStateError`` before anything is assigned, unless ``strict=False``.
        """
        options = options or CheckpointOptions()
        if self._self_async is not None:
            self._self_async.wait()  # restore what is committed; a background error stays for sync()
        with gcpause.paused():  # open, strict check and start: thousands of per-tensor records
            session = open_session(os.fspath(save_path), skip_slots=options.experimental_skip_slot_variables,
                                   engines=self._self_engines, io_device=options.io_device,
                                   atomic=options.atomic_restore, ring_bytes=options.restore_ring_bytes)
            root, attached = self._root(), self._attached()
            if strict:
                try:
                    strict_restore.check(session, root, attached)
                except BaseException:
                    session.storage.close()
                    raise
            session.start(root, attached)
        return load_status(session, self._live_objects)

    def restore(self, save_path: str | os.PathLike | None,
                options: CheckpointOptions | None = None, *, strict: bool = True
                ) -> CheckpointLoadStatus | NameBasedSaverStatus | InitializationOnlyStatus:
        """``read`` plus ``save_counter``; ``save_path`` may also be a directory or a SavedModel.

        A directory resolves to its SavedModel variables (``D/variables/variables``) or to the
        latest checkpoint its state file names. ``None`` restores nothing.
        """
        if save_path is None:
            self._maybe_create_save_counter()
            return InitializationOnlyStatus()
        original = os.fspath(save_path)
        try:
            status = self.read(resolve_restore_path(original), options, strict=strict)
        except NotFoundError as exc:
            raise NotFoundError(f"Error when restoring from checkpoint or SavedModel at {original}: {exc}\n"
                                f"{_SUFFIX_HINT}", path=original, key=exc.key) from exc
        self._maybe_create_save_counter()
        return status


def resolve_restore_path(path: str) -> str:
    """A prefix stays as it is; a directory becomes its SavedModel variables or its latest checkpoint."""
    if not os.path.isdir(path):
        return path
    saved_model_variables = os.path.join(path, "variables", "variables")
    if os.path.exists(saved_model_variables + ".index"):
        return saved_model_variables
    latest = latest_checkpoint(path)
    if latest is None:
        raise NotFoundError(f"{path} is a directory with neither a 'checkpoint' state file naming an existing "
                            "checkpoint nor a SavedModel's variables/variables.index", path=path)
    return latest


_MACHINERY = frozenset({"_self_engines", "_self_save_lock", "_self_async", "_self_captures", "_self_last_save",
                        "_self_save_cache", "_self_plans"})


def _plus_one(previous: int) -> int:
    return previous + 1


@dataclass(frozen=True)
class Numbering:
    """How a save takes its number from ``save_counter`` (``Checkpoint._write``).

    The counter goes from ``previous`` to ``advance(previous)`` (one more by default), and the
    checkpoint is written at ``path(number)``. ``give_back_on_async_failure``: an asynchronous save
    that fails gives its number back (only for callers that start no save before it is done).
    """

    path: Callable[[int], str]
    advance: Callable[[int], int] = _plus_one
    give_back_on_async_failure: bool = False


class SaveWriter(Protocol):
    """What ``Checkpoint._write`` saves and how: the values by key (captured first by an
    asynchronous save, which also checksums host values when ``checksums``), then the files written
    from them (``crcs``: the masked CRC32Cs the capture computed, by key)."""

    checksums: bool

    def values(self) -> Mapping[str, Any]: ...

    def write(self, path: str, tensors: Mapping[str, Any], options: CheckpointOptions,
              crcs: Mapping[str, int]) -> None: ...


class _LocalWriter:
    """A single process's save: every value of the checkpoint's graph, written by ``saver``."""

    checksums = True

    def __init__(self, checkpoint: Checkpoint):
        self._checkpoint = checkpoint

    def values(self) -> Mapping[str, Any]:
        return self._checkpoint._tensors()

    def write(self, path: str, tensors: Mapping[str, Any], options: CheckpointOptions,
              crcs: Mapping[str, int]) -> None:
        self._checkpoint._write_files(path, tensors, options, crcs)


class _Strong:
    """A strong reference with ``weakref.ref``'s interface: calling it returns the object."""

    __slots__ = ("_obj",)

    def __init__(self, obj: Trackable):
        self._obj = obj

    def __call__(self) -> Trackable:
        return self._obj

    def __deepcopy__(self, memo: dict) -> "_Strong":
        return _Strong(copy.deepcopy(self._obj, memo))


def _leave_pending_restores(root: Trackable, attached: list[tuple[str, Trackable]], memo: dict) -> None:
    """Copies start with no deferred restorations: those belong to the originals' restore sessions
    (open checkpoint files), which are not copied."""
    seen = {id(root)}
    queue = [root]
    for obj in queue:
        state = getattr(obj, "__dict__", {}).get("_self_deferred")
        if state is not None:
            memo[id(state)] = type(state)(by_name={}, slots=[])
        for _, child in [*obj._trackable_children(), *(attached if obj is root else ())]:
            if id(child) not in seen:
                seen.add(id(child))
                queue.append(child)


def _dereference(value: Any, name: str) -> Trackable:
    """The trackable a Checkpoint argument stands for: a weak reference's referent, a framework
    object's adapter; anything else raises."""
    if isinstance(value, weakref.ref):
        value = value()
    _assert_trackable(value, name)
    return as_trackable(value)  # type: ignore[return-value]


def _assert_trackable(value: Any, name: str) -> None:
    if not is_trackable(value):
        raise ValueError(
            f"`Checkpoint` was expecting {name} to be a trackable object (a gpuckpt Variable, Module, "
            f"list, dict or tuple of them, or any gpuckpt.trackable.Trackable), got {value!r}. To save a Python "
            f"value, pass gpuckpt.PythonState({value!r}) (or a dict of plain values).")


def _nothing() -> None:
    """``write`` has no checkpoint number to give back."""


def _run_callbacks(options: CheckpointOptions, path: str) -> None:
    """Run the write callbacks in order, passing the path to those that take an argument."""
    for callback in options.write_callbacks:
        if callback_arity(callback) == 0:
            callback()
        else:
            callback(path)
