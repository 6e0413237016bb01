"""The restore pipeline: strategy → plan → engine → assignment, then every file closed.

``open_session`` opens the checkpoint (``storage.reader.FileSystemReader``) and picks the
matching strategy: object-graph matching (``gpuckpt.restorer``) when the checkpoint has an
object graph, name-based matching (``gpuckpt.namebased``) for TF1 ``Saver`` checkpoints. A
strategy turns live objects into :class:`Target`\\ s; :meth:`RestoreSession.restore_targets`
plans their reads (``restore_plan.build_restore_plan``), runs them through the engines straight
into each destination's own memory where the object offers it (``_restore_destinations``), and
hands the rest to ``_restore_tensors``. Values that wait for objects not created yet are read
too and kept in memory, so ``start`` closes every file before it returns.

What a failed restore leaves (docs/api.md, "Failed restores"): a mismatch of key, dtype,
shape or bounds is found by the plan before any byte is read, and changes nothing. Bytes that
fail their CRC are found after reading; by default values are read in place and assigned as
they verify: every other value is restored, every destination whose bytes failed is
zero-filled (no variable ever holds unverified bytes), and a ``PartialRestoreError`` names both
sets. ``CheckpointOptions(atomic_restore=True)`` reads into new buffers and assigns nothing
unless everything verified.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple, Protocol

import numpy as np

from .arrays import aligned_empty, as_device_array, is_device_array, value_spec
from .engine.cpu import read_host
from .engine.select import EngineCache, gpu_usable
from .errors import DataLossError, PartialRestoreError
from .format import strings
from .format.objgraph import OBJECT_GRAPH_KEY, ObjectGraph
from .restore_plan import Request, RestorePlan, StringItem, build_restore_plan
from .storage.reader import FileSystemReader
from .trackable import restore_order
from .trackable.base import Trackable

_MAX_NAMED = 20


class Target(NamedTuple):
    """One live value to restore: attribute ``name`` of ``obj`` from ``request.key``; ``node_id``
    is the strategy's number for the object (saved node, or live node for name-based). A NamedTuple
    (one per tensor, see ``restore_plan.Request``)."""

    node_id: int
    obj: Trackable
    name: str
    request: Request
    value: Any  # the live value, as _serialize_tensors gave it


_DTYPES: dict[np.dtype, Any] = {}
_new = tuple.__new__  # NamedTuples built without their generated ``__new__`` (one Request and Target per tensor)


def target(node_id: int, obj: Trackable, name: str, key: str, label: Any, value: Any) -> Target:
    """A target for the live ``value`` of ``obj.name`` (dtype and shape read without copying)."""
    if type(value) is np.ndarray and value.dtype.kind not in "OSU":  # the common case, without value_spec()
        dtype = _DTYPES.get(value.dtype)
        if dtype is None:
            dtype = _DTYPES[value.dtype] = value_spec(value).dtype
        return _new(Target, (node_id, obj, name, _new(Request, (key, label, dtype, value.shape, None)), value))
    spec = value_spec(value)
    return Target(node_id, obj, name, Request(key, label, spec.dtype, spec.shape), value)


class MatchStrategy(Protocol):
    """How live objects are paired with checkpoint keys; ``start`` restores through the session."""

    def start(self, session: RestoreSession, root: Trackable, attached: Sequence[tuple[str, Trackable]]) -> None: ...


class _Sink(NamedTuple):
    """Where one request's bytes land: ``host`` (a C-contiguous array), or ``device`` (a Numba
    device array); ``in_place`` when that memory is the destination's own."""

    host: np.ndarray | None
    device: Any
    in_place: bool


class RestoreSession:
    """One ``read()`` of one checkpoint into one object graph (see the module docstring)."""

    def __init__(self, storage: FileSystemReader, strategy: MatchStrategy, *, engines: EngineCache | None = None,
                 io_device: str | None = None, atomic: bool = False, ring_bytes: int | None = None):
        self.storage = storage
        self.prefix = storage.prefix
        self.entries = storage.index.entries  # kept (plain data) for deferred checks after the files close
        self.strategy = strategy
        self._engines = engines
        self._io_device = io_device
        self._gpu: bool | None = None  # decided on the first device destination (importing CUDA costs)
        self.atomic = atomic
        self.ring_bytes = ring_bytes
        self.uid = restore_order.next_restore_uid()  # a newer restore's values win over this one's (TF's rule)

    # -- what the strategy matched against (None for name-based restores) -----------------
    @property
    def saved(self) -> ObjectGraph | None:
        """The checkpoint's object graph when the strategy matches by it (strict checks and hooks read it)."""
        return getattr(self.strategy, "saved", None)

    @property
    def names(self) -> Sequence[str]:
        return getattr(self.strategy, "names", ())

    @property
    def skip_slots(self) -> bool:
        return bool(getattr(self.strategy, "skip_slots", False))

    # -- the pipeline ------------------------------------------------------------------
    def start(self, root: Trackable, attached: Sequence[tuple[str, Trackable]] = ()) -> None:
        """Match, plan, read and assign; every file is closed before this returns."""
        try:
            self.strategy.start(self, root, attached)
        finally:
            self.storage.close()

    def restore_targets(self, targets: Sequence[Target], pending: Sequence[Request] = ()) -> list[Any]:
        """Restore every target and read the ``pending`` requests (values for objects that do not exist
        yet) into new host arrays, which are returned. Raises before changing anything on a
        mismatch; see the module docstring for corrupt bytes."""
        superseded, uid = restore_order.superseded, self.uid
        targets = [t for t in targets if not superseded(t.obj, uid)]  # else a newer restore set it
        requests = [t.request for t in targets] + list(pending)
        plan = build_restore_plan(self.storage.index, requests, self.storage.shard_size, prefix=self.prefix,
                                  shard_path=self.storage.shard_path)
        record = restore_order.record  # claimed once the plan's checks passed: a refused restore claims nothing
        for t in targets:
            record(t.obj, uid)
        sinks = self._sinks(targets) + [_fresh(r) for r in pending]
        on_device = any(s.device is not None for s in sinks)
        if on_device:  # the GPU ring fills whole tensors; a sliced one is assembled on the host
            for r in plan.reads:
                if not r.in_place and sinks[r.request].device is not None:
                    sinks[r.request] = _fresh(requests[r.request])
        failed, untouched = self._read(plan, sinks, on_device)
        values: list[Any] = [None] * len(requests)
        for item in plan.strings:
            if item.request not in failed:
                try:
                    values[item.request] = self._read_string(item)
                except DataLossError as exc:
                    failed[item.request] = exc
        for i, sink in enumerate(sinks):  # what _assign hands over (values not read in place) and pending values
            if values[i] is None and (not sink.in_place or i >= len(targets)):
                values[i] = sink.host if sink.host is not None else sink.device
        if failed and self.atomic:
            raise failed[min(failed)]
        if failed:
            self._zero_failed(sinks, set(failed) - untouched)
        restored = self._assign(targets, sinks, values, set(failed) | untouched)
        if failed:
            raise _partial(self.prefix, requests, restored, failed, untouched)
        return values[len(targets):]

    def _read(self, plan: RestorePlan, sinks: Sequence[_Sink],
              any_device: bool = True) -> tuple[dict[int, DataLossError], frozenset[int]]:
        """Run the plan's numeric reads: host destinations by the CPU engine, device ones through the
        GPU ring (``any_device``: whether any sink is on a device). Returns the failures and the
        requests whose destination was left untouched."""
        on_device = [r for r in plan.reads if sinks[r.request].device is not None] if any_device else []
        host = [r for r in plan.reads if sinks[r.request].device is None] if on_device else plan.reads
        failed = read_host(self.storage, host, [s.host for s in sinks])
        untouched: frozenset[int] = frozenset()
        if on_device:
            assert self._engines is not None  # device destinations are used only when _use_gpu() found engines
            try:
                outcome = self._engines.ring(self.ring_bytes).read(self.storage, on_device, [s.device for s in sinks])
            finally:
                self._engines.release_ring()
            failed.update(outcome.failed)
            untouched = outcome.untouched
        return failed, untouched

    def _sinks(self, targets: Sequence[Target]) -> list[_Sink]:
        """Each target's sink (see :meth:`_sink`); the common case, a host array that is the very value the
        request was made from (so of its shape) in the stored layout, is decided here with fewer checks.
        Objects whose values are their destinations (``Trackable._values_are_destinations``) are not asked."""
        if self.atomic:
            return [_fresh(t.request) for t in targets]
        out: list[_Sink] = []
        append, ndarray, sink = out.append, np.ndarray, self._sink
        for t in targets:
            obj = t.obj
            offered = t.value if obj._values_are_destinations else obj._restore_destinations().get(t.name)
            request = t.request
            layout = request.dtype.numpy  # None for strings
            if offered is t.value and type(offered) is ndarray and request.block is None and layout is not None \
                    and offered.dtype == layout:  # the stored byte order, too
                flags = offered.flags
                if flags.c_contiguous and flags.writeable:
                    append(_new(_Sink, (offered, None, True)))
                    continue
            append(sink(t, offered))
        return out

    def _sink(self, t: Target, offered: Any) -> _Sink:
        """The destination's own memory when the object offers it (``offered``: what it offers for
        ``t.name``, or None) and atomicity is not asked, else a new array."""
        request = t.request
        if self.atomic or request.dtype.is_string or offered is None:
            return _fresh(request)
        if type(offered) is not np.ndarray and is_device_array(offered):
            if self._use_gpu():
                device = as_device_array(offered)
                if device.is_c_contiguous():
                    return _Sink(None, device.reshape(device.size).view(np.uint8), True)
        elif isinstance(offered, np.ndarray):
            flags = offered.flags
            if flags.c_contiguous and flags.writeable and offered.dtype == request.dtype.numpy \
                    and offered.shape == request.dest_shape:
                return _Sink(offered, None, True)
        return _fresh(request)

    def _use_gpu(self) -> bool:
        """Whether device destinations are filled on the device (only asked when one exists)."""
        if self._gpu is None:
            self._gpu = self._engines is not None and self._io_device != "cpu" and gpu_usable()
        return self._gpu

    def _read_string(self, item: StringItem) -> Any:
        return read_string(self.storage, item)

    @staticmethod
    def _zero_failed(sinks: Sequence[_Sink], written: set[int]) -> None:
        """In-place destinations that received bytes which then failed verification are zero-filled."""
        for i in written:
            sink = sinks[i]
            if not sink.in_place:
                continue
            if sink.host is not None:
                sink.host.reshape(-1).view(np.uint8)[:] = 0
            elif sink.device is not None and sink.device.size:
                sink.device.copy_to_device(np.zeros(sink.device.size, np.uint8))

    @staticmethod
    def _assign(targets: Sequence[Target], sinks: Sequence[_Sink], values: Sequence[Any],
                skipped: set[int]) -> list[int]:
        """Hand each object the values not read in place (all of its values at once), except the
        ``skipped`` ones; return the indices restored."""
        grouped: dict[int, tuple[Trackable, dict[str, Any]]] = {}
        restored = []
        for i, t in enumerate(targets):
            if i in skipped:
                continue
            restored.append(i)
            if not sinks[i].in_place:
                grouped.setdefault(id(t.obj), (t.obj, {}))[1][t.name] = values[i]
        for obj, named in grouped.values():
            obj._restore_tensors(named)
        return restored


def read_string(storage: FileSystemReader, item: StringItem) -> Any:
    """A string tensor's value (``bytes`` for a scalar, else an object array of ``bytes``), verified."""
    payload = bytearray(item.length)
    if item.length:
        storage.read_raw(item.shard, item.offset, memoryview(payload), item.key)
    count = int(np.prod(item.shape, dtype=np.int64))
    try:
        values = strings.decode(bytes(payload), count, item.crc32c, path=storage.shard_path(item.shard),
                                key=item.key)
    except DataLossError:  # its message may carry a CRC computed over the bytes: say only what was stored
        raise storage.crc_error(item.key, item.shard, item.crc32c, " (string tensor)") from None
    if len(values) != count:
        raise DataLossError(f"string tensor {item.key!r} has the wrong element count", key=item.key)
    if not item.shape:
        return values[0]
    out = np.empty(count, dtype=object)
    out[:] = values
    return out.reshape(item.shape)


def read_stored_string(storage: FileSystemReader, key: str) -> Any:
    """The value of the stored string tensor ``key`` (the object graph, for instance), verified."""
    entry = storage.index.entries[key]
    if not entry.dtype.is_string or entry.shape or entry.is_sliced:
        raise DataLossError(f"{key!r} in {storage.index_path!r} is a {entry.dtype.name} tensor of shape "
                            f"{list(entry.shape)}, not a scalar string", path=storage.index_path, key=key)
    request = Request(key, key, entry.dtype, entry.shape)
    plan = build_restore_plan(storage.index, [request], storage.shard_size, prefix=storage.prefix,
                              shard_path=storage.shard_path)
    return read_string(storage, plan.strings[0])


def _fresh(r: Request) -> _Sink:
    if r.dtype.is_string:
        return _Sink(None, None, False)
    assert r.dtype.numpy is not None  # only string dtypes have no NumPy layout
    return _Sink(aligned_empty(r.dest_shape, r.dtype.numpy), None, False)


def _partial(prefix: str, requests: Sequence[Request], restored: Sequence[int],
             failed: Mapping[int, DataLossError], untouched: frozenset[int]) -> PartialRestoreError:
    bad = sorted(set(failed) | untouched)
    failed_keys = tuple(requests[i].key for i in bad)
    restored_keys = tuple(requests[i].key for i in restored)

    def named(keys: Sequence[str]) -> str:
        return ", ".join(repr(k) for k in keys[:_MAX_NAMED]) + (", ..." if len(keys) > _MAX_NAMED else "")

    first = failed[min(failed)]
    message = (f"restore from checkpoint {prefix} found corrupt data: {first}. Not restored ({len(bad)}; "
               f"destinations that had received unverified bytes were zero-filled): {named(failed_keys)}. Restored "
               f"({len(restored_keys)}): {named(restored_keys) or 'none'}. CheckpointOptions(atomic_restore=True) "
               "restores all or nothing")
    return PartialRestoreError(message, restored=restored_keys, failed=failed_keys, path=first.path,
                               key=requests[min(failed)].key)


def slot_node_ids(graph: ObjectGraph) -> set[int]:
    """Ids of the slot-variable nodes of an object graph (saved or live)."""
    return {ref.slot_variable_node_id for node in graph.nodes for ref in node.slot_variables}


def open_session(prefix: str, *, skip_slots: bool = False, engines: EngineCache | None = None,
                 io_device: str | None = None, atomic: bool = False, ring_bytes: int | None = None) -> RestoreSession:
    """A restore session for the checkpoint at ``prefix``: object-based when it has an object
    graph, name-based (``gpuckpt.namebased``) when it was written by TF1's ``Saver``."""
    from .namebased import NameBasedMatching
    from .restorer import ObjectGraphMatching

    storage = FileSystemReader(prefix)
    try:
        if OBJECT_GRAPH_KEY in storage.index.entries:
            strategy: MatchStrategy = ObjectGraphMatching.from_storage(storage, skip_slots=skip_slots)
        else:
            strategy = NameBasedMatching(skip_slots=skip_slots)
    except BaseException:
        storage.close()
        raise
    return RestoreSession(storage, strategy, engines=engines, io_device=io_device, atomic=atomic,
                          ring_bytes=ring_bytes)


class SkippedCheckpointWarning(UserWarning):
    """A checkpoint was skipped on resume because its data failed verification."""


def restore_newest_verified(checkpoint, candidates: Sequence[str]) -> str:
    """``checkpoint.restore`` the first of ``candidates`` (newest first) whose data verifies; warn
    naming each one skipped. Raises the first one's error when none verifies."""
    import warnings

    first: DataLossError | None = None
    for path in candidates:
        try:
            checkpoint.restore(path)
            return path
        except DataLossError as exc:
            first = first or exc
            warnings.warn(f"checkpoint {path} failed verification and was skipped: {exc}",
                          SkippedCheckpointWarning, stacklevel=3)
    assert first is not None
    raise first
