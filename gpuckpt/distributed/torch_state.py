"""PyTorch optimizer state that a distributed restore must create before it can fill it.

A fresh optimizer has no per-parameter state until its first ``step()``; a single-process
restore creates it when the checkpoint's slot values arrive (deferred restoration). A
distributed restore reads a live optimizer's state in place, into memory that must exist
first. So before it reads, every slot the checkpoint holds for a live parameter of a live
torch optimizer is created as zeros of the stored dtype, sharded like its parameter when
that is a DTensor of the stored (global) shape (``TorchOptimizer._new_state``). If the restore
then fails, they are removed again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import CheckpointError
from ..graph import object_path
from ..reader import CheckpointReader
from .torch_dtensor import local_shards

_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"


@dataclass
class Created:
    """The optimizer states made for a restore: ``(state dict of a parameter, slot name)``."""

    entries: list[tuple[dict, Any, str]] = field(default_factory=list)

    def undo(self) -> None:
        """Remove what was created (the restore failed: the optimizers are as they were)."""
        for states, param, name in reversed(self.entries):
            state = states.get(param)
            if state is not None:
                state.pop(name, None)
                if not state:
                    del states[param]
        self.entries.clear()


def _unescape(name: str) -> str | None:
    """The slot name of an escaped key component (None for what is not one component)."""
    if "/" in name:
        return None
    out, i = [], 0
    while i < len(name):
        if name.startswith("..", i):
            out.append(".")
            i += 2
        elif name.startswith(".S", i):
            out.append("/")
            i += 2
        else:
            out.append(name[i])
            i += 1
    return "".join(out)


def create_missing_slots(checkpoint: Any, prefix: str) -> Created:
    """Create the live torch optimizers' missing slots that ``prefix`` stores; see the module docstring.

    A checkpoint that cannot be opened creates nothing: the restore itself then fails on every rank.
    """
    from ..torch import TorchOptimizer, trackable

    created = Created()
    try:
        reader = CheckpointReader(prefix)
    except CheckpointError:
        return created
    try:
        with local_shards():
            live = checkpoint._graph()
        keys = [k for k in reader.keys() if k.endswith(_SUFFIX) and "/.OPTIMIZER_SLOT/" in k]
        node_of = {id(obj): i for i, obj in enumerate(live.objects)}
        for i, obj in enumerate(live.objects):
            if isinstance(obj, TorchOptimizer):
                _create_for(obj, object_path(live.paths[i]), live, node_of, keys, reader, created, trackable)
    except BaseException:
        created.undo()
        raise
    finally:
        reader.close()
    return created


def _create_for(optimizer, optimizer_path, live, node_of, keys, reader, created, trackable) -> None:
    states = optimizer.optimizer.state
    for param in optimizer._params():
        node = node_of.get(id(trackable(param)))
        if node is None:
            continue
        start = f"{object_path(live.paths[node])}/.OPTIMIZER_SLOT/{optimizer_path}/"
        for key in keys:
            name = _unescape(key[len(start):-len(_SUFFIX)]) if key.startswith(start) else None
            if name is None or name in states.get(param, {}):
                continue
            entry = reader.entry(key)
            states[param][name] = optimizer._new_state(param, name, entry.dtype, entry.shape)
            created.entries.append((states, param, name))
