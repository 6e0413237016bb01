"""Checkpoints of multi-process training over torch.distributed or MPI (each imported on first use).

Each rank writes its own data shard ``P.data-0000r-of-0000N`` through the single-process
engine; rank 0 merges the index entries into one ``P.index`` (partitioned tensors as TensorFlow
stores them) and commits it after every rank's shard is durable. A checkpoint restores on any
number of ranks, each reading only the stored blocks that overlap its own part.

    from gpuckpt.distributed import DistributedCheckpoint, Sharded, set_layout
    set_layout(model.embedding, Sharded.split((vocab, dim), rank, size))
    dist = DistributedCheckpoint(gpuckpt.Checkpoint(model=model))   # torch.distributed, else MPI.COMM_WORLD
    dist.save("/ckpts/run")        # collective; /ckpts/run-1
    dist.restore("/ckpts")         # collective; the latest checkpoint, any number of ranks

See ``docs/distributed.md``.
"""

from .checkpoint import DistributedCheckpoint, communicator
from .comm import Communicator, SingleProcess
from .errors import DistributedError, PartialDistributedRestoreError
from .layout import Box, Replicated, Sharded, layout_of, set_layout
from .manager import DistributedCheckpointManager
from .restore import RestoreResult

__all__ = [
    "Box",
    "Communicator",
    "SingleProcess",
    "communicator",
    "DistributedCheckpoint",
    "DistributedCheckpointManager",
    "DistributedError",
    "PartialDistributedRestoreError",
    "Replicated",
    "RestoreResult",
    "Sharded",
    "layout_of",
    "set_layout",
]
