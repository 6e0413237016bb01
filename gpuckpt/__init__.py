"""gpuckpt: fast, safe, TensorFlow-compatible checkpoints of training state, on GPU or CPU."""

from .errors import CheckpointError, DataLossError, InvalidArgumentError, NotFoundError

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "DataLossError",
    "InvalidArgumentError",
    "NotFoundError",
]
