"""Which restore an object's values come from when several restores reach it: the newest, as in TF.

Every restore session takes a number from :func:`next_restore_uid` when it is opened. Before
assigning values to an object, a session :func:`claim`\\ s it; the claim fails when a newer
session has already assigned that object, so an older restore whose deferred value arrives
later (``b.restore(p2); a.restore(p1); a.dep = dep; b.dep = dep``) leaves ``dep`` with p1's
values. A restore that checks its plan first asks :func:`superseded`, and :func:`record`\\ s
its objects only once the checks passed, so a restore refused before assigning anything claims
nothing. TF keeps the same number on each object (``_self_update_uid``).
"""

from __future__ import annotations

import itertools
import threading

from .base import Trackable

_UID_ATTRIBUTE = "_self_restore_uid"
_counter = itertools.count(1)
_lock = threading.Lock()


def next_restore_uid() -> int:
    """A number larger than every earlier restore's."""
    with _lock:
        return next(_counter)


def superseded(obj: Trackable, uid: int) -> bool:
    """Whether a restore newer than ``uid`` has already assigned ``obj`` (nothing is recorded)."""
    return getattr(obj, _UID_ATTRIBUTE, 0) > uid


def record(obj: Trackable, uid: int) -> None:
    """Record that restore ``uid`` assigns ``obj`` (after :func:`superseded` said it may)."""
    object.__setattr__(obj, _UID_ATTRIBUTE, uid)


def claim(obj: Trackable, uid: int) -> bool:
    """Record that restore ``uid`` assigns ``obj``; False (and nothing recorded) when a newer one did."""
    if superseded(obj, uid):
        return False
    record(obj, uid)
    return True
