"""Train a tiny GPT-2, SIGKILL it at random steps, resume, and check every loss is bit-identical.

The whole training state goes into one ``gpuckpt.Checkpoint`` with no state code of its own:
the transformers model, AdamW (two parameter groups), a cosine warm-up schedule, a GradScaler
(bf16 autocast on the CPU), a torchdata ``StatefulDataLoader`` (shuffled) and the RNG state
(dropout draws from torch's generator). A ``CheckpointManager`` saves every ``--save-every``
steps, synchronously or asynchronously. The step is the scheduler's ``last_epoch``.

    python examples/gpt2_resume.py --trials 20          # forks trials; prints one line per trial

Each trial forks a child that trains and SIGKILLs itself at a random step and point (before the
forward pass, after the backward pass, or just after a save was started, an asynchronous one
still in flight), then a child that resumes from the manager's latest checkpoint and trains to
the end. Every loss either child logged must equal, bit for bit, the uninterrupted run's loss
at that step. The parent only imports torch; all compute runs in the forked children. The forking,
killing and comparing is ``resume_harness.py``'s, shared with ``jax_resume.py``.

The run stays within one epoch on purpose: torchdata 0.11's ``StatefulDataLoader`` with a
``generator`` resumes exactly within an epoch, but shuffles the epochs after a resume
differently than an uninterrupted run would, with or without gpuckpt (its
``load_state_dict`` puts the sampler's generator back to the epoch's start without the draw
the iterator made for its base seed). For several epochs, make a loader per epoch seeded with
the epoch number (kept in a ``gpuckpt.PythonState``).
"""

from __future__ import annotations

import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import resume_harness
import torch
from resume_harness import Kill
from torchdata.stateful_dataloader import StatefulDataLoader
from transformers import GPT2Config, GPT2LMHeadModel, get_cosine_schedule_with_warmup
from transformers.utils import logging as transformers_logging

import gpuckpt

PHASES = ("before_forward", "after_backward", "after_save")


@dataclass(frozen=True)
class Config:
    steps: int = 16
    save_every: int = 4
    batch_size: int = 4
    sequences: int = 64  # one epoch of 16 batches (see the module docstring on epochs)
    length: int = 16
    vocab: int = 64


class Tokens(torch.utils.data.Dataset):
    """Fixed random token sequences (no downloads)."""

    def __init__(self, config: Config):
        generator = torch.Generator().manual_seed(1234)
        self.data = torch.randint(0, config.vocab, (config.sequences, config.length), generator=generator)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.data[index]


def build(config: Config):
    """Fresh objects, the same way each time (a restore then overwrites their state)."""
    torch.manual_seed(0)
    model_config = GPT2Config(vocab_size=config.vocab, n_positions=config.length, n_embd=32, n_layer=2, n_head=2,
                              bos_token_id=0, eos_token_id=0, loss_type="ForCausalLMLoss")
    model = GPT2LMHeadModel(model_config)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                                  lr=3e-3)
    scheduler = get_cosine_schedule_with_warmup(optimizer, num_warmup_steps=4, num_training_steps=config.steps)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    loader = StatefulDataLoader(Tokens(config), batch_size=config.batch_size, shuffle=True,
                                generator=torch.Generator().manual_seed(7))
    return model, optimizer, scheduler, scaler, loader


def train(directory: Path, config: Config, *, asynchronous: bool, kill: Kill | None = None) -> None:
    """Train to ``config.steps`` (resuming from ``directory``), logging ``step loss`` lines to losses.txt."""
    model, optimizer, scheduler, scaler, loader = build(config)
    checkpoint = gpuckpt.Checkpoint(model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
                                    loader=loader, rng=gpuckpt.rng.RNGState())
    manager = gpuckpt.CheckpointManager(checkpoint, directory / "ckpts", max_to_keep=2)
    manager.restore_or_initialize()
    options = gpuckpt.CheckpointOptions(enable_async=asynchronous)
    log = open(directory / "losses.txt", "a", buffering=1)  # noqa: SIM115 - a SIGKILL ends it, not a with
    log.write(f"resume {scheduler.last_epoch}\n")
    batches = iter(loader)
    while scheduler.last_epoch < config.steps:
        step = scheduler.last_epoch
        if kill and kill.step == step and kill.phase == "before_forward":
            os.kill(os.getpid(), signal.SIGKILL)
        try:
            tokens = next(batches)
        except StopIteration:
            batches = iter(loader)
            tokens = next(batches)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=tokens, labels=tokens).loss
        scaler.scale(loss).backward()
        if kill and kill.step == step and kill.phase == "after_backward":
            os.kill(os.getpid(), signal.SIGKILL)
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        log.write(f"{step} {loss.item().hex()}\n")
        if scheduler.last_epoch % config.save_every == 0:
            manager.save(checkpoint_number=scheduler.last_epoch, options=options)
            if kill and kill.step == step and kill.phase == "after_save":
                os.kill(os.getpid(), signal.SIGKILL)  # an asynchronous save is still in flight
    checkpoint.sync()
    log.close()


def child_setup() -> None:
    """In each forked child: one compute thread, and no transformers warnings."""
    torch.set_num_threads(1)
    transformers_logging.set_verbosity_error()


def run_trials(trials: int, config: Config = Config(), seed: int = 0,
               root: Path | None = None) -> list[resume_harness.Trial]:
    """The uninterrupted reference, then ``trials`` kill-and-resume trials; raises on any divergence."""
    return resume_harness.run_trials(train, config, trials, seed, resume_harness.make_root(root, "gpt2-resume-"),
                                     phases=PHASES, setup=child_setup)


def main(argv: list[str] | None = None) -> int:
    parser = resume_harness.trial_parser(__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=Config.steps)
    parser.add_argument("--save-every", type=int, default=Config.save_every)
    args = parser.parse_args(argv)
    config = Config(steps=args.steps, save_every=args.save_every)
    return resume_harness.report(run_trials(args.trials, config, args.seed, args.dir))


if __name__ == "__main__":
    sys.exit(main())
