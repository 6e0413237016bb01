"""gpuckpt: fast, safe, TensorFlow-compatible checkpoints of training state, on GPU or CPU."""

from .errors import CheckpointError, DataLossError, InvalidArgumentError, NotFoundError
from .reader import CheckpointReader, latest_checkpoint, list_variables, load_checkpoint

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "CheckpointReader",
    "latest_checkpoint",
    "list_variables",
    "load_checkpoint",
    "DataLossError",
    "InvalidArgumentError",
    "NotFoundError",
]
