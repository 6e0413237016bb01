"""Which checkpoints a CheckpointManager keeps: small pure policies that return keep flags.

A policy maps the managed checkpoints (oldest first) to one flag each. ``decide_retention`` combines
TensorFlow's two rules: the newest ``max_to_keep`` stay managed; of the others, those that
``keep_checkpoint_every_n_hours`` preserves stay on disk but leave the managed list, and
the rest are deleted.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class CheckpointInfo:
    """A managed checkpoint: its prefix and when it was saved (seconds since the epoch)."""

    path: str
    timestamp: float


Policy = Callable[[Sequence[CheckpointInfo]], list[bool]]


def latest_n(n: int | None) -> Policy:
    """Keep the newest ``n`` checkpoints (all of them when ``n`` is None)."""
    def keep(infos: Sequence[CheckpointInfo]) -> list[bool]:
        first_kept = 0 if n is None else max(len(infos) - n, 0)
        return [i >= first_kept for i in range(len(infos))]
    return keep


def every_n_hours(hours: float | None, last_preserved: float) -> Policy:
    """Keep a checkpoint when it is ``hours`` newer than the last one kept this way.

    The chain starts at ``last_preserved`` and runs oldest first, as TF's sweep does.
    """
    def keep(infos: Sequence[CheckpointInfo]) -> list[bool]:
        flags = []
        last = last_preserved
        for info in infos:
            kept = hours is not None and info.timestamp - hours * 3600.0 >= last
            if kept:
                last = info.timestamp
            flags.append(kept)
        return flags
    return keep


def any_of(*policies: Policy) -> Policy:
    """Keep what any of ``policies`` keeps."""
    def keep(infos: Sequence[CheckpointInfo]) -> list[bool]:
        flags = [False] * len(infos)
        for policy in policies:
            flags = [a or b for a, b in zip(flags, policy(infos))]
        return flags
    return keep


@dataclass(frozen=True)
class RetentionDecision:
    """What retention decides: which checkpoints stay managed, which stay on disk only, which are deleted."""

    managed: tuple[CheckpointInfo, ...]
    preserved: tuple[CheckpointInfo, ...]
    deleted: tuple[CheckpointInfo, ...]
    last_preserved_timestamp: float


def decide_retention(infos: Sequence[CheckpointInfo], *, max_to_keep: int | None,
                     keep_checkpoint_every_n_hours: float | None, last_preserved_timestamp: float) -> RetentionDecision:
    """Split ``infos`` (oldest first) by TF's CheckpointManager rules."""
    active = latest_n(max_to_keep)
    on_disk = any_of(active, every_n_hours(keep_checkpoint_every_n_hours, last_preserved_timestamp))
    managed, preserved, deleted = [], [], []
    for info, is_active, is_kept in zip(infos, active(infos), on_disk(infos)):
        if is_active:
            managed.append(info)
        elif is_kept:
            preserved.append(info)
        else:
            deleted.append(info)
    last = max([last_preserved_timestamp, *(info.timestamp for info in preserved)])
    return RetentionDecision(tuple(managed), tuple(preserved), tuple(deleted), last)
