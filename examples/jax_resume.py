"""Train a small flax/optax model, SIGKILL it at random steps, resume, and check every loss is bit-identical.

The training state is one flax ``TrainState`` holding the parameters, optax's AdamW state (with a
warm-up cosine schedule), the step and a typed PRNG key (``jax.random.key``) that dropout and the
data order are drawn from. It goes into a ``gpuckpt.Checkpoint`` as ``gpuckpt.jax.PyTree(state)``;
a ``CheckpointManager`` saves every ``--save-every`` steps, synchronously or asynchronously, and a
restart restores it into a fresh state (its ``step`` a Python int, as ``TrainState.create`` makes it).

    python examples/jax_resume.py --trials 20

As in ``gpt2_resume.py``, each trial forks a child that trains and SIGKILLs itself at a random step
and point, then a child that resumes; every logged loss must equal the uninterrupted run's bit for
bit (the harness is ``resume_harness.py``). The parent imports jax but runs nothing on it before forking.
"""

from __future__ import annotations

import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import optax
import resume_harness
from flax import linen as nn
from flax.training import train_state
from resume_harness import Kill

import gpuckpt
import gpuckpt.jax

PHASES = ("before_step", "after_step", "after_save")


@dataclass(frozen=True)
class Config:
    steps: int = 20
    save_every: int = 5
    batch_size: int = 8
    features: int = 6


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


def run_trials(trials: int, config: Config = Config(), seed: int = 0,
               root: Path | None = None) -> list[resume_harness.Trial]:
    """The uninterrupted reference, then ``trials`` kill-and-resume trials; raises on any failure."""
    root = resume_harness.make_root(root, "jax-resume-")
    # compiled once, by the first child, then read from disk by the others
    jax.config.update("jax_compilation_cache_dir", str(root / "xla-cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return resume_harness.run_trials(train, config, trials, seed, root, phases=PHASES, phase_first=True)


def main(argv: list[str] | None = None) -> int:
    args = resume_harness.trial_parser(__doc__.splitlines()[0]).parse_args(argv)
    return resume_harness.report(run_trials(args.trials, Config(), args.seed, args.dir))


if __name__ == "__main__":
    sys.exit(main())
