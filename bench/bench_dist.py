"""Aggregate save and restore throughput of FSDP2 state (parameters + AdamW states) over torch.distributed on
1, 2 and 4 ranks: gpuckpt's DistributedCheckpoint beside PyTorch DCP's save/load and both async saves'
blocking time, on the same state in the same run.

    python bench/bench_dist.py [--size-mib 128] [--ranks 1 2 4] [--rounds 3] [--dir DIR] [--json FILE]

The model: ``--size-mib`` of float32 parameters in 1024 x 1024 bias-free linear layers, each
wrapped by FSDP2 ``fully_shard`` (``Shard(0)`` over the ranks), and AdamW's ``exp_avg`` and
``exp_avg_sq`` (after one step): about 3 x ``--size-mib`` of state. Aggregate throughput is
that state's size divided by the wall time of the slowest rank, best of ``--rounds``. Saves
are durable on both sides (gpuckpt fsyncs; DCP's FileSystemWriter syncs its files). Restores
are cold: the data files are written back and dropped from the page cache first. gpuckpt
verifies every block's CRC32C on restore (by default every rank verifies before any assigns, then
reads into the shards; "atomic" is ``atomic_restore=True``, read into new buffers and copied);
DCP verifies nothing. DCP is given its state dict
(``get_state_dict``) ready-made, outside the timing. Blocking time: how long ``save`` with
``enable_async`` (gpuckpt) or ``dcp.async_save`` keeps the training loop waiting; the
background write then completes before the next round. Each rank count is one ``torchrun``
(gloo, CPU); NCCL on GPUs is not measured here.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

WIDTH = 1024


def drop_cache(directory: str) -> None:
    """Write back and evict every file under ``directory`` from the page cache."""
    for root, _, names in os.walk(directory):
        for name in names:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fdatasync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def worker(args) -> None:
    import torch
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    import gpuckpt
    from gpuckpt.distributed import DistributedCheckpoint

    dist.init_process_group("gloo")
    rank, size = dist.get_rank(), dist.get_world_size()
    mesh = init_device_mesh("cpu", (size,))
    layers = max(1, (args.size_mib << 20) // (4 * WIDTH * WIDTH))
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(WIDTH, WIDTH, bias=False) for _ in range(layers)])
    for layer in model:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(2, WIDTH)).sum().backward()
    opt.step()
    opt.zero_grad()
    state_bytes = 3 * layers * 4 * WIDTH * WIDTH

    ours = DistributedCheckpoint(gpuckpt.Checkpoint(model=model, optimizer=opt), timeout=600)
    model_sd, optim_sd = get_state_dict(model, opt)
    theirs = {"model": model_sd, "optim": optim_sd}
    base = os.path.join(args.dir, f"r{size}")
    background = dist.new_group(backend="gloo")  # DCP's async save runs collectives on a thread: not ours

    def timed(step) -> float:
        dist.barrier()
        started = time.perf_counter()
        step()
        elapsed = torch.tensor(time.perf_counter() - started, dtype=torch.float64)
        dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)
        return float(elapsed)

    def fresh(name: str) -> str:
        path = os.path.join(base, name)
        if rank == 0:
            shutil.rmtree(path, ignore_errors=True)
            os.makedirs(path)
        dist.barrier()
        return path

    def cold(path: str) -> None:
        if rank == 0:
            drop_cache(path)

    best: dict[str, float] = {}

    def keep(name: str, value: float) -> None:
        best[name] = min(best.get(name, float("inf")), value)

    asynchronous = gpuckpt.CheckpointOptions(enable_async=True)
    atomic = gpuckpt.CheckpointOptions(atomic_restore=True)
    for round_ in range(args.rounds):
        for first in ("gpuckpt", "dcp")[:: 1 if round_ % 2 == 0 else -1]:  # alternate which goes first
            if first == "gpuckpt":
                path = fresh("gpuckpt")
                keep("gpuckpt_save", timed(lambda: ours.write(os.path.join(path, "ckpt"))))
                cold(path)
                keep("gpuckpt_restore", timed(lambda: ours.restore(os.path.join(path, "ckpt"))))
                cold(path)
                keep("gpuckpt_restore_atomic", timed(lambda: ours.restore(os.path.join(path, "ckpt"), atomic)))
                path = fresh("gpuckpt-async")
                keep("gpuckpt_async_blocking", timed(lambda: ours.write(os.path.join(path, "ckpt"), asynchronous)))
                keep("gpuckpt_async_total", timed(ours.sync) + best["gpuckpt_async_blocking"])
            else:
                path = fresh("dcp")
                keep("dcp_save", timed(lambda: dcp.save(theirs, checkpoint_id=path)))
                cold(path)
                keep("dcp_load", timed(lambda: dcp.load(theirs, checkpoint_id=path)))
                path = fresh("dcp-async")
                pending = []
                keep("dcp_async_blocking", timed(lambda: pending.append(
                    dcp.async_save(theirs, checkpoint_id=path, process_group=background))))
                keep("dcp_async_total", timed(lambda: pending[0].result()) + best["dcp_async_blocking"])
    ours.close()
    if rank == 0:
        shutil.rmtree(base, ignore_errors=True)
        print(json.dumps({"ranks": size, "state_bytes": state_bytes, **best}), flush=True)
    dist.destroy_process_group()


def run(args, ranks: int) -> dict:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}", __file__,
               "--worker", "--size-mib", str(args.size_mib), "--rounds", str(args.rounds), "--dir", args.dir]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr[-5000:]}")
    return json.loads([line for line in done.stdout.splitlines() if line.startswith("{")][-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=128, help="parameter bytes (the state is about 3 x)")
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", default=None)
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    own_dir = args.dir is None
    args.dir = args.dir or tempfile.mkdtemp(prefix="gpuckpt-bench-dist-")
    rows = []
    try:
        print(f"FSDP2 state of {args.size_mib} MiB parameters + AdamW states, gloo on CPU, fsync on, cold restores, "
              f"best of {args.rounds}, {os.cpu_count()} CPUs")
        print(f"{'':8}{'save GB/s':>22}{'restore GB/s':>33}{'async blocking ms':>22}")
        print(f"{'ranks':8}{'gpuckpt':>11}{'DCP':>11}{'gpuckpt':>11}{'atomic':>11}{'DCP':>11}{'gpuckpt':>11}"
              f"{'DCP':>11}")
        for n in args.ranks:
            r = run(args, n)
            rows.append(r)
            gb = r["state_bytes"] / 1e9
            print(f"{n:<8}{gb / r['gpuckpt_save']:11.2f}{gb / r['dcp_save']:11.2f}{gb / r['gpuckpt_restore']:11.2f}"
                  f"{gb / r['gpuckpt_restore_atomic']:11.2f}{gb / r['dcp_load']:11.2f}{1e3 * r['gpuckpt_async_blocking']:11.1f}"
                  f"{1e3 * r['dcp_async_blocking']:11.1f}", flush=True)
    finally:
        if own_dir:
            shutil.rmtree(args.dir, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"benchmark": "bench_dist", "size_mib": args.size_mib, "rows": rows},
                                              indent=2))


if __name__ == "__main__":
    main()
