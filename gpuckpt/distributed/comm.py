"""Bounded exchanges over an MPI communicator: no collective step of gpuckpt waits forever.

Every distributed save and restore is one or more *agreements*: each rank sends a report to
the root, the root decides (and acts: commits a checkpoint, say), and sends the outcome back.
Both waits poll non-blocking MPI calls (``iprobe``, ``Test``) against a deadline, so a rank
that died or hangs turns into a :class:`DistributedError` naming it on every other rank,
instead of a hang. (Open MPI usually ends the whole job when a rank is killed; the deadline
covers the cases where it does not, and ranks that are merely stuck.)

mpi4py is imported lazily, through ``gpuckpt._deps``; a :class:`Group` wraps a duplicate of
the caller's communicator, so gpuckpt's messages never match the application's.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .._deps import import_optional
from .errors import DistributedError

ROOT = 0
_TAG_SPACE = 8000  # tags wrap: two per agreement, well under MPI's guaranteed upper bound of 32767
_POLL_MIN, _POLL_MAX = 50e-6, 5e-3
_LAST_CHANCE = 1.0  # seconds a wait polls even when its deadline has passed: a message already sent
# may need a few calls into MPI's progress engine before ``iprobe`` sees it


def mpi():
    """The ``mpi4py.MPI`` module (ImportError naming the ``mpi`` extra when it is missing)."""
    return import_optional("mpi4py.MPI", extra="mpi")


@dataclass(frozen=True)
class Failure:
    """A failed agreement, as the root tells every rank: the ranks at fault and why."""

    ranks: tuple[int, ...]
    message: str


def _poll(done: Callable[[], bool], deadline: float, max_pause: float = _POLL_MAX) -> bool:
    """Call ``done()`` with a short, growing sleep between calls until it is true or ``deadline`` passes
    (but for at least ``_LAST_CHANCE`` seconds)."""
    deadline = max(deadline, time.monotonic() + _LAST_CHANCE)
    pause = _POLL_MIN
    while not done():
        if time.monotonic() >= deadline:
            return False
        time.sleep(pause)
        pause = min(pause * 2, max_pause)
    return True


class Group:
    """The ranks of one communicator, with exchanges that give up at a deadline.

    ``timeout`` (seconds) bounds each agreement: the root waits that long for reports; the
    others wait that long plus ``grace`` for the root's verdict (the root may still be
    committing when the last report arrives).
    """

    def __init__(self, comm: Any = None, *, timeout: float = 300.0, grace: float | None = None):
        MPI = mpi()
        self.comm = (comm if comm is not None else MPI.COMM_WORLD).Dup()
        self.rank: int = self.comm.Get_rank()
        self.size: int = self.comm.Get_size()
        self.timeout = float(timeout)
        self.grace = max(10.0, self.timeout / 2) if grace is None else float(grace)
        self._sequence = 0
        self._pending: list = []  # send requests; they own their pickled buffers until complete

    def _send(self, obj: Any, dest: int, tag: int) -> None:
        """Start a non-blocking send; its request is kept until it completes (never waited on).
        A send to a rank known dead (ULFM) is dropped: that rank hears nothing any more."""
        try:
            self._pending = [r for r in self._pending if not r.Test()]
            self._pending.append(self.comm.isend(obj, dest=dest, tag=tag))
        except mpi().Exception:
            pass

    def _tags(self) -> tuple[int, int]:
        self._sequence += 1
        base = 100 + 2 * (self._sequence % _TAG_SPACE)
        return base, base + 1

    def agree(self, report: Any, decide: Callable[[dict[int, Any], dict[int, str]], Any], *,
              started: float | None = None, what: str = "operation") -> Any:
        """Send ``report`` to the root; the root calls ``decide(reports_by_rank, missing)`` and every
        rank returns what it returned (``missing``: rank → why it sent no report).

        Deadlines count from ``started`` (``time.monotonic()``; default now): the root stops
        waiting at ``started + timeout`` and passes the ranks still silent to ``decide``; the
        other ranks raise :class:`DistributedError` if no verdict came by ``started + timeout + grace``.
        An exception raised by ``decide`` is sent to every rank as a :class:`Failure`, and raised
        on the root as a :class:`DistributedError` (chained to it).
        """
        started = time.monotonic() if started is None else started
        report_tag, verdict_tag = self._tags()
        if self.rank != ROOT:
            self._send(report, ROOT, report_tag)
            return self._receive(ROOT, verdict_tag, started + self.timeout + self.grace, what)
        reports = {ROOT: report}
        missing = self._collect(reports, report_tag, started + self.timeout)
        error: BaseException | None = None
        try:
            verdict = decide(reports, missing)
        except BaseException as exc:  # every rank must hear of it, then the root raises it too
            error = exc
            verdict = Failure((ROOT,), f"rank {ROOT}: {type(exc).__name__}: {exc}")
        for rank in range(1, self.size):
            self._send(verdict, rank, verdict_tag)
        if error is not None:
            raise DistributedError(f"rank {ROOT}: the {what} failed: {verdict.message}", ranks=(ROOT,)) from error
        return verdict

    def _collect(self, reports: dict[int, Any], tag: int, deadline: float) -> dict[int, str]:
        """Receive one report from every other rank until ``deadline``; return the ranks without one, and why."""
        waiting = set(range(1, self.size))
        missing: dict[int, str] = {}

        def arrived() -> bool:
            for rank in sorted(waiting):
                try:
                    if self.comm.iprobe(source=rank, tag=tag):
                        reports[rank] = self.comm.recv(source=rank, tag=tag)
                        waiting.discard(rank)
                except mpi().Exception as exc:  # ULFM (mpirun --with-ft ulfm): the rank is known dead
                    missing[rank] = f"process failed ({exc.Get_error_string()})"
                    waiting.discard(rank)
            return not waiting

        _poll(arrived, deadline)
        missing.update({rank: f"no report within {self.timeout:.0f} s" for rank in waiting})
        return dict(sorted(missing.items()))

    def _receive(self, source: int, tag: int, deadline: float, what: str) -> Any:
        try:
            if _poll(lambda: self.comm.iprobe(source=source, tag=tag), deadline):
                return self.comm.recv(source=source, tag=tag)
            why = f"sent no verdict within {self.timeout + self.grace:.0f} s; it failed or hangs"
        except mpi().Exception as exc:
            why = f"failed ({exc.Get_error_string()})"
        raise DistributedError(
            f"rank {self.rank}: rank {source}, which decides the {what}, {why} (if it was committing, the "
            "checkpoint may or may not have been committed: check the state file)", ranks=(source,))

    def bcast_arrays(self, arrays: list, *, what: str) -> None:
        """Broadcast contiguous NumPy arrays in place from the root, all at once, giving up after ``timeout``.

        Non-blocking broadcasts only advance inside MPI calls, so this polls with pauses of at
        most 100 µs (a coarser poll would throttle the transfer itself).
        """
        if not arrays:
            return
        requests = [self.comm.Ibcast(array, root=ROOT) for array in arrays]
        if not _poll(lambda: mpi().Request.Testall(requests), time.monotonic() + self.timeout, max_pause=1e-4):
            raise DistributedError(f"rank {self.rank}: broadcast of {what} did not finish within "
                                   f"{self.timeout:.0f} s", ranks=())

    def close(self) -> None:
        """Free the duplicated communicator."""
        if self.comm is not None:
            self._pending = [r for r in self._pending if not r.Test()]
            if not self._pending:  # a send to a dead rank may never complete: then leave the duplicate be
                self.comm.Free()
            self.comm = None
