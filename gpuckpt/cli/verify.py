"""``gpuckpt verify``: re-read every tensor of one or more checkpoints and check every CRC.

Small tensors are read in batches by the reader's parallel read-and-verify; a tensor larger
than a batch is streamed in chunks through one buffer, so memory stays bounded by the batch
size whatever the checkpoint holds. Failures are grouped: one line per distinct failure (a
missing data file is one line, not one per tensor). Exit status: 0 all verified, 1 corrupt,
2 an argument is not a checkpoint at all.
"""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from ..arrays import aligned_empty
from ..errors import CheckpointError, DataLossError, DataLossReason, NotFoundError
from ..format import crc
from ..format.bundle import data_file_name
from ..reader import CheckpointReader
from .common import directory_checkpoints, human, is_terminal, strip_suffix

OK, CORRUPT, NOT_A_CHECKPOINT = 0, 1, 2
BATCH_BYTES = 64 << 20
CHUNK_BYTES = 16 << 20
_SHOWN_KEYS = 3
_ALIGN = 64


@dataclass
class Failures:
    """Failures grouped by what went wrong; the keys each one hit, in order."""

    groups: dict[tuple[str, str | None, str], list[str]] = field(default_factory=dict)
    first: dict[tuple[str, str | None, str], str] = field(default_factory=dict)

    def add(self, key: str, exc: CheckpointError) -> None:
        """Group by the error's type, file and kind: a DataLossError's ``reason`` where it has a specific
        one, else its message with the key and numbers taken out."""
        message = _clean(str(exc))
        if isinstance(exc, DataLossError) and exc.reason is not DataLossReason.CORRUPT:
            kind = exc.reason.value
        else:
            kind = re.sub(r"0x[0-9a-fA-F]+|\b\d+\b", "#", message.replace(repr(key), "{key}"))
        sig = (type(exc).__name__, exc.path, kind)
        self.groups.setdefault(sig, []).append(key)
        self.first.setdefault(sig, message)

    def keys(self) -> int:
        return sum(len(v) for v in self.groups.values())

    def lines(self) -> Iterator[str]:
        for sig, keys in self.groups.items():
            line = f"{sig[0]}: {self.first[sig]}"
            if len(keys) > 1:
                shown = ", ".join(repr(k) for k in keys[1:1 + _SHOWN_KEYS])
                more = "" if len(keys) - 1 <= _SHOWN_KEYS else ", ..."
                line += f" [and {len(keys) - 1} more tensors: {shown}{more}]"
            yield line


def _clean(message: str) -> str:
    """A failure message without CRCs computed over the bytes read (they would echo file contents)."""
    return re.sub(r",? computed 0x[0-9a-fA-F]+(?: on the bytes read)?", "", message)


@dataclass(frozen=True)
class Outcome:
    """What verifying one checkpoint found."""

    prefix: str
    status: int
    tensors: int = 0
    nbytes: int = 0
    seconds: float = 0.0
    failures: Failures | None = None
    error: str | None = None


def targets(paths: list[str]) -> Iterator[tuple[str, str | None]]:
    """(prefix, None) per checkpoint named; (argument, why) for an argument that names none."""
    for path in paths:
        if os.path.isdir(path):
            found = directory_checkpoints(path)
            if not found:
                yield path, f"no checkpoint (.index file) in directory {path!r}"
            for prefix in found:
                yield prefix, None
        else:
            yield strip_suffix(path), None


def verify_one(prefix: str, advance: Callable[[int], None] = lambda n: None) -> Outcome:
    """Verify one checkpoint; ``advance(bytes)`` is called as data is checked."""
    start = time.perf_counter()
    try:
        reader = CheckpointReader(prefix)
    except NotFoundError as exc:
        return Outcome(prefix, NOT_A_CHECKPOINT, error=_clean(str(exc)))
    except CheckpointError as exc:
        return Outcome(prefix, CORRUPT, error=f"{type(exc).__name__}: {_clean(str(exc))}")
    failures = Failures()
    with reader:
        total = _check_all(reader, failures, advance)
    status = CORRUPT if failures.groups else OK
    return Outcome(prefix, status, len(reader.index.entries), total, time.perf_counter() - start, failures)


def _check_all(reader: CheckpointReader, failures: Failures, advance: Callable[[int], None]) -> int:
    """Check every tensor; return the bytes read. One arena of ``BATCH_BYTES`` is reused for every
    batch (fresh buffers would cost a page fault per 4 KiB, more than the reads themselves)."""
    entries = reader.index.entries
    plain = sorted((k for k, e in entries.items() if not e.is_sliced and not e.dtype.is_string),
                   key=lambda k: (entries[k].shard_id, entries[k].offset))
    arena = aligned_empty((BATCH_BYTES + _ALIGN * 1024,), np.dtype(np.uint8))
    total = 0
    for batch in _batches(reader, plain):
        total += _check_batch(reader, batch, arena, failures)
        advance(sum(entries[k].size for k in batch))
    for key in plain:
        if entries[key].size > BATCH_BYTES:
            total += _check_streamed(reader, key, arena[:CHUNK_BYTES], failures, advance)
    for key, entry in entries.items():
        if entry.is_sliced or entry.dtype.is_string:
            total += _check_whole(reader, key, failures)
    return total


def _batches(reader: CheckpointReader, keys: list[str]) -> Iterator[list[str]]:
    """Runs of keys whose bytes, each rounded up to ``_ALIGN``, fit one arena (at most 1,024 keys)."""
    batch: list[str] = []
    size = 0
    for key in keys:
        n = reader.index.entries[key].size
        if n > BATCH_BYTES:
            continue  # streamed on its own
        if batch and (size + n > BATCH_BYTES or len(batch) == 1024):
            yield batch
            batch, size = [], 0
        batch.append(key)
        size += n
    if batch:
        yield batch


def _check_batch(reader: CheckpointReader, batch: list[str], arena: np.ndarray, failures: Failures) -> int:
    entries = reader.index.entries
    pairs, offset = [], 0
    for key in batch:
        e = entries[key]
        dtype = e.dtype.numpy
        assert dtype is not None, "_check_all batches only non-string tensors, which all have a NumPy dtype"
        pairs.append((key, arena[offset: offset + e.size].view(dtype).reshape(e.shape)))
        offset += -(-e.size // _ALIGN) * _ALIGN
    try:
        reader.read_tensors(pairs)
        return sum(entries[k].size for k in batch)
    except CheckpointError:
        pass
    done = 0
    for key, out in pairs:  # find which tensors failed, and why
        try:
            reader.read_tensors([(key, out)])
            done += entries[key].size
        except CheckpointError as exc:
            failures.add(key, exc)
    return done


def _check_streamed(reader: CheckpointReader, key: str, buf: np.ndarray, failures: Failures,
                    advance: Callable[[int], None]) -> int:
    """CRC of a large tensor read chunk by chunk into one reused buffer."""
    entry = reader.index.entries[key]
    value = 0
    try:
        for start in range(0, entry.size, CHUNK_BYTES):
            view = buf[: min(CHUNK_BYTES, entry.size - start)]
            reader.read_unverified(key, entry, start, view)
            value = crc.crc32c(view, value)
            advance(view.nbytes)
        if crc.mask(value) != entry.crc32c:
            path = data_file_name(reader.prefix, entry.shard_id, reader.index.num_shards)
            raise DataLossError(f"checksum mismatch for key {key!r} in {path!r}: stored {entry.crc32c:#010x}",
                                path=path, key=key, reason=DataLossReason.CRC_MISMATCH)
    except CheckpointError as exc:
        failures.add(key, exc)
        return 0
    return entry.size


def _check_whole(reader: CheckpointReader, key: str, failures: Failures) -> int:
    """String and partitioned tensors: the reader assembles and verifies them whole."""
    try:
        reader.get_tensor(key)
    except CheckpointError as exc:
        failures.add(key, exc)
        return 0
    return reader.index.entries[key].size


def run(paths: list[str], *, progress: bool | None = None) -> int:
    """Verify each checkpoint named; print one summary line each (and the failures); return the status."""
    show = is_terminal(sys.stderr) if progress is None else progress
    outcomes = []
    for prefix, why in targets(paths):
        if why is not None:
            outcomes.append(Outcome(prefix, NOT_A_CHECKPOINT, error=why))
        else:
            outcomes.append(_with_progress(prefix) if show else verify_one(prefix))
        _report(outcomes[-1])
    if len(outcomes) > 1:
        counts = [sum(o.status == s for o in outcomes) for s in (OK, CORRUPT, NOT_A_CHECKPOINT)]
        print(f"{len(outcomes)} checkpoints: {counts[0]} verified, {counts[1]} corrupt, {counts[2]} not checkpoints")
    statuses = {o.status for o in outcomes}
    return NOT_A_CHECKPOINT if NOT_A_CHECKPOINT in statuses else CORRUPT if CORRUPT in statuses else OK


def _with_progress(prefix: str) -> Outcome:
    try:
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn
    except ImportError:
        return verify_one(prefix)
    try:
        with CheckpointReader(prefix) as reader:
            total = sum(e.size for e in reader.index.entries.values())
    except CheckpointError:
        return verify_one(prefix)  # reports the error
    columns = (TextColumn("verifying {task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn())
    with Progress(*columns, transient=True, redirect_stdout=False, redirect_stderr=False) as bar:
        task = bar.add_task(os.path.basename(prefix), total=total)
        return verify_one(prefix, lambda n: bar.advance(task, n))


def _report(o: Outcome) -> None:
    if o.status == NOT_A_CHECKPOINT:
        print(f"NOT A CHECKPOINT {o.prefix}: {o.error}", file=sys.stderr)
        return
    if o.error is not None:
        print(f"CORRUPT {o.prefix}: {o.error}", file=sys.stderr)
        return
    rate = f"{o.nbytes / o.seconds / 1e9:.2f} GB/s" if o.seconds > 0 else "-"
    if o.status == OK:
        print(f"OK {o.prefix}: all {o.tensors} tensors verified (index and data CRCs match), "
              f"{human(o.nbytes)} in {o.seconds:.2f} s, {rate}")
        return
    assert o.failures is not None
    for line in o.failures.lines():
        print(f"  {line}", file=sys.stderr)
    print(f"CORRUPT {o.prefix}: {o.failures.keys()} of {o.tensors} tensors failed verification "
          f"({len(o.failures.groups)} distinct failure(s)); {human(o.nbytes)} verified in {o.seconds:.2f} s, {rate}",
          file=sys.stderr)
