"""When the ``checkpoint`` state file cannot be trusted: the newest numbered checkpoint that verifies.

A damaged state file (checksum mismatch, unparsable, empty) or one naming a checkpoint that is
not there must not turn into "no checkpoint", which would make ``restore_or_initialize`` start a
run from scratch and the next save overwrite ``ckpt-1``. :func:`newest_verifiable` scans the
directory for ``<name>-<N>.index``, newest number first, and returns the first whose index and
every tensor's CRC verify, warning with what was skipped and why.
"""

from __future__ import annotations

import glob
import logging
import os
import re
import warnings
from dataclasses import dataclass

from ..errors import CheckpointError

log = logging.getLogger(__name__)
_NUMBERED = re.compile(r"(?P<name>.+)-(?P<number>\d+)\.index")


class StateFileWarning(UserWarning):
    """The state file was damaged or named a missing checkpoint, and another checkpoint was chosen."""


@dataclass(frozen=True)
class Candidate:
    """A numbered checkpoint found in a directory: its prefix, name and number."""

    prefix: str
    name: str
    number: int


def numbered_checkpoints(directory: str, name: str | None = None) -> list[Candidate]:
    """``<name>-<N>`` checkpoints with an index in ``directory`` (any name when None), newest number first."""
    try:
        names = os.listdir(directory or ".")
    except (OSError, ValueError):  # not a directory, unreadable, or a NUL in its name
        return []
    found = []
    for entry in names:
        match = _NUMBERED.fullmatch(entry)
        if match and (name is None or match["name"] == name):
            found.append(Candidate(os.path.join(directory, entry[: -len(".index")]), match["name"],
                                   int(match["number"])))
    return sorted(found, key=lambda c: (c.number, c.name), reverse=True)


def verify(prefix: str) -> None:
    """CheckpointError unless the index parses and every tensor's bytes pass their CRC."""
    from ..reader import (
        CheckpointReader,  # the reader imports storage; imported when needed
    )

    with CheckpointReader(prefix) as reader:
        for key in reader.keys():
            reader.get_tensor(key)


def newest_verifiable(directory: str, reason: str, name: str | None = None) -> str | None:
    """The newest ``<name>-<N>`` checkpoint of ``directory`` that verifies, or None; warns naming
    ``reason`` (why the state file was not used) and each checkpoint skipped."""
    skipped: list[str] = []
    chosen = None
    for candidate in numbered_checkpoints(directory, name):
        try:
            verify(candidate.prefix)
        except CheckpointError as exc:
            skipped.append(f"{os.path.basename(candidate.prefix)} ({exc})")
            continue
        chosen = candidate.prefix
        break
    if chosen is None and not skipped:
        return None
    outcome = f"using {chosen!r}, the newest checkpoint that verifies" if chosen else "no checkpoint verifies"
    message = f"{reason}; {outcome}"
    if skipped:
        message += "; skipped: " + "; ".join(skipped)
    log.warning("%s", message)
    warnings.warn(message, StateFileWarning, stacklevel=3)
    return chosen


def latest_in(directory: str) -> str | None:
    """``latest_checkpoint``: the checkpoint the state file names if its index exists; None without a state file.

    A damaged state file, or one naming a checkpoint without an index, falls back to the newest
    checkpoint that verifies (a warning says so); a damaged one with nothing to fall back to raises
    its DataLossError. A named checkpoint that is missing, with no fallback, is logged and gives None (TF).
    """
    from .filesystem import read_state

    try:
        state = read_state(directory)
    except CheckpointError as exc:
        found = newest_verifiable(directory, f"ignored the damaged checkpoint state file: {exc}")
        if found is None:
            raise
        return found
    if state is None:
        return None
    path = state.model_checkpoint_path
    if not os.path.isabs(path):
        path = os.path.join(directory, path)
    if os.path.exists(path + ".index") or glob.glob(glob.escape(path) + ".index.old-*"):
        return path  # present, or renamed aside by an overwrite that the reader waits for or a sweep undoes
    match = _NUMBERED.fullmatch(os.path.basename(path) + ".index")
    found = None
    if match:
        found = newest_verifiable(directory, f"the checkpoint state file names {path!r}, which has no index",
                                  name=match["name"])
    if found is None:
        log.error("Couldn't match files for checkpoint %s", path)
    return found
