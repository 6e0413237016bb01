"""Run gpuckpt's entry points on crafted files in a child process, under a timeout and an address-space cap.

``run(ops, timeout=..., address_space=...)`` starts ``python -m tests.robustness.hostile_child``,
which caps its address space (``RLIMIT_AS``), runs each ``(op, target)`` in turn and prints one
JSON line per op: how it ended (``ok``, ``CheckpointError`` or ``escaped``), the exception's
type, message, ``path`` and ``key``, and the process's peak resident memory before and after.
A hang is a ``subprocess.TimeoutExpired`` in the parent, reported as a failure.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass

ADDRESS_SPACE = 4 << 30  # the cap the hostile-input issue tested under
TIMEOUT_S = 60


@dataclass(frozen=True)
class Outcome:
    """How one op ended in the child."""

    op: str
    target: str
    outcome: str  # "ok", "CheckpointError" or "escaped"
    type: str | None
    message: str
    path: str | None
    key: str | None
    value: str | None
    rss_before: int
    rss_after: int
    reason: str | None = None  # a DataLossError's reason (gpuckpt.errors.DataLossReason)

    @property
    def grew(self) -> int:
        """Bytes by which the child's peak resident memory grew during this op."""
        return self.rss_after - self.rss_before


def run(ops: list[tuple[str, str]], *, timeout: float = TIMEOUT_S, address_space: int = ADDRESS_SPACE,
        cwd: str | None = None) -> list[Outcome]:
    """Run ``ops`` in a fresh child; AssertionError if it hangs past ``timeout`` or dies."""
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    argv = [sys.executable, "-m", "tests.robustness.hostile_child", str(address_space), json.dumps(ops)]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd or root,
                              check=False)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"child hung for {timeout} s on {ops}; stderr: {exc.stderr}") from None
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or len(lines) != len(ops):
        raise AssertionError(f"child exited {proc.returncode} after {len(lines)} of {len(ops)} ops: {proc.stderr[-3000:]}")
    return [Outcome(**json.loads(line)) for line in lines]


def _ops():
    """The entry points a user reaches: each takes a path and returns something printable."""
    import warnings

    import numpy as np

    import gpuckpt
    from gpuckpt import cli

    def load(target: str) -> str:
        with gpuckpt.load_checkpoint(target) as reader:
            return str({key: getattr(reader.get_tensor(key), "shape", ()) for key in reader.keys()})

    def restore(target: str) -> str:
        checkpoint = gpuckpt.Checkpoint(v=gpuckpt.Variable(np.zeros(4, np.float32)))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            checkpoint.restore(target).expect_partial()
            del checkpoint
        return "restored"

    def command(name: str):
        return lambda target: str(cli.main([name, target]))

    def manager(target: str, save: bool) -> str:
        checkpoint = gpuckpt.Checkpoint(v=gpuckpt.Variable(np.zeros(4, np.float32)))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mgr = gpuckpt.CheckpointManager(checkpoint, target, max_to_keep=1)
            restored = mgr.restore_or_initialize()
            saved = [mgr.save(), mgr.save()] if save else []
        return json.dumps({"restored": restored, "saved": saved, "latest": mgr.latest_checkpoint,
                           "value": float(checkpoint.v.numpy()[0])})

    return {
        "load": load,
        "restore": restore,
        "verify": command("verify"),
        "inspect": command("inspect"),
        "latest": lambda target: str(gpuckpt.latest_checkpoint(target)),
        "manager": lambda target: manager(target, False),
        "manager_save": lambda target: manager(target, True),
    }


def _child(address_space: int, ops: list[tuple[str, str]]) -> None:
    import contextlib
    import io
    import resource
    import traceback

    resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))
    import gpuckpt

    table = _ops()

    def peak() -> int:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    for op, target in ops:
        record = {"op": op, "target": target, "type": None, "message": "", "path": None, "key": None,
                  "value": None, "rss_before": peak()}
        sink = io.StringIO()
        try:
            with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
                record["value"] = table[op](target)
            record["outcome"] = "ok"
            record["message"] = sink.getvalue()[-4000:]
        except gpuckpt.CheckpointError as exc:
            record.update(outcome="CheckpointError", type=type(exc).__name__, message=str(exc)[:4000],
                          path=exc.path, key=exc.key,
                          reason=exc.reason.value if isinstance(exc, gpuckpt.DataLossError) else None)
        except BaseException as exc:  # noqa: BLE001 - reporting what escaped is the point
            record.update(outcome="escaped", type=type(exc).__name__, message=traceback.format_exc()[-4000:])
        record["rss_after"] = peak()
        print(json.dumps(record), flush=True)


if __name__ == "__main__":
    _child(int(sys.argv[1]), json.loads(sys.argv[2]))
