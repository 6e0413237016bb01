"""The tiny model, data and training step every torch.distributed test shares (plain or FSDP2).

Every rank trains on the same batches, and FSDP2 reduces gradients in float64, so the mean of
the ranks' identical float32 gradients is exact: an FSDP2 run on any mesh follows the plain
single-process run bit for bit, and losses can be compared exactly across world sizes.
"""

from __future__ import annotations

import torch

IN, HIDDEN, OUT = 6, 10, 5  # 10 rows over 4 ranks: 3, 3, 3, 1; 5 rows: 2, 2, 1, 0 (an empty shard)
STEPS_BEFORE, STEPS_AFTER = 3, 3


def build(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(IN, HIDDEN), torch.nn.Tanh(), torch.nn.Linear(HIDDEN, OUT))
    model.register_buffer("scale", torch.full((OUT,), 0.5 + seed))
    return model


def optimizer(model: torch.nn.Module) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=0.05, weight_decay=0.1)


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1000 + step)
    return torch.randn(8, IN, generator=generator), torch.randn(8, OUT, generator=generator)


def train_step(model: torch.nn.Module, opt: torch.optim.Optimizer, step: int) -> float:
    x, y = batch(step)
    loss = ((model(x) * model.scale - y) ** 2).mean()
    loss.backward()
    opt.step()
    opt.zero_grad()
    return float(loss.detach())


def shard(model: torch.nn.Module, mesh) -> torch.nn.Module:
    """FSDP2 over ``mesh`` (1-D: sharded; 2-D: HSDP, replicated over dim 0, sharded over dim 1)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(reduce_dtype=torch.float64)
    for layer in model:
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer, mesh=mesh, mp_policy=policy)
    return fully_shard(model, mesh=mesh, mp_policy=policy)


def reference_losses() -> list[float]:
    """The uninterrupted plain run's losses, before and after the checkpoint step."""
    torch.set_num_threads(1)
    model = build()
    opt = optimizer(model)
    return [train_step(model, opt, s) for s in range(STEPS_BEFORE + STEPS_AFTER)]
