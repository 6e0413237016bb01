"""Run under ``torchrun --nproc_per_node N torch_worker.py DIR SCENARIO...`` (or the tests' direct launcher).

Scenarios of distributed saves and restores of FSDP2/DTensor state over torch.distributed
(gloo, CPU), one after another in the same processes; a scenario is ``mode:arg:arg``. Each
rank prints ``rank R: ok ...`` for what it checked and ``rank R: losses ...`` (float hex) for
the tests to compare; exit status 0 means this rank's own checks passed.
"""

from __future__ import annotations

import os
import signal
import sys
import time

import torch
import torch.distributed as dist

import gpuckpt
import gpuckpt.torch as gtorch
from gpuckpt.distributed import (
    DistributedCheckpoint,
    DistributedCheckpointManager,
    DistributedError,
    PartialDistributedRestoreError,
)
from gpuckpt.errors import InvalidArgumentError
from gpuckpt.storage.filesystem import PosixIO

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import model as M  # noqa: E402


def say(text: str) -> None:
    """One line, in one write (the ranks share the launcher's stdout; Python may write unbuffered)."""
    os.write(1, f"rank {dist.get_rank()}: {text}\n".encode())


def mesh_of(spec: str):
    from torch.distributed.device_mesh import init_device_mesh

    shape = tuple(int(x) for x in spec.split("x"))
    return init_device_mesh("cpu", shape, mesh_dim_names=("replicate", "shard")[-len(shape):])


def sharded(spec: str, seed: int = 0):
    """The model (``seed`` 0: the reference's initial values) under FSDP2 on mesh ``spec``, and its AdamW."""
    module = M.shard(M.build(seed), mesh_of(spec)) if spec != "plain" else M.build(seed)
    return module, M.optimizer(module)


def losses(values: list[float]) -> None:
    say("losses " + " ".join(v.hex() for v in values))


def train_save(directory: str, spec: str) -> None:
    """Train, saving asynchronously after every step through a manager keeping 2; train on."""
    module, opt = sharded(spec)
    dist_ckpt = DistributedCheckpoint(gpuckpt.Checkpoint(model=module, optimizer=opt), timeout=60)
    manager = DistributedCheckpointManager(dist_ckpt, os.path.join(directory, "fsdp"), max_to_keep=2)
    seen = []
    for step in range(M.STEPS_BEFORE):
        seen.append(M.train_step(module, opt, step))
        manager.save(options=gpuckpt.CheckpointOptions(enable_async=True))
    for step in range(M.STEPS_BEFORE, M.STEPS_BEFORE + M.STEPS_AFTER):  # while the last save is in flight
        seen.append(M.train_step(module, opt, step))
    manager.sync()
    losses(seen)
    say(f"ok saved {manager.latest_checkpoint} keeping {[os.path.basename(p) for p in manager.checkpoints]}")
    dist_ckpt.close()


def restore(directory: str, spec: str, source: str, save_as: str = "") -> None:
    """Restore onto a freshly initialized model on mesh ``spec`` (``plain``: no FSDP), train on;
    optionally write the restored state in this layout."""
    module, opt = sharded(spec, seed=1)
    dist_ckpt = DistributedCheckpoint(gpuckpt.Checkpoint(model=module, optimizer=opt), timeout=60)
    result = dist_ckpt.restore(os.path.join(directory, source))
    if result.unused_keys:
        raise SystemExit(f"unused keys: {result.unused_keys}")
    say(f"ok restored {len(result.restored_keys)} keys, {result.bytes_read} bytes, counter "
        f"{int(dist_ckpt.checkpoint.save_counter.numpy())}")
    if save_as:
        dist_ckpt.write(os.path.join(directory, save_as))
        say(f"ok wrote {save_as}")
    losses([M.train_step(module, opt, s) for s in range(M.STEPS_BEFORE, M.STEPS_BEFORE + M.STEPS_AFTER)])
    dist_ckpt.close()


def deferred(directory: str, spec: str, source: str) -> None:
    """Restore the model alone, then create its optimizer and attach it: the optimizer gets its state then."""
    module, _ = sharded(spec, seed=1)
    ckpt = gpuckpt.Checkpoint(model=module)
    dist_ckpt = DistributedCheckpoint(ckpt, timeout=60)
    result = dist_ckpt.restore(os.path.join(directory, source))
    if result.unused_keys or not any("OPTIMIZER_SLOT" in k for k in result.deferred_keys):
        raise SystemExit(f"unused {result.unused_keys}, deferred {result.deferred_keys}")
    opt = M.optimizer(module)
    if opt.state:
        raise SystemExit("a fresh optimizer has state")
    ckpt.optimizer = opt  # attached after the restore: its values arrive now
    with gpuckpt.load_checkpoint(os.path.join(directory, source)) as reader:
        for name, param in module.named_parameters():
            state = opt.state[param]
            for slot in ("exp_avg", "exp_avg_sq", "step"):
                key = f"model/{name.replace('.', '/')}/.OPTIMIZER_SLOT/optimizer/{slot}/.ATTRIBUTES/VARIABLE_VALUE"
                value = state[slot]
                whole = value.full_tensor() if hasattr(value, "full_tensor") else value
                if not torch.equal(whole, torch.from_numpy(reader.get_tensor(key))):
                    raise SystemExit(f"{key}: {whole} after the deferred restore")
    kind = type(opt.state[next(module.parameters())]["exp_avg"]).__name__
    say(f"ok deferred {len(result.deferred_keys)} values, {kind} state equal to the checkpoint's")
    losses([M.train_step(module, opt, s) for s in range(M.STEPS_BEFORE, M.STEPS_BEFORE + M.STEPS_AFTER)])
    dist_ckpt.close()


def single(directory: str) -> None:
    """FSDP2 on a one-rank mesh through a plain single-process Checkpoint: its shards are whole tensors."""
    module, opt = sharded("1")
    for step in range(M.STEPS_BEFORE):
        M.train_step(module, opt, step)
    path = gpuckpt.Checkpoint(model=module, optimizer=opt).write(os.path.join(directory, "single1"))
    module, opt = sharded("1", seed=1)
    gpuckpt.Checkpoint(model=module, optimizer=opt).read(path).assert_consumed()
    say(f"ok single-process restore, {type(opt.state[next(module.parameters())]['exp_avg']).__name__} state")
    losses([M.train_step(module, opt, s) for s in range(M.STEPS_BEFORE, M.STEPS_BEFORE + M.STEPS_AFTER)])


# -- DTensors of any placement, saved with one and restored with another ---------------------------

def _truth(name: str) -> torch.Tensor:
    shapes = {"a": ((9, 7), torch.float32), "b": ((11, 4), torch.int64), "c": ((5, 3), torch.float64),
              "d": ((6,), torch.bfloat16)}
    shape, dtype = shapes[name]
    return (torch.arange(int(torch.tensor(shape).prod())).reshape(shape) * 3 - 7).to(dtype)


def placements(directory: str) -> None:
    """On a 2 x 2 mesh: Shard on two mesh dims, the same tensor dim twice, uneven, Replicate, resharded."""
    from torch.distributed.tensor import DTensor, Partial, Replicate, Shard, distribute_tensor

    mesh = mesh_of("2x2")
    saved = {"a": [Shard(0), Shard(1)], "b": [Shard(0), Shard(0)], "c": [Replicate(), Shard(1)],
             "d": [Replicate(), Replicate()]}
    wanted = {"a": [Shard(1), Shard(0)], "b": [Replicate(), Shard(1)], "c": [Shard(0), Replicate()],
              "d": [Shard(0), Shard(0)]}

    def checkpoint(layouts, fill):
        tensors = {n: distribute_tensor(_truth(n) if fill else torch.zeros_like(_truth(n)), mesh, p)
                   for n, p in layouts.items()}
        return tensors, gpuckpt.Checkpoint(**{n: gtorch.trackable(t, n) for n, t in tensors.items()})

    _, ckpt = checkpoint(saved, True)
    DistributedCheckpoint(ckpt, timeout=60).write(os.path.join(directory, "placed"))
    tensors, ckpt = checkpoint(wanted, False)
    DistributedCheckpoint(ckpt, timeout=60).restore(os.path.join(directory, "placed"))
    for name, tensor in tensors.items():
        if not torch.equal(tensor.full_tensor(), _truth(name)) or list(tensor.placements) != wanted[name]:
            raise SystemExit(f"{name}: restored {tensor.full_tensor()} with {tensor.placements}")
    say("ok resharded " + " ".join(f"{n}:{saved[n]}->{wanted[n]}" for n in saved))
    try:  # a single-process Checkpoint would save one rank's shard under the whole tensor's key
        ckpt.write(os.path.join(directory, f"single-{dist.get_rank()}"))
        raise SystemExit("a single-process write of a sharded DTensor returned")
    except InvalidArgumentError as exc:
        say(f"ok single-process refused: {exc}")
    partial = DTensor.from_local(_truth("a"), mesh, [Partial(), Replicate()])  # a sum not taken yet
    try:
        DistributedCheckpoint(gpuckpt.Checkpoint(p=gtorch.trackable(partial, "p")), timeout=60).write(
            os.path.join(directory, "partial"))
        raise SystemExit("a Partial DTensor was saved")
    except InvalidArgumentError as exc:
        say(f"ok partial refused: {exc}")


# -- failures ------------------------------------------------------------------------------------

class Faulty(PosixIO):
    """System calls of one rank that fail, stall or kill the process in the middle of its shard."""

    def __init__(self, fault: str):
        self.fault = fault

    def pwrite(self, fd, data, offset):
        if self.fault == "stall":
            time.sleep(8)
        if self.fault == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        return super().pwrite(fd, data, offset)


def _params(module) -> list[torch.Tensor]:
    return [p.to_local().detach().clone() for p in module.parameters()]


def _local_state(module, opt) -> dict[str, torch.Tensor]:
    """This rank's part of every parameter and optimizer state, by checkpoint key (copies)."""
    out = {}
    for name, param in module.named_parameters():
        path = "model/" + name.replace(".", "/")
        out[f"{path}/.ATTRIBUTES/VARIABLE_VALUE"] = param
        for slot, value in opt.state.get(param, {}).items():
            out[f"{path}/.OPTIMIZER_SLOT/optimizer/{slot}/.ATTRIBUTES/VARIABLE_VALUE"] = value
    return {k: (v.to_local() if hasattr(v, "to_local") else v).detach().clone() for k, v in out.items()}


def _partial(exc: PartialDistributedRestoreError, before: dict, after: dict) -> str:
    """Check what a partial restore says it left: failed keys zero-filled, restored ones changed, others as before."""
    for key, value in after.items():
        if not value.numel():
            continue
        if key in exc.failed and value.count_nonzero():
            return f"BAD partial: {key} failed but is not zero-filled"
        if key in exc.restored and torch.equal(value, before[key]):
            return f"BAD partial: {key} restored but unchanged"
        if key not in exc.failed and key not in exc.restored and not torch.equal(value, before[key]):
            return f"BAD partial: {key} neither restored nor failed but changed"
    return f"ok partial: {len(exc.restored)} restored, {len(exc.failed)} failed and zero-filled"


def fail(directory: str, fault: str, culprit: str, source: str = "") -> None:
    """A good save (``fault/ckpt-1``), then a save or restore that ``fault`` breaks on rank ``culprit``:
    ``kill-save``, ``stall-save``, ``kill-restore`` (while verifying), ``kill-place`` (once verified, while
    reading into the variables), or ``corrupt`` (a restore of ``source``); a restore fault ending ``-atomic``
    restores with ``atomic_restore``."""
    culprit_rank = int(culprit)
    module, opt = sharded(f"{dist.get_world_size()}")
    M.train_step(module, opt, 0)
    dist_ckpt = DistributedCheckpoint(gpuckpt.Checkpoint(model=module, optimizer=opt), timeout=3)
    prefix = os.path.join(directory, fault, "ckpt")
    dist_ckpt.save(prefix)
    dist.barrier()  # every rank has its verdict (a store hosted by a dying rank 0 would take it along)
    mine = dist.get_rank() == culprit_rank
    started = time.monotonic()
    before = after = {}
    try:
        if fault in ("kill-save", "stall-save"):
            dist_ckpt.save(prefix, io=Faulty(fault.split("-")[0]) if mine else None)
        else:
            if fault.startswith(("kill-restore", "kill-place")) and mine:
                from gpuckpt.distributed import restore as restore_stage

                def die(*args, **kwargs):
                    os.kill(os.getpid(), signal.SIGKILL)

                if fault == "kill-place":
                    restore_stage._place = die  # dies once every rank has verified, reading into the variables
                else:
                    restore_stage.read_host = restore_stage.verify_host = die  # dies verifying
            M.train_step(module, opt, 1)
            before = _local_state(module, opt)
            source = prefix + "-1" if not fault.startswith("corrupt") else os.path.join(directory, source)
            options = gpuckpt.CheckpointOptions(atomic_restore=fault.endswith("-atomic"))
            try:
                dist_ckpt.restore(source, options)
            finally:
                after = _local_state(module, opt)
                unchanged = before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
                say(f"ok params {'unchanged' if unchanged else 'CHANGED'}"
                    f", optimizer steps {sorted({float(s['step']) for s in opt.state.values()})}")
    except DistributedError as exc:
        say(f"ok DistributedError ranks={list(exc.ranks)} after {time.monotonic() - started:.1f}s, counter "
            f"{int(dist_ckpt.checkpoint.save_counter.numpy())}: {exc}")
        if isinstance(exc, PartialDistributedRestoreError):
            say(_partial(exc, before, after))
        if fault.startswith("kill"):
            os._exit(0)  # a peer is dead: skip the process group's teardown, which could wait on it
        return
    say("UNEXPECTED: the failed operation returned")
    os._exit(1)


def main() -> int:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    directory, *scenarios = sys.argv[1:]
    modes = {"train-save": train_save, "restore": restore, "placements": placements, "fail": fail,
             "single": single, "deferred": deferred}
    for scenario in scenarios:
        mode, *args = scenario.split(":")
        modes[mode](directory, *args)
        say(f"done {scenario}")
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
