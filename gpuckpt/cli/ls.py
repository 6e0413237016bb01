"""``gpuckpt ls``: a checkpoint directory at a glance, changing nothing.

Lists each committed checkpoint (an ``.index`` file) with its number, time, size and shards,
and whether the ``checkpoint`` state file names it as the latest, lists it as managed, or left
it on disk as preserved by ``keep_checkpoint_every_n_hours``; then everything else that is not
part of a committed checkpoint: temporaries and aside files of interrupted saves (and whether
their writer still runs), data files without an index, and unknown files.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from dataclasses import asdict, dataclass

from ..errors import CheckpointError, NotFoundError
from ..format.statefile import CheckpointState
from ..storage.filesystem import HOST_TAG, LEFTOVER, STATE_FILE, owner_alive, read_state
from ..storage.recovery import LOCK_FILE
from .common import Column, human, natural_key, print_columns

SCHEMA = "gpuckpt.ls/1"
_DATA = re.compile(r"(?P<prefix>.+)\.data-(?P<shard>\d{5,})-of-(?P<count>\d{5,})$")
_NUMBER = re.compile(r".*-(\d+)$")
PRESERVED_SLACK_S = 1.0  # a manager stamps a checkpoint just after its index is written


@dataclass(frozen=True)
class Listed:
    """One committed checkpoint of the directory."""

    name: str
    number: int | None
    mtime: float
    bytes: int
    shards: int
    shards_present: int
    status: str  # latest | managed | preserved | unlisted


@dataclass(frozen=True)
class Stray:
    """A file that is not part of a committed checkpoint."""

    name: str
    kind: str  # temporary | aside | orphan data | unknown
    bytes: int
    note: str


def scan(directory: str) -> tuple[CheckpointState | None, list[Listed], list[Stray]]:
    try:
        names = sorted(os.listdir(directory), key=natural_key)
    except OSError as exc:
        raise NotFoundError(f"cannot list directory {directory!r}: {exc.strerror}", path=directory) from exc
    try:
        state = read_state(directory)
    except CheckpointError as exc:  # a damaged state file: listed as such, not as "no checkpoint"
        print(f"warning: {exc}", file=sys.stderr)
        state = None
    prefixes = {n[: -len(".index")] for n in names if n.endswith(".index") and not LEFTOVER.fullmatch(n)}
    listed = [_listed(directory, p, names, state) for p in sorted(prefixes, key=natural_key)]
    strays = [s for s in (_stray(directory, n, prefixes) for n in names) if s is not None]
    return state, listed, strays


def _size(path: str) -> int:
    try:
        return os.lstat(path).st_size
    except OSError:
        return 0


def _listed(directory: str, prefix: str, names: list[str], state: CheckpointState | None) -> Listed:
    data = [m for m in map(_DATA.fullmatch, names) if m and m["prefix"] == prefix]
    shards = max((int(m["count"]) for m in data), default=0)
    index = os.path.join(directory, prefix + ".index")
    mtime = os.lstat(index).st_mtime
    size = _size(index) + sum(_size(os.path.join(directory, m[0])) for m in data)
    number = _NUMBER.fullmatch(prefix)
    return Listed(prefix, int(number[1]) if number else None, mtime, size, shards,
                  sum(int(m["count"]) == shards for m in data), _status(directory, prefix, mtime, state))


def _status(directory: str, prefix: str, mtime: float, state: CheckpointState | None) -> str:
    if state is None:
        return "unlisted"
    target = os.path.abspath(os.path.join(directory, prefix))

    def same(path: str) -> bool:
        return os.path.abspath(os.path.join(directory, path)) == target

    if same(state.model_checkpoint_path):
        return "latest"
    if any(same(p) for p in state.all_model_checkpoint_paths):
        return "managed"
    if state.last_preserved_timestamp and mtime <= state.last_preserved_timestamp + PRESERVED_SLACK_S:
        return "preserved"
    return "unlisted"


def _stray(directory: str, name: str, prefixes: set[str]) -> Stray | None:
    path = os.path.join(directory, name)
    leftover = LEFTOVER.fullmatch(name)
    if leftover:
        if leftover["host"] != HOST_TAG:
            writer = f"writer pid {leftover['pid']} on another host"
        else:
            alive = owner_alive(int(leftover["pid"]), leftover["host"])
            writer = f"writer pid {leftover['pid']} {'still running' if alive else 'gone'}"
        kind = "temporary" if leftover["kind"] == "tmp" else "aside"
        what = f"of {leftover['original']}"
        note = f"{what}; {writer}; the next save's sweep removes it once the writer is gone"
        return Stray(name, kind, _size(path), note)
    if name.endswith(".index") or name in (STATE_FILE, LOCK_FILE):
        return None
    data = _DATA.fullmatch(name)
    if data and data["prefix"] in prefixes:
        return None
    if data:
        return Stray(name, "orphan data", _size(path), "data file without an index (an interrupted save or deletion)")
    return Stray(name, "unknown", _size(path), "directory" if os.path.isdir(path) else "not a checkpoint file")


def run(directory: str, *, as_json: bool = False) -> int:
    if not os.path.isdir(directory):
        raise NotFoundError(f"{directory!r} is not a directory", path=directory)
    state, listed, strays = scan(directory)
    missing = _missing(directory, state, listed)
    if as_json:
        json.dump({"schema": SCHEMA, "directory": directory,
                   "state_file": None if state is None else asdict(state),
                   "checkpoints": [asdict(c) for c in listed], "other": [asdict(s) for s in strays],
                   "missing": missing},
                  sys.stdout, indent=1)
        sys.stdout.write("\n")
        return 0
    state_note = "no readable 'checkpoint' state file" if state is None else f"latest: {state.model_checkpoint_path}"
    print(f"{directory}: {len(listed)} checkpoint(s), {human(sum(c.bytes for c in listed))}; {state_note}")
    if listed:
        rows = [(str(c.number) if c.number is not None else "-", _when(c.mtime), human(c.bytes),
                 f"{c.shards_present}/{c.shards}", c.status, c.name) for c in listed]
        print_columns((Column("number", right=True), Column("written"), Column("size", right=True),
                       Column("shards"), Column("status"), Column("name")), rows)
    for path in missing:
        print(f"the state file names {path}, which has no index here")
    if strays:
        print(f"not part of a committed checkpoint ({len(strays)}):")
        print_columns((Column("kind"), Column("size", right=True), Column("name"), Column("note")),
                      [(s.kind, human(s.bytes), s.name, s.note) for s in strays])
    return 0


def _missing(directory: str, state: CheckpointState | None, listed: list[Listed]) -> list[str]:
    """Checkpoints the state file names (as written there) whose index is not in the directory."""
    if state is None:
        return []
    here = {os.path.abspath(os.path.join(directory, c.name)) for c in listed}
    named = dict.fromkeys((state.model_checkpoint_path, *state.all_model_checkpoint_paths))
    return [p for p in named if os.path.abspath(os.path.join(directory, p)) not in here]


def _when(stamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp))
