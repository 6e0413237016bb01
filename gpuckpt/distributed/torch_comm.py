"""The communicator over ``torch.distributed`` (any backend: gloo, NCCL, ...), for jobs run by ``torchrun``.

Reports and verdicts travel through the process group's key-value store (the ``TCPStore`` that
``init_process_group`` set up), not through collectives: a store key can be polled without
blocking (``Store.check``), so the root knows *which* ranks are silent at the deadline, and no
wait depends on the backend's own timeout or on a CUDA stream (NCCL's object collectives would
need both). Broadcasts of replicated arrays (``replicated="broadcast"`` restores) use a gloo
group, created on first use when the group's backend is not gloo (``new_group`` is collective
over the whole job: with a non-gloo subgroup, every rank of the job must take part in that
first broadcast restore).

torch is imported here on first use, through ``gpuckpt._deps``.
"""

from __future__ import annotations

import collections
import pickle
import time
from datetime import timedelta
from typing import Any

import numpy as np

from .._deps import import_optional
from ..errors import InvalidArgumentError
from .comm import ROOT, Agreements, poll, silent_root
from .errors import DistributedError

_CREATED: collections.Counter = collections.Counter()  # communicators made so far per rank set: the namespace


def torch_distributed():
    """The ``torch.distributed`` module (ImportError naming the ``torch`` extra when torch is missing)."""
    return import_optional("torch.distributed", extra="torch")


class TorchCommunicator(Agreements):
    """The ranks of a ``torch.distributed`` process group (default: the whole job), with bounded exchanges.

    Every rank must create its communicators for a group in the same order (each gets the next
    namespace in the group's store). ``timeout`` and ``grace`` as for every communicator
    (``comm.Communicator``).
    """

    def __init__(self, group: Any = None, *, timeout: float = 300.0, grace: float | None = None):
        dist = torch_distributed()
        if not dist.is_available() or not dist.is_initialized():
            raise InvalidArgumentError("torch.distributed is not initialized: call "
                                       "torch.distributed.init_process_group (torchrun sets its environment) "
                                       "before creating a distributed checkpoint")
        self.group = group
        self.rank: int = dist.get_rank(group)
        self.size: int = dist.get_world_size(group)
        self.global_ranks: tuple[int, ...] = tuple(dist.get_process_group_ranks(group or dist.group.WORLD))
        self.timeout = float(timeout)
        self.grace = max(10.0, self.timeout / 2) if grace is None else float(grace)
        _CREATED[self.global_ranks] += 1
        ranks = ",".join(map(str, self.global_ranks)) if len(self.global_ranks) <= 8 else hash(self.global_ranks)
        self.namespace = f"gpuckpt/{ranks}/{_CREATED[self.global_ranks]}/"
        self._store = dist.PrefixStore(self.namespace, dist.distributed_c10d._get_default_store())
        self._round = 0
        self._gloo: Any = None

    def next_round(self) -> int:
        self._round += 1
        return self._round

    def _set(self, key: str, obj: Any) -> None:
        self._store.set(key, pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))

    def _take(self, key: str, *, delete: bool) -> Any:
        value = pickle.loads(self._store.get(key))
        if delete:
            self._store.delete_key(key)
        return value

    def send_report(self, report: Any, round: int) -> None:
        try:
            self._set(f"{round}/report/{self.rank}", report)
        except Exception:  # the store is gone with its host: receive_verdict says so
            pass

    def collect_reports(self, round: int, deadline: float) -> tuple[dict[int, Any], dict[int, str]]:
        reports: dict[int, Any] = {}
        waiting = set(range(1, self.size))
        lost: list[str] = []

        def arrived() -> bool:
            try:
                for rank in sorted(waiting):
                    key = f"{round}/report/{rank}"
                    if self._store.check([key]):
                        reports[rank] = self._take(key, delete=True)
                        waiting.discard(rank)
            except Exception as exc:  # the store's host (torchrun's agent, or rank 0) is unreachable
                lost.append(f"the process group's store is unreachable ({type(exc).__name__}: {exc})")
                return True
            return not waiting

        poll(arrived, deadline)
        why = lost[0] if lost else f"no report within {self.timeout:.0f} s"
        if not waiting and round > 1:
            self._forget(f"{round - 1}/verdict")  # every rank that reported this round has read the last verdict
        return reports, {rank: why for rank in waiting}

    def _forget(self, key: str) -> None:
        try:
            self._store.delete_key(key)
        except Exception:
            pass

    def send_verdict(self, verdict: Any, round: int) -> None:
        if self.size > 1:
            try:
                self._set(f"{round}/verdict", verdict)
            except Exception:  # nobody can hear it: they give up at their deadline
                pass

    def receive_verdict(self, round: int, deadline: float, what: str) -> Any:
        key = f"{round}/verdict"
        try:
            if poll(lambda: self._store.check([key]), deadline):
                return self._take(key, delete=False)
            why = None
        except Exception as exc:
            why = f"is unreachable (the process group's store failed: {type(exc).__name__}: {exc})"
        raise silent_root(self.rank, self.timeout + self.grace, what, why)

    def _gloo_group(self) -> Any:
        """The group for CPU broadcasts: this one when it is gloo, else a gloo group over the same ranks."""
        dist = torch_distributed()
        if self._gloo is None:
            if dist.get_backend(self.group) == "gloo":
                self._gloo = self.group if self.group is not None else dist.group.WORLD
            else:
                self._gloo = dist.new_group(list(self.global_ranks), backend="gloo",
                                            timeout=timedelta(seconds=self.timeout))
        return self._gloo

    def bcast_arrays(self, arrays: list, *, what: str) -> None:
        """Broadcast contiguous NumPy arrays in place from the root over gloo, as bytes; bounded by ``timeout``."""
        arrays = [a for a in arrays if a.size]
        if not arrays or self.size == 1:
            return
        dist = torch_distributed()
        torch = import_optional("torch", extra="torch")
        group = self._gloo_group()
        source = self.global_ranks[ROOT]
        started = time.monotonic()
        works = [dist.broadcast(torch.from_numpy(np.ascontiguousarray(a).reshape(-1).view(np.uint8)), src=source,
                                group=group, async_op=True) for a in arrays]
        try:
            for work in works:
                left = max(1.0, self.timeout - (time.monotonic() - started))
                work.wait(timeout=timedelta(seconds=left))
        except Exception as exc:
            raise DistributedError(f"rank {self.rank}: broadcast of {what} did not finish within {self.timeout:.0f} s "
                                   f"({type(exc).__name__}: {exc})", ranks=()) from exc

    def duplicate(self) -> TorchCommunicator:
        """A communicator over the same ranks in its own store namespace (for background saves)."""
        return TorchCommunicator(self.group, timeout=self.timeout, grace=self.grace)

    def close(self) -> None:
        self._store = None
