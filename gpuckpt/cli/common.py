"""What the ``gpuckpt`` commands share: naming a checkpoint on the command line, key patterns,
sizes, and whether output goes to a person (a terminal) or to a program."""

from __future__ import annotations

import fnmatch
import os
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from ..errors import InvalidArgumentError, NotFoundError
from ..format.bundle import BundleEntry, BundleIndex
from ..format.slices import slice_key
from ..reader import latest_checkpoint

_DATA_SUFFIX = re.compile(r"\.data-\d{5,}-of-\d{5,}$")
_REGEX_ONLY = set("^$+(){}|\\")


def strip_suffix(path: str) -> str:
    """A checkpoint's prefix from its prefix, its ``.index`` file or one of its data files."""
    if path.endswith(".index"):
        return path[: -len(".index")]
    return _DATA_SUFFIX.sub("", path)


def resolve_prefix(path: str) -> str:
    """The checkpoint a command-line argument names: a prefix, an index or data file, or a directory
    (its latest checkpoint). NotFoundError when there is none."""
    if os.path.isdir(path):
        latest = latest_checkpoint(path)
        if latest is None:
            raise NotFoundError(f"no checkpoint in directory {path!r} (no readable 'checkpoint' state file "
                                "naming an existing index)", path=path)
        return latest
    return strip_suffix(path)


def directory_checkpoints(directory: str) -> list[str]:
    """Every checkpoint prefix whose ``.index`` file is in ``directory``, by name (numbers in order)."""
    try:
        names = os.listdir(directory)
    except OSError as exc:
        raise NotFoundError(f"cannot list directory {directory!r}: {exc.strerror}", path=directory) from exc
    prefixes = [os.path.join(directory, n[: -len(".index")]) for n in names if n.endswith(".index")]
    return sorted(prefixes, key=natural_key)


def natural_key(text: str) -> list:
    """Sort key under which ``ckpt-9`` comes before ``ckpt-10``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def key_matcher(pattern: str | None) -> Callable[[str], bool]:
    """A predicate over keys for ``--filter``.

    ``glob:PATTERN`` is a shell glob over the whole key (``*`` crosses ``/``); ``re:PATTERN`` a
    regular expression searched anywhere in the key. Without a prefix, a pattern holding ``*``,
    ``?`` or ``[`` and none of ``^ $ + ( ) { } | \\`` (nor ``.*``) is a glob, anything else a regex.
    """
    if pattern is None:
        return lambda key: True
    kind, body = "auto", pattern
    for name in ("glob", "re"):
        if pattern.startswith(name + ":"):
            kind, body = name, pattern[len(name) + 1:]
    if kind == "auto":
        is_glob = any(c in body for c in "*?[") and not (_REGEX_ONLY & set(body)) and ".*" not in body
        kind = "glob" if is_glob else "re"
    if kind == "glob":
        regex = re.compile(fnmatch.translate(body))
        return lambda key: regex.match(key) is not None
    try:
        regex = re.compile(body)
    except re.error as exc:
        raise InvalidArgumentError(f"--filter {pattern!r} is not a valid regular expression: {exc}") from None
    return lambda key: regex.search(key) is not None


def stored_bytes(index: BundleIndex, key: str, entry: BundleEntry) -> int:
    """Bytes a tensor occupies in the data files (the sum of its slices for a partitioned one)."""
    if not entry.is_sliced:
        return entry.size
    pieces = (index.slice_entries.get(slice_key(key, extents)) for extents in entry.slices)
    return sum(p.size for p in pieces if p is not None)


def human(n: float) -> str:
    """``1.5 GiB``-style size."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def is_terminal(stream=None) -> bool:
    """Whether ``stream`` (stdout by default) is an interactive terminal."""
    stream = sys.stdout if stream is None else stream
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


@dataclass(frozen=True)
class Column:
    """One column of a plain-text table: its heading and whether numbers align right."""

    heading: str
    right: bool = False


def print_columns(columns: Iterable[Column], rows: Sequence[Sequence[str]], out=None) -> None:
    """Rows as aligned columns with nothing cut: the last column is never padded, so long keys go
    last and ``grep``/``awk`` see whole values."""
    out = sys.stdout if out is None else out
    columns = list(columns)
    widths = [len(c.heading) for c in columns]
    for row in rows:
        for i, cell in enumerate(row[:-1]):
            widths[i] = max(widths[i], len(cell))
    lines = []
    for row in [tuple(c.heading for c in columns), *rows]:
        cells = [cell.rjust(w) if c.right else cell.ljust(w) for cell, c, w in zip(row[:-1], columns, widths)]
        lines.append("  ".join([*cells, row[-1]]))
    out.write("\n".join(lines) + "\n")
