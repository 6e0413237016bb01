"""NVIDIA DALI adapter: input pipelines saved and resumed exactly, as TensorFlow saves ``tf.data`` iterators.

Install with ``pip install 'gpuckpt[dali]'``. Importing this module imports DALI; nothing else
in gpuckpt does, and the adapter is loaded only once DALI has been imported.

A DALI pipeline built with ``enable_checkpointing=True`` knows its position: where each reader
is in its shard and shuffle, and the state of every random operator. gpuckpt saves that
position beside the variables, so a resumed job reads the very batch it would have read next.

* ``Checkpoint(model=..., data=pipe)`` with a DALI ``Pipeline`` or a framework iterator
  (``DALIGenericIterator`` of the PyTorch, JAX or PaddlePaddle plugin, or any other iterator
  built on DALI's ``_DaliBaseIterator``) saves its state under
  ``data/.ATTRIBUTES/DALI_PIPELINE_STATE``: a 1-D string tensor with one element per pipeline
  (an iterator over four pipelines saves four), each the bytes of DALI's ``Pipeline.checkpoint()``
  (an iterator's ``checkpoints()``, which carry its own position too). TensorFlow reads the key
  as a string tensor (``tf.train.load_checkpoint(path).get_tensor(key)``); a fresh pipeline
  that has never been built saves an empty string, which restores as "start from the beginning".
* DALI restores a position only when a pipeline is built. A ``Pipeline`` that is not built yet
  is restored in place (it is built from the restored state, by ``build()`` or its first
  ``run()``); a framework iterator builds its pipelines when it is constructed, so it is made by
  a :class:`PipelineFactory` that the checkpoint restores first and that builds it afterwards,
  from the restored state. Restoring into a pipeline or iterator that is already built is refused.
* A restore onto a different number of pipelines than were saved is refused (the state
  tensor's shape is the number of pipelines), before any value is assigned.
* Asynchronous saves take the state when ``save`` is called, as they snapshot variables.
"""

from __future__ import annotations

import sys
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from ._deps import import_optional
from .errors import InvalidArgumentError
from .trackable.base import ForeignAdapter, Trackable

dali = import_optional("nvidia.dali", extra="dali")
Pipeline = import_optional("nvidia.dali.pipeline", extra="dali").Pipeline

__all__ = ["STATE", "DaliIterator", "DaliPipeline", "PipelineFactory", "adapt", "trackable"]

STATE = "DALI_PIPELINE_STATE"  # the attribute name: data/.ATTRIBUTES/DALI_PIPELINE_STATE

# One adapter per DALI object for as long as it lives, keyed by id() (as gpuckpt.torch does);
# adapters hold weak references, and nothing is stored on the user's objects.
_CACHE: dict[int, DaliPipeline | DaliIterator] = {}


def adapt(value: object) -> Trackable | None:
    """The trackable of a DALI ``Pipeline`` or framework iterator (the same one each time), else None."""
    if isinstance(value, Pipeline) or _is_iterator(value):
        return trackable(value)
    return None


def trackable(obj: Any) -> DaliPipeline | DaliIterator:
    """The adapter of a DALI ``Pipeline`` or framework iterator."""
    cached = _CACHE.get(id(obj))
    if cached is not None and cached._ref() is obj:
        return cached
    adapter: DaliPipeline | DaliIterator
    if isinstance(obj, Pipeline):
        adapter = DaliPipeline(obj)
    elif _is_iterator(obj):
        adapter = DaliIterator(obj)
    else:
        raise InvalidArgumentError(f"gpuckpt.dali adapts DALI pipelines and framework iterators, not "
                                   f"{type(obj).__name__}")
    _CACHE[id(obj)] = adapter
    weakref.finalize(obj, _CACHE.pop, id(obj), None)
    return adapter


def _is_iterator(value: object) -> bool:
    """A DALI framework iterator: the plugins' iterators all derive from ``_DaliBaseIterator``."""
    base = sys.modules.get("nvidia.dali.plugin.base_iterator")  # loaded by every plugin; never imported here
    return base is not None and isinstance(value, base._DaliBaseIterator)


# -- what gpuckpt needs of DALI's internals, in one place --------------------------------


def _checkpointing(pipe: Any) -> bool:
    return bool(getattr(pipe, "_enable_checkpointing", False))


def _is_built(pipe: Any) -> bool:
    return bool(getattr(pipe, "_built", False))


def _pending(pipe: Any) -> bytes:
    """The state an unbuilt pipeline will be built from (``checkpoint=``), or ``b""`` for the start."""
    return _as_bytes(getattr(pipe, "_checkpoint", None) or b"")


def _set_pending(pipe: Any, state: bytes | None) -> None:
    """Make an unbuilt pipeline restore ``state`` when it is built, as ``Pipeline(checkpoint=state)`` would."""
    if not hasattr(pipe, "_checkpoint"):
        raise InvalidArgumentError(f"this DALI version ({dali.__version__}) keeps no pending checkpoint on "
                                   "an unbuilt Pipeline; restore through gpuckpt.dali.PipelineFactory")
    pipe._checkpoint = state


def _iterator_pipelines(iterator: Any) -> list[Any]:
    return list(getattr(iterator, "_pipes", ()))


def _as_bytes(state: Any) -> bytes:
    return state.encode("utf-8") if isinstance(state, str) else bytes(state)


def _states_array(states: Sequence[bytes]) -> np.ndarray:
    out = np.empty(len(states), dtype=object)
    out[:] = [_as_bytes(s) for s in states]
    return out


def _require_checkpointing(pipes: Sequence[Any], what: str) -> None:
    off = [i for i, p in enumerate(pipes) if not _checkpointing(p)]
    if off:
        raise InvalidArgumentError(f"{what}: DALI pipeline {off[0]} was created without enable_checkpointing=True, "
                                   "so DALI cannot report its position; pass enable_checkpointing=True to the "
                                   "pipeline (or to @pipeline_def)")


def _live_states(obj: Any, what: str) -> np.ndarray:
    """The current DALI states of a built pipeline, list of pipelines or framework iterator."""
    if isinstance(obj, Pipeline):
        _require_checkpointing([obj], what)
        return _states_array([obj.checkpoint()])
    if _is_iterator(obj):
        _require_checkpointing(_iterator_pipelines(obj), what)
        return _states_array(obj.checkpoints())
    _require_checkpointing(obj, what)
    return _states_array([p.checkpoint() for p in obj])


def _refuse_built(what: str) -> InvalidArgumentError:
    return InvalidArgumentError(
        f"cannot restore {what}: it is already built, and DALI sets a pipeline's position only when it is "
        "built. Restore the checkpoint before building: pass an unbuilt Pipeline, or make the pipelines "
        "(and the iterator over them) with gpuckpt.dali.PipelineFactory and call its build() after the restore")


# -- adapters ----------------------------------------------------------------------------


class _Adapter(ForeignAdapter):
    """A trackable standing for one DALI object, which it references weakly."""

    framework = "DALI"


class DaliPipeline(_Adapter):
    """One DALI ``Pipeline``: its state saved as one element of ``DALI_PIPELINE_STATE``.

    Saving an unbuilt pipeline saves the state it will start from; restoring one makes its
    build start from the checkpoint. A built pipeline saves its current position and refuses
    a restore.
    """

    def _serialize_tensors(self) -> Mapping[str, Any]:
        pipe = self.obj
        if _is_built(pipe):
            return {STATE: _live_states(pipe, repr(self))}
        _require_checkpointing([pipe], repr(self))
        return {STATE: _states_array([_pending(pipe)])}

    def _restore_tensors(self, values: Mapping[str, Any]) -> None:
        pipe = self.obj
        if _is_built(pipe):
            raise _refuse_built(repr(self))
        (state,) = _restored_states(values[STATE])
        _set_pending(pipe, state)

    def __repr__(self) -> str:
        return f"<gpuckpt.dali.DaliPipeline of {type(self.obj).__name__}>"


class DaliIterator(_Adapter):
    """A DALI framework iterator: one state per pipeline, each carrying the iterator's position.

    Iterators build their pipelines when they are constructed, so they are saved directly and
    restored through a :class:`PipelineFactory`.
    """

    def _serialize_tensors(self) -> Mapping[str, Any]:
        return {STATE: _live_states(self.obj, repr(self))}

    def _restore_tensors(self, values: Mapping[str, Any]) -> None:
        raise _refuse_built(repr(self))

    def __repr__(self) -> str:
        return f"<gpuckpt.dali.DaliIterator of {type(self.obj).__name__}>"


def _restored_states(array: Any) -> list[bytes | None]:
    """The saved states, ``None`` for the empty state of a pipeline that was saved before its first build."""
    return [_as_bytes(s) or None for s in np.asarray(array, dtype=object).reshape(-1)]


class PipelineFactory(Trackable):
    """Builds DALI pipelines (and an iterator over them) from a restored state, after the restore.

    ``build`` makes the object to train from. With ``num_pipelines=None`` it is called as
    ``build(checkpoint=state)`` and returns one ``Pipeline`` (or an iterator over one);
    ``state`` is None on a fresh start, else the DALI checkpoint to pass to the pipeline's
    ``checkpoint=`` argument, so a ``@pipeline_def`` function can be the factory itself.
    With ``num_pipelines=n`` it is called as ``build(checkpoints=[s0, ..., s(n-1)])`` and
    returns a list of ``n`` pipelines or an iterator over ``n`` pipelines.

    Put the factory in the checkpoint, restore (``manager.restore_or_initialize()``), then
    call :meth:`build`. Until it is built the factory saves the state it holds (empty for a
    fresh start); afterwards the built object's current state. The built pipelines must all be
    restored from the states given (DALI's ``is_restored_from_checkpoint``); a factory that
    drops the argument raises instead of silently starting over.
    """

    def __init__(self, build: Callable[..., Any], num_pipelines: int | None = None):
        if num_pipelines is not None and (not isinstance(num_pipelines, int) or num_pipelines < 1):
            raise InvalidArgumentError(f"num_pipelines must be a positive int or None, not {num_pipelines!r}")
        self._factory = build
        self._num_pipelines = num_pipelines
        self._states: list[bytes | None] = [None] * (num_pipelines or 1)
        self._built: Any = None

    @property
    def built(self) -> Any:
        """The object :meth:`build` made, or None before it is called."""
        return self._built

    def build(self) -> Any:
        """Call the factory with the restored states (None where there are none); the same object after."""
        if self._built is None:
            self._built = self._make()
        return self._built

    def _make(self) -> Any:
        restoring = any(s is not None for s in self._states)
        try:
            if self._num_pipelines is None:
                made = self._factory(checkpoint=self._states[0])
            else:
                made = self._factory(checkpoints=list(self._states))
            pipes = self._pipelines_of(made)
            _require_checkpointing(pipes, repr(self))
            for pipe in pipes:
                pipe.build()  # DALI restores at build (a no-op for an iterator's pipelines, built already)
        except Exception as exc:
            if not restoring or isinstance(exc, InvalidArgumentError):
                raise
            raise InvalidArgumentError(f"{self!r}: building the DALI pipelines from the restored state failed "
                                       f"({type(exc).__name__}: {exc})") from exc
        dropped = [i for i, (p, s) in enumerate(zip(pipes, self._states))
                   if s is not None and not p.is_restored_from_checkpoint]
        if dropped:
            raise InvalidArgumentError(
                f"{self!r}: pipeline {dropped[0]} was not restored from the checkpoint's state; pass the "
                "factory's checkpoint argument to the pipeline's checkpoint= parameter")
        return made

    def _pipelines_of(self, made: Any) -> list[Any]:
        """The pipelines ``build`` returned, checked against the number the factory declared."""
        if isinstance(made, Pipeline):
            pipes = [made]
        elif _is_iterator(made):
            pipes = _iterator_pipelines(made)
        elif isinstance(made, (list, tuple)) and all(isinstance(p, Pipeline) for p in made) and made:
            pipes = list(made)
        else:
            raise InvalidArgumentError(f"{self!r}: build returned {type(made).__name__}; expected a DALI Pipeline, "
                                       "a list of Pipelines or a DALI framework iterator")
        if len(pipes) != len(self._states):
            raise InvalidArgumentError(f"{self!r}: build returned {len(pipes)} pipelines, the factory was declared "
                                       f"with {len(self._states)} (num_pipelines={self._num_pipelines})")
        return pipes

    def _serialize_tensors(self) -> Mapping[str, Any]:
        if self._built is not None:
            return {STATE: _live_states(self._built, repr(self))}
        return {STATE: _states_array([s or b"" for s in self._states])}

    def _restore_tensors(self, values: Mapping[str, Any]) -> None:
        if self._built is not None:
            raise _refuse_built(repr(self))
        states = _restored_states(values[STATE])
        if len(states) != len(self._states):  # the restorer checks shapes first; this guards other callers
            raise InvalidArgumentError(f"{self!r}: the checkpoint holds {len(states)} DALI pipeline states, "
                                       f"this factory builds {len(self._states)}")
        self._states = states

    def __repr__(self) -> str:
        name = getattr(self._factory, "__name__", type(self._factory).__name__)
        return f"<gpuckpt.dali.PipelineFactory of {name}, {len(self._states)} pipeline(s)>"
