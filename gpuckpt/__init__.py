"""gpuckpt: fast, safe, TensorFlow-compatible checkpoints of training state, on GPU or CPU."""

from . import rng
from .checkpoint import Checkpoint
from .errors import CheckpointError, DataLossError, InvalidArgumentError, NotFoundError, PartialRestoreError
from .manager import CheckpointManager
from .options import CheckpointOptions, MaxShardSizePolicy, ShardByTaskPolicy
from .pystate import PythonState
from .reader import CheckpointReader, latest_checkpoint, list_variables, load_checkpoint
from .restorer import UnrestoredValuesWarning
from .status import CheckpointLoadStatus, InitializationOnlyStatus, NameBasedSaverStatus
from .strict import UnmatchedStateError
from .trackable import Module, Trackable, Variable

__version__ = "0.1.0"

__all__ = [
    "Checkpoint",
    "CheckpointLoadStatus",
    "CheckpointManager",
    "CheckpointOptions",
    "InitializationOnlyStatus",
    "MaxShardSizePolicy",
    "NameBasedSaverStatus",
    "Module",
    "ShardByTaskPolicy",
    "Trackable",
    "Variable",
    "CheckpointError",
    "CheckpointReader",
    "latest_checkpoint",
    "list_variables",
    "load_checkpoint",
    "DataLossError",
    "InvalidArgumentError",
    "NotFoundError",
    "PartialRestoreError",
    "PythonState",
    "UnmatchedStateError",
    "UnrestoredValuesWarning",
    "rng",
]
