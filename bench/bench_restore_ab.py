"""Compare ``Checkpoint.read`` or ``write`` of gpuckpt trees on one workload, call by call, in the same conditions.

On a shared, loaded machine two runs minutes apart differ by more than most changes do, so this
starts one worker process per tree (each with its own ``PYTHONPATH``), has each build the same
``bench_io`` workload and write it (fsync off), and then asks them for one restore each in turn,
alternating, ``--reads`` times. It prints, per tree, the process CPU time (all threads) and the
wall time of one ``Checkpoint.read`` into existing ``Variable``s (``--adapter torch``: into the parameters
of an ``nn.Module``, through the PyTorch adapter): minimum and median. ``--op save`` times one
``Checkpoint.write`` of the same objects over the same path instead (fsync off: the structure's cost).

    python bench/bench_restore_ab.py /tmp/before /tmp/after [--workload small5000] [--scale 8] [--reads 15]
                                     [--adapter {variables,torch}] [--op {read,save}]

Each tree is a directory holding ``gpuckpt/`` (for instance ``git archive <commit> gpuckpt | tar -x -C DIR``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def worker(workload: str, scale: int, adapter: str, op: str = "read") -> None:
    """Build and write the workload, then restore (``op`` save: write) it once per line read from stdin,
    printing CPU and wall ms."""
    import numpy as np

    import gpuckpt  # first: from this worker's PYTHONPATH (bench_io puts this checkout on sys.path)

    sys.path.insert(0, HERE)
    from bench_io import api_state

    state = api_state(workload, scale)
    src, tgt = _holders(state, adapter)
    with tempfile.TemporaryDirectory() as work:
        options = gpuckpt.CheckpointOptions(fsync=False)
        path = src.write(os.path.join(work, "c"), options=options)
        tgt.read(path)
        print("ready", gpuckpt.__file__, flush=True)
        for _ in sys.stdin:
            wall, cpu = time.perf_counter(), time.process_time()
            if op == "save":
                src.write(path, options=options)
            else:
                tgt.read(path)
            print(f"{(time.process_time() - cpu) * 1e3:.2f} {(time.perf_counter() - wall) * 1e3:.2f}", flush=True)
        for name, value in state.items():
            assert np.array_equal(_value_of(tgt, name, adapter), value), name


def _holders(state, adapter: str):
    """Two checkpoints of the workload's tensors: one holding its values, one zeros of the same shapes."""
    import numpy as np

    import gpuckpt

    if adapter == "torch":
        import torch

        def module(values):
            m = torch.nn.Module()
            for name, value in values.items():
                m.register_parameter(name.replace("/", "_"),
                                     torch.nn.Parameter(torch.from_numpy(value).clone(), requires_grad=False))
            return m

        return (gpuckpt.Checkpoint(state=module(state)),
                gpuckpt.Checkpoint(state=module({k: np.zeros_like(v) for k, v in state.items()})))
    src = gpuckpt.Checkpoint(state=gpuckpt.Module())
    tgt = gpuckpt.Checkpoint(state=gpuckpt.Module())
    for name, value in state.items():
        setattr(src.state, name.replace("/", "_"), gpuckpt.Variable(value))
        setattr(tgt.state, name.replace("/", "_"), gpuckpt.Variable(np.zeros_like(value)))
    return src, tgt


def _value_of(checkpoint, name: str, adapter: str):
    value = getattr(checkpoint.state, name.replace("/", "_"))
    return value.detach().numpy() if adapter == "torch" else value.numpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("trees", nargs="+", help="directories holding a gpuckpt/ package each")
    ap.add_argument("--workload", default="small5000", choices=("gpt2", "small5000", "mixed"))
    ap.add_argument("--scale", type=int, default=8)
    ap.add_argument("--reads", type=int, default=15)
    ap.add_argument("--adapter", default="variables", choices=("variables", "torch"))
    ap.add_argument("--op", default="read", choices=("read", "save"))
    args = ap.parse_args()
    workers = []
    for tree in args.trees:
        env = dict(os.environ, PYTHONPATH=os.path.abspath(tree))
        proc = subprocess.Popen([sys.executable, __file__, "--worker", args.workload, str(args.scale), args.adapter,
                                 args.op],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
                                cwd=tempfile.gettempdir())
        assert proc.stdin is not None and proc.stdout is not None
        print(proc.stdout.readline().strip())
        workers.append(proc)
    times: dict[str, list[tuple[float, float]]] = {tree: [] for tree in args.trees}
    for _ in range(args.reads):
        for tree, proc in zip(args.trees, workers):
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write("read\n")
            proc.stdin.flush()
            cpu, wall = map(float, proc.stdout.readline().split())
            times[tree].append((cpu, wall))
    for proc in workers:
        assert proc.stdin is not None
        proc.stdin.close()
        if proc.wait() != 0:
            raise SystemExit("a worker failed (its restored values differ?)")
    for tree, pairs in times.items():
        cpu = [c for c, _ in pairs]
        wall = [w for _, w in pairs]
        call = "write" if args.op == "save" else "read"
        print(f"{tree}: Checkpoint.{call} of {args.workload} ({args.adapter}): CPU min {min(cpu):.1f} "
              f"median {statistics.median(cpu):.1f} ms; wall min {min(wall):.1f} "
              f"median {statistics.median(wall):.1f} ms")


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--worker":
        worker(sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5])
    else:
        main()
