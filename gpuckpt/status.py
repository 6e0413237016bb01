"""Restore statuses: TF's assertions about how a checkpoint matched the live objects.

Every check is computed from the session's match results and a fresh listing of the live
objects (``graph.live_objects``: which objects exist, without the keys and nodes a save needs),
so objects created after the restore, and deferred restorations, count as soon as they happen; only
objects the restore did not bind are asked for their values. Failures raise
``AssertionError`` naming objects by their ``(root).a.b`` paths and values by their keys.
"""

from __future__ import annotations

from collections.abc import Callable

from .graph import LiveObjects, pretty_path
from .namebased import NameBasedMatching, NameBasedResult
from .restorer import ObjectGraphMatching
from .session import RestoreSession

_MAX_SHOWN = 10


class CheckpointLoadStatus:
    """Returned by ``Checkpoint.read``/``restore``; every method returns ``self`` or raises."""

    def __init__(self, matching: ObjectGraphMatching, live_objects: Callable[[], LiveObjects]):
        self._session = matching  # what the restore matched (its files are closed already)
        self._live_objects = live_objects

    def assert_consumed(self) -> "CheckpointLoadStatus":
        """Every checkpointed value was restored and every live object with values was matched."""
        self.assert_existing_objects_matched()
        session = self._session
        unresolved = session.unresolved_nodes()
        if unresolved:
            first = unresolved[0]
            raise AssertionError(
                f"Unresolved object in checkpoint {session.names[first]}: "
                f"{_describe_node(session, first)}"
                + (f" (and {len(unresolved) - 1} more: {_names(session, unresolved[1:])})"
                   if len(unresolved) > 1 else ""))
        if session.state.slot_waits and not session.skip_slots:
            waiting = [w.ref.slot_variable_node_id for waits in session.state.slot_waits.values() for w in waits]
            raise AssertionError(f"Unresolved slot restorations: {_names(session, waiting)}")
        if session.state.unused_attributes:
            lines = [f"{session.names[i]} ({session.bound[i]!r}): {attrs}"
                     for i, attrs in session.state.unused_attributes.items()]
            raise AssertionError("Unused attributes in these objects (the attributes exist in the "
                                 "checkpoint but were not restored):\n" + "\n".join(lines))
        return self

    def assert_existing_objects_matched(self) -> "CheckpointLoadStatus":
        """Every live object that owns values is bound to a checkpointed value."""
        unmatched = self._unmatched_objects()
        if unmatched:
            shown = min(_MAX_SHOWN, len(unmatched))
            raise AssertionError(
                f"Found {len(unmatched)} Python objects that were not bound to checkpointed values, likely "
                f"due to changes in the Python program. Showing {shown} of {len(unmatched)} unmatched "
                f"objects: [{', '.join(unmatched[:shown])}]")
        return self

    def assert_nontrivial_match(self) -> "CheckpointLoadStatus":
        """Something besides the root matched."""
        if len(self._session.state.bound) <= 1:
            unmatched = self._unmatched_objects()
            if unmatched:
                raise AssertionError(
                    "Nothing except the root object matched a checkpointed value. Typically this means that "
                    "the checkpoint does not match the Python program. The following objects have no "
                    f"matching checkpointed value: [{', '.join(unmatched)}]")
            raise AssertionError(f"Nothing to load. No dependencies have been added to "
                                 f"{self._live_objects().objects[0]!r} yet.")
        return self

    def expect_partial(self) -> "CheckpointLoadStatus":
        """Silence the warning about checkpoint values that were never used."""
        self._session.state.expect_partial = True
        return self

    def run_restore_ops(self, session: object = None) -> None:
        """Nothing to run: values are assigned when ``restore`` is called or their object appears
        (TF's eager behaviour; ``session`` is accepted for code written for TF1 graphs)."""

    def initialize_or_restore(self, session: object = None) -> None:
        """Nothing to run, as ``run_restore_ops``: restored values are assigned, and variables
        without one keep their initial values (TF's eager behaviour)."""

    def _unmatched_objects(self) -> list[str]:
        """``(root).path (repr)`` of live objects with values that no saved node is bound to."""
        live = self._live_objects()
        bound = self._session.bound.live_ids()
        if bound.issuperset(map(id, live.objects)):
            return []  # every live object is bound (the usual case): none is asked for its values
        skipped = live.slots if self._session.skip_slots else frozenset()
        return [f"{pretty_path(live.paths[i])} ({obj!r})" for i, obj in enumerate(live.objects)
                if id(obj) not in bound and i not in skipped and dict(obj._serialize_tensors())]


def _names(session: ObjectGraphMatching, node_ids: list[int]) -> str:
    shown = [session.names[i] for i in node_ids[:_MAX_SHOWN]]
    return ", ".join(shown) + (", ..." if len(node_ids) > _MAX_SHOWN else "")


def _describe_node(session: ObjectGraphMatching, node_id: int) -> str:
    node = session.saved.nodes[node_id]
    keys = ", ".join(repr(a.checkpoint_key) for a in node.attributes)
    return f"attributes {[a.name for a in node.attributes]} (keys {keys})"


def load_status(session: RestoreSession, live_objects: Callable[[], LiveObjects]
                ) -> "CheckpointLoadStatus | NameBasedSaverStatus":
    """The status of a started session: name-based sessions get :class:`NameBasedSaverStatus`."""
    strategy = session.strategy
    if isinstance(strategy, NameBasedMatching):
        return NameBasedSaverStatus(strategy.result)
    assert isinstance(strategy, ObjectGraphMatching)  # open_session makes one of these two strategies
    return CheckpointLoadStatus(strategy, live_objects)


class NameBasedSaverStatus:
    """Returned when a checkpoint without an object graph (TF1 ``Saver``) was restored by name.

    As in TensorFlow, the three assertions are the same check (there is no saved object
    structure to compare against): every live variable that existed at restore time found a
    value under its name. ``result`` lists what was restored, what was missing and which
    checkpoint keys no live variable named. Every method returns ``self`` or raises.
    """

    def __init__(self, result: NameBasedResult):
        self.result = result

    def assert_consumed(self) -> "NameBasedSaverStatus":
        """Every live variable found its name in the checkpoint (values no variable named are ignored, as in TF)."""
        missing = self.result.missing
        if missing:
            shown = ", ".join(f"{path} (name {name!r})" for path, name in missing[:_MAX_SHOWN])
            raise AssertionError(
                f"Name-based restore: {len(missing)} objects found no value under their name in the "
                f"checkpoint: {shown}" + (", ..." if len(missing) > _MAX_SHOWN else ""))
        return self

    def assert_existing_objects_matched(self) -> "NameBasedSaverStatus":
        """The same check as ``assert_consumed`` (TF: name-based restores cannot tell them apart)."""
        return self.assert_consumed()

    def assert_nontrivial_match(self) -> "NameBasedSaverStatus":
        """The same check as ``assert_consumed`` (TF: name-based restores cannot tell them apart)."""
        return self.assert_consumed()

    def expect_partial(self) -> "NameBasedSaverStatus":
        """Nothing to silence: name-based restores do not warn about unused values."""
        return self

    def run_restore_ops(self, session: object = None) -> None:
        """Nothing to run: the values were assigned by ``restore`` (TF's eager behaviour)."""

    def initialize_or_restore(self, session: object = None) -> None:
        """Nothing to run, as ``run_restore_ops`` (TF's eager behaviour)."""


class InitializationOnlyStatus:
    """Returned by ``restore(None)``: nothing was restored, so every assertion fails."""

    _MESSAGE = "No checkpoint specified (save_path=None); nothing is being restored."

    def assert_consumed(self) -> "InitializationOnlyStatus":
        raise AssertionError(self._MESSAGE)

    def assert_existing_objects_matched(self) -> "InitializationOnlyStatus":
        raise AssertionError(self._MESSAGE)

    def assert_nontrivial_match(self) -> "InitializationOnlyStatus":
        raise AssertionError(self._MESSAGE)

    def expect_partial(self) -> "InitializationOnlyStatus":
        return self

    def run_restore_ops(self, session: object = None) -> None:
        """There are no restore operations: raises, as TF does for ``restore(None)``."""
        raise AssertionError("No checkpoint specified, so no restore ops are available (save_path=None to "
                             "Checkpoint.restore).")

    def initialize_or_restore(self, session: object = None) -> None:
        """Nothing to run: variables keep their initial values (TF's eager behaviour)."""
