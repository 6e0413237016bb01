"""The communicator seam: the few bounded exchanges a distributed save or restore needs.

Every distributed save and restore is one or more *agreements*: each rank sends a report to
the root, the root decides (and acts: commits a checkpoint, say), and sends the outcome back
(:func:`agree`, written once over the :class:`Communicator` protocol). A barrier is an
agreement with nothing to say; a failure is a :class:`Failure` verdict, which every rank
raises as :class:`DistributedError`. Both waits give up at a deadline, so a rank that died or
hangs turns into a :class:`DistributedError` naming it on every other rank, instead of a hang.

Implementations: :class:`Group` (mpi4py, here), :class:`~.torch_comm.TorchCommunicator`
(``torch.distributed``, any backend) and :class:`SingleProcess` (one rank, no messages).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

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


@runtime_checkable
class Communicator(Protocol):
    """What the distributed pipelines need from a job's ranks; every wait is bounded.

    ``round`` numbers one agreement (the same on every rank); reports and verdicts of different
    rounds never match. ``timeout`` bounds an agreement from its start; ranks other than the
    root wait ``timeout + grace`` for the verdict (the root may still be committing).
    """

    rank: int
    size: int
    timeout: float
    grace: float

    def next_round(self) -> int:
        """A fresh agreement number (every rank calls it at the same point)."""

    def send_report(self, report: Any, round: int) -> None:
        """Non-root: hand ``report`` to the root without waiting for it to be received."""

    def collect_reports(self, round: int, deadline: float) -> tuple[dict[int, Any], dict[int, str]]:
        """Root: the other ranks' reports that arrived by ``deadline``, and why each other rank sent none."""

    def send_verdict(self, verdict: Any, round: int) -> None:
        """Root: hand ``verdict`` to every other rank without waiting."""

    def receive_verdict(self, round: int, deadline: float, what: str) -> Any:
        """Non-root: the root's verdict, or DistributedError naming the root at ``deadline``."""

    def bcast_arrays(self, arrays: list, *, what: str) -> None:
        """Broadcast contiguous NumPy arrays in place from the root, giving up after ``timeout``."""

    def duplicate(self) -> Communicator:
        """An independent communicator over the same ranks (for background saves); collective."""

    def close(self) -> None:
        """Release what the communicator holds."""

    def agree(self, report: Any, decide: Callable[[dict[int, Any], dict[int, str]], Any], *,
              started: float | None = None, what: str = "operation") -> Any:
        """:func:`agree` over this communicator (every implementation inherits :class:`Agreements`)."""

    def barrier(self, what: str, error: str | None = None) -> None:
        """:func:`barrier` over this communicator."""


def agree(comm: Communicator, report: Any, decide: Callable[[dict[int, Any], dict[int, str]], Any], *,
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
    round = comm.next_round()
    if comm.rank != ROOT:
        comm.send_report(report, round)
        return comm.receive_verdict(round, started + comm.timeout + comm.grace, what)
    reports, missing = comm.collect_reports(round, started + comm.timeout)
    reports = {ROOT: report, **reports}
    error: BaseException | None = None
    try:
        verdict = decide(dict(sorted(reports.items())), dict(sorted(missing.items())))
    except BaseException as exc:  # every rank must hear of it, then the root raises it too
        error = exc
        verdict = Failure((ROOT,), f"rank {ROOT}: {type(exc).__name__}: {exc}")
    comm.send_verdict(verdict, round)
    if error is not None:
        raise DistributedError(f"rank {ROOT}: the {what} failed: {verdict.message}", ranks=(ROOT,)) from error
    return verdict


def barrier(comm: Communicator, what: str, error: str | None = None) -> None:
    """Every rank waits for every other (bounded); DistributedError on all when one reports ``error``
    or stays silent."""

    def decide(reports: dict[int, Any], missing: dict[int, str]) -> Failure | None:
        failed = sorted([r for r, e in reports.items() if e is not None] + list(missing))
        if not failed:
            return None
        why = [f"rank {r}: {reports[r]}" if r in reports else f"rank {r}: {missing[r]}" for r in failed]
        return Failure(tuple(failed), "; ".join(why))

    verdict = agree(comm, error, decide, what=what)
    if isinstance(verdict, Failure):
        raise DistributedError(f"rank {comm.rank}: {what} failed: {verdict.message}", ranks=verdict.ranks)


def poll(done: Callable[[], bool], deadline: float, max_pause: float = _POLL_MAX) -> bool:
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


_poll = poll  # the name the MPI code and its tests have used


def silent_root(rank: int, timeout: float, what: str, why: str | None = None) -> DistributedError:
    """The error of a rank whose verdict never came."""
    why = why or f"sent no verdict within {timeout:.0f} s; it failed or hangs"
    return DistributedError(
        f"rank {rank}: rank {ROOT}, which decides the {what}, {why} (if it was committing, the "
        "checkpoint may or may not have been committed: check the state file)", ranks=(ROOT,))


class Agreements:
    """``agree``/``barrier`` as methods of a communicator (the pipelines call ``comm.agree(...)``)."""

    def agree(self, report: Any, decide: Callable[[dict[int, Any], dict[int, str]], Any], *,
              started: float | None = None, what: str = "operation") -> Any:
        """:func:`agree` over this communicator."""
        return agree(self, report, decide, started=started, what=what)  # type: ignore[arg-type]

    def barrier(self, what: str, error: str | None = None) -> None:
        """:func:`barrier` over this communicator."""
        barrier(self, what, error)  # type: ignore[arg-type]


class SingleProcess(Agreements):
    """The one-rank job: agreements decide at once, with nothing sent."""

    rank = 0
    size = 1

    def __init__(self, *, timeout: float = 300.0, grace: float | None = None):
        self.timeout = float(timeout)
        self.grace = max(10.0, self.timeout / 2) if grace is None else float(grace)

    def next_round(self) -> int:
        return 0

    def send_report(self, report: Any, round: int) -> None:
        raise AssertionError("a single process is the root")

    def collect_reports(self, round: int, deadline: float) -> tuple[dict[int, Any], dict[int, str]]:
        return {}, {}

    def send_verdict(self, verdict: Any, round: int) -> None:
        pass

    def receive_verdict(self, round: int, deadline: float, what: str) -> Any:
        raise AssertionError("a single process is the root")

    def bcast_arrays(self, arrays: list, *, what: str) -> None:
        pass

    def duplicate(self) -> SingleProcess:
        return SingleProcess(timeout=self.timeout, grace=self.grace)

    def close(self) -> None:
        pass


class Group(Agreements):
    """The ranks of an MPI communicator (mpi4py), with exchanges that give up at a deadline.

    Both waits poll non-blocking MPI calls (``iprobe``, ``Test``). Open MPI usually ends the
    whole job when a rank is killed; the deadline covers the cases where it does not, and ranks
    that are merely stuck. The group wraps a duplicate of the caller's communicator, so
    gpuckpt's messages never match the application's.
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

    def next_round(self) -> int:
        self._sequence += 1
        return self._sequence

    @staticmethod
    def _tags(round: int) -> tuple[int, int]:
        base = 100 + 2 * (round % _TAG_SPACE)
        return base, base + 1

    def _send(self, obj: Any, dest: int, tag: int) -> None:
        """Start a non-blocking send; its request is kept until it completes (never waited on).
        A send to a rank known dead (ULFM) is dropped: that rank hears nothing any more."""
        try:
            self._pending = [r for r in self._pending if not r.Test()]
            self._pending.append(self.comm.isend(obj, dest=dest, tag=tag))
        except mpi().Exception:
            pass

    def send_report(self, report: Any, round: int) -> None:
        self._send(report, ROOT, self._tags(round)[0])

    def send_verdict(self, verdict: Any, round: int) -> None:
        for rank in range(1, self.size):
            self._send(verdict, rank, self._tags(round)[1])

    def collect_reports(self, round: int, deadline: float) -> tuple[dict[int, Any], dict[int, str]]:
        """Receive one report from every other rank until ``deadline``; return them and the ranks without one."""
        tag = self._tags(round)[0]
        reports: dict[int, Any] = {}
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

        poll(arrived, deadline)
        missing.update({rank: f"no report within {self.timeout:.0f} s" for rank in waiting})
        return reports, missing

    def receive_verdict(self, round: int, deadline: float, what: str) -> Any:
        tag = self._tags(round)[1]
        try:
            if poll(lambda: self.comm.iprobe(source=ROOT, tag=tag), deadline):
                return self.comm.recv(source=ROOT, tag=tag)
            why = None
        except mpi().Exception as exc:
            why = f"failed ({exc.Get_error_string()})"
        raise silent_root(self.rank, self.timeout + self.grace, what, why)

    def bcast_arrays(self, arrays: list, *, what: str) -> None:
        """Broadcast contiguous NumPy arrays in place from the root, all at once, giving up after ``timeout``.

        Non-blocking broadcasts only advance inside MPI calls, so this polls with pauses of at
        most 100 µs (a coarser poll would throttle the transfer itself).
        """
        if not arrays:
            return
        requests = [self.comm.Ibcast(array, root=ROOT) for array in arrays]
        if not poll(lambda: mpi().Request.Testall(requests), time.monotonic() + self.timeout, max_pause=1e-4):
            raise DistributedError(f"rank {self.rank}: broadcast of {what} did not finish within "
                                   f"{self.timeout:.0f} s", ranks=())

    def duplicate(self) -> Group:
        """A second duplicate of the communicator (background saves need ``MPI_THREAD_MULTIPLE``)."""
        MPI = mpi()
        if MPI.Query_thread() < MPI.THREAD_MULTIPLE:
            from ..errors import InvalidArgumentError
            raise InvalidArgumentError("async distributed saves need MPI_THREAD_MULTIPLE; this MPI was initialised "
                                       "with less (set mpi4py.rc.thread_level = 'multiple' before importing MPI)")
        return Group(self.comm, timeout=self.timeout, grace=self.grace)

    def close(self) -> None:
        """Free the duplicated communicator."""
        if self.comm is not None:
            self._pending = [r for r in self._pending if not r.Test()]
            if not self._pending:  # a send to a dead rank may never complete: then leave the duplicate be
                self.comm.Free()
            self.comm = None


MpiCommunicator = Group
