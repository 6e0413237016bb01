"""Train a small flax/optax model, SIGKILL it at random steps, resume, and check every loss is bit-identical.

The training state is one flax ``TrainState`` holding the parameters, optax's AdamW state (with a
warm-up cosine schedule), the step and a typed PRNG key (``jax.random.key``) that dropout and the
data order are drawn from. It goes into a ``gpuckpt.Checkpoint`` as ``gpuckpt.jax.PyTree(state)``;
a ``CheckpointManager`` saves every ``--save-every`` steps, synchronously or asynchronously, and a
restart restores it into a fresh state (its ``step`` a Python int, as ``TrainState.create`` makes it).

    python examples/jax_resume.py --trials 20

As in ``gpt2_resume.py``, each trial forks a child that trains and SIGKILLs itself at a random step
and point, then a child that resumes; every logged loss must equal the uninterrupted run's bit for
bit. The parent imports jax but runs nothing on it before forking.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import optax
from flax import linen as nn
from flax.training import train_state

import gpuckpt
import gpuckpt.jax

PHASES = ("before_step", "after_step", "after_save")


@dataclass(frozen=True)
class Config:
    steps: int = 20
    save_every: int = 5
    batch_size: int = 8
    features: int = 6


@dataclass(frozen=True)
class Kill:
    step: int
    phase: str


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        x = nn.relu(nn.Dense(16)(x))
        x = nn.Dropout(0.2, deterministic=not train)(x)
        return nn.Dense(1)(x)


class State(train_state.TrainState):
    key: jax.Array


def fresh_state(config: Config) -> State:
    model = MLP()
    schedule = optax.warmup_cosine_decay_schedule(0.0, 1e-2, warmup_steps=5, decay_steps=config.steps)
    tx = optax.adamw(schedule)

    @jax.jit  # one compiled program (cached on disk across the trials) instead of many small ones
    def arrays() -> tuple:
        params = model.init(jax.random.key(0), jnp.zeros((1, config.features)), train=False)["params"]
        return params, tx.init(params), jax.random.key(1)

    params, opt_state, key = arrays()
    return State(step=0, apply_fn=model.apply, params=params, tx=tx, opt_state=opt_state, key=key)


@jax.jit
def train_step(state: State) -> tuple[State, jax.Array]:
    key, data_key, dropout_key = jax.random.split(state.key, 3)
    x = jax.random.normal(data_key, (8, 6))
    y = jnp.sum(x[:, :3], axis=1, keepdims=True)

    def loss_fn(params):
        prediction = state.apply_fn({"params": params}, x, train=True, rngs={"dropout": dropout_key})
        return jnp.mean((prediction - y) ** 2)

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    return state.apply_gradients(grads=grads, key=key), loss


def train(directory: Path, config: Config, *, asynchronous: bool, kill: Kill | None = None) -> None:
    """Train to ``config.steps`` (resuming from ``directory``), logging ``step loss`` lines to losses.txt."""
    holder = gpuckpt.jax.PyTree(fresh_state(config))
    checkpoint = gpuckpt.Checkpoint(state=holder)
    manager = gpuckpt.CheckpointManager(checkpoint, directory / "ckpts", max_to_keep=2)
    manager.restore_or_initialize()
    state = holder.tree
    options = gpuckpt.CheckpointOptions(enable_async=asynchronous)
    log = open(directory / "losses.txt", "a", buffering=1)  # noqa: SIM115 - a SIGKILL ends it, not a with
    log.write(f"resume {int(state.step)}\n")
    while int(state.step) < config.steps:
        step = int(state.step)
        if kill and kill == Kill(step, "before_step"):
            os.kill(os.getpid(), signal.SIGKILL)
        state, loss = train_step(state)
        log.write(f"{step} {float(loss).hex()}\n")
        if kill and kill == Kill(step, "after_step"):
            os.kill(os.getpid(), signal.SIGKILL)
        if int(state.step) % config.save_every == 0:
            holder.tree = state  # JAX arrays are immutable: hand the checkpoint the new state
            manager.save(checkpoint_number=int(state.step), options=options)
            if kill and kill == Kill(step, "after_save"):
                os.kill(os.getpid(), signal.SIGKILL)
    checkpoint.sync()
    log.close()


def in_child(function, *args, **kwargs) -> int:
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            function(*args, **kwargs)
        except BaseException:  # noqa: BLE001 - a forked child must end in os._exit whatever happens
            import traceback

            traceback.print_exc()
            code = 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return status


def read_log(path: Path) -> tuple[list[tuple[int, str]], list[int]]:
    losses, resumed = [], []
    for line in path.read_text().splitlines():
        first, second = line.split()
        if first == "resume":
            resumed.append(int(second))
        else:
            losses.append((int(first), second))
    return losses, resumed


@dataclass(frozen=True)
class Trial:
    kill: Kill
    asynchronous: bool
    resumed_from: int
    logged: int
    mismatches: int


def run_trials(trials: int, config: Config = Config(), seed: int = 0, root: Path | None = None) -> list[Trial]:
    """The uninterrupted reference, then ``trials`` kill-and-resume trials; raises on any failure."""
    root = Path(root or tempfile.mkdtemp(prefix="jax-resume-"))
    # compiled once, by the first child, then read from disk by the others
    jax.config.update("jax_compilation_cache_dir", str(root / "xla-cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    reference_dir = root / "reference"
    reference_dir.mkdir(parents=True)
    if in_child(train, reference_dir, config, asynchronous=False) != 0:
        raise RuntimeError("the uninterrupted run failed")
    reference = dict(read_log(reference_dir / "losses.txt")[0])
    chooser = random.Random(seed)
    results = []
    for index in range(trials):
        directory = root / f"trial-{index}"
        directory.mkdir()
        phase = chooser.choice(PHASES)
        step = chooser.randrange(1, config.steps)
        if phase == "after_save":
            step = chooser.randrange(config.save_every, config.steps, config.save_every) - 1
        kill, asynchronous = Kill(step, phase), index % 2 == 1
        killed = in_child(train, directory, config, asynchronous=asynchronous, kill=kill)
        if not (os.WIFSIGNALED(killed) and os.WTERMSIG(killed) == signal.SIGKILL):
            raise RuntimeError(f"trial {index}: the run was not killed as planned (wait status {killed})")
        if in_child(train, directory, config, asynchronous=asynchronous) != 0:
            raise RuntimeError(f"trial {index}: the resumed run failed")
        losses, starts = read_log(directory / "losses.txt")
        if {s for s, _ in losses} != set(range(config.steps)):
            raise RuntimeError(f"trial {index}: steps missing from the logs")
        results.append(Trial(kill, asynchronous, starts[-1], len(losses),
                             sum(1 for s, value in losses if reference[s] != value)))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args(argv)
    results = run_trials(args.trials, Config(), args.seed, args.dir)
    for index, trial in enumerate(results):
        mode = "async" if trial.asynchronous else "sync"
        print(f"trial {index:2d} {mode:5s} killed at step {trial.kill.step:2d} ({trial.kill.phase}), resumed from "
              f"step {trial.resumed_from:2d}: {trial.logged} losses logged, {trial.mismatches} differ")
    bad = sum(t.mismatches for t in results)
    print(f"{len(results)} trials, {sum(t.logged for t in results)} losses compared, {bad} differ from the "
          "uninterrupted run")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
