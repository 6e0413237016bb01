"""Run under ``mpirun -n N python mpi_worker.py MODE DIR``: one scenario of a distributed save or restore.

The model is the same on every rank; ``Sharded`` variables hold this rank's block of the
truth (``truth()``), computed identically everywhere. Exit status 0 means the scenario's own
checks passed on this rank; each rank prints ``rank R: ok ...`` lines for the test to read.
"""

from __future__ import annotations

import os
import signal
import sys
import time

import numpy as np

import gpuckpt
from gpuckpt.distributed import (
    DistributedCheckpoint,
    DistributedError,
    PartialDistributedRestoreError,
    Sharded,
    set_layout,
)
from gpuckpt.storage.filesystem import PosixIO


def truth() -> dict[str, np.ndarray]:
    """The whole tensors, identical on every rank."""
    rng = np.random.default_rng(7)
    return {
        "emb": rng.standard_normal((37, 5)).astype(np.float32),  # sharded along rows
        "proj": rng.standard_normal((6, 11)),  # float64, sharded along columns
        "grid": rng.integers(-1000, 1000, (8, 10), dtype=np.int32),  # sharded on a 2-D grid when size is 4
        "bias": rng.standard_normal(7).astype(np.float32),  # replicated
        "step": np.array(123456789, np.int64),  # replicated scalar
        "names": np.array([b"alpha", b"", b"\x00\xff"], dtype=object),  # replicated strings
    }


def same(a, b) -> bool:
    """Bit-identical: the same bytes for numbers, the same byte strings for strings."""
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype == object or b.dtype == object:
        return a.shape == b.shape and a.tolist() == b.tolist()
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def layouts(rank: int, size: int) -> dict[str, Sharded]:
    out = {"emb": Sharded.split((37, 5), rank, size, axis=0), "proj": Sharded.split((6, 11), rank, size, axis=1)}
    if size == 4:  # 2 x 2 blocks
        r, c = divmod(rank, 2)
        out["grid"] = Sharded((8, 10), (4 * r, 5 * c), (4, 5))
    else:
        out["grid"] = Sharded.split((8, 10), rank, size, axis=0)
    return out


def build(rank: int, size: int, *, fill: bool) -> tuple[gpuckpt.Module, dict]:
    """The model with this rank's parts: the truth (``fill``) or zeros (to restore into)."""
    whole = truth()
    lay = layouts(rank, size)
    model = gpuckpt.Module()
    for name, value in whole.items():
        if name in lay:
            value = value[lay[name].box.region()]
        var = gpuckpt.Variable(value if fill else np.full_like(value, b"" if value.dtype == object else 0), name=name)
        if name in lay:
            set_layout(var, lay[name])
        setattr(model, name, var)
    return model, lay


def expected(name: str, lay: dict) -> np.ndarray:
    value = truth()[name]
    return value[lay[name].box.region()] if name in lay else value


class Faulty(PosixIO):
    """System calls of one rank that fail, hang or kill the process in the middle of its shard."""

    def __init__(self, mode: str):
        self.mode = mode

    def pwrite(self, fd, data, offset):
        if self.mode == "raise":
            raise OSError(5, "injected I/O error")
        if self.mode == "hang":
            time.sleep(8)
        if self.mode == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        super().pwrite(fd, data, offset)


def say(rank: int, text: str) -> None:
    print(f"rank {rank}: {text}", flush=True)


def main(mode: str, directory: str) -> int:
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    fill = mode.startswith("save") or mode.startswith("fail")
    model, lay = build(rank, size, fill=fill)
    timeout = 3.0 if mode.startswith("fail") else 120.0
    dist = DistributedCheckpoint(gpuckpt.Checkpoint(model=model), timeout=timeout)
    prefix = os.path.join(directory, "ckpt")
    if mode in ("save", "save-async"):
        options = gpuckpt.CheckpointOptions(enable_async=mode == "save-async")
        path = dist.save(prefix, options)
        dist.sync()
        say(rank, f"ok saved {path}")
    elif mode in ("restore", "restore-broadcast"):
        if mode == "restore-broadcast":
            dist.replicated = "broadcast"  # rank 0 reads replicated tensors and broadcasts them
        result = dist.restore(directory)
        for name in truth():
            got = getattr(model, name).numpy()
            if not same(got, expected(name, lay)):
                say(rank, f"MISMATCH {name}")
                return 1
        say(rank, f"ok restored {len(result.restored_keys)} keys, {result.bytes_read} bytes, counter "
                  f"{int(dist.checkpoint.save_counter.numpy())}")
    elif mode in ("restore-corrupt", "restore-corrupt-atomic"):  # either way: nothing assigned on any rank
        try:
            dist.restore(directory, gpuckpt.CheckpointOptions(atomic_restore=mode.endswith("-atomic")))
        except DistributedError as exc:
            untouched = all(not np.asarray(getattr(model, name).numpy()).astype(bool).any() for name in truth())
            partial = isinstance(exc, PartialDistributedRestoreError)
            say(rank, f"{'ok' if untouched and not partial else 'CHANGED'} DistributedError ranks={list(exc.ranks)}: "
                      f"{exc}")
            return 0 if untouched and not partial else 1
        say(rank, "UNEXPECTED: the restore of a corrupt checkpoint returned")
        return 1
    elif mode.startswith("fail-"):
        # fail-FAULT[-RANK][-async]: FAULT is raise, hang or kill; RANK the culprit (default 1; 2 for kill)
        parts = mode.split("-")[1:]
        fault, asynchronous = parts[0], parts[-1] == "async"
        culprit = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else (2 if fault == "kill" else 1)
        dist.save(prefix)  # a good checkpoint first: ckpt-1
        io = Faulty(fault) if rank == culprit else None
        started = time.monotonic()
        try:
            path = dist.save(prefix, gpuckpt.CheckpointOptions(enable_async=asynchronous), io=io)
            if asynchronous:
                say(rank, f"async save of {path} returned")
                dist.sync()  # the background save's error surfaces here
        except DistributedError as exc:
            counter = int(dist.checkpoint.save_counter.numpy())
            say(rank, f"ok DistributedError ranks={list(exc.ranks)} after {time.monotonic() - started:.1f}s, "
                      f"counter {counter}: {exc}")
            if fault == "kill":  # a peer is dead: skip MPI_Finalize, which can wait on it under ULFM
                os._exit(0)
            return 0
        say(rank, "UNEXPECTED: the failed save returned")
        return 1
    else:
        raise SystemExit(f"unknown mode {mode}")
    dist.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
