"""Converting checkpoints to and from the formats other tools read: safetensors, torch, npz.

``export(src, dst, to)`` writes a checkpoint's tensors to a safetensors, torch or npz file;
``import_file(src, dst, fmt)`` writes a safetensors or torch file as a checkpoint. Both stream
tensor by tensor (chunks from a checkpoint, memory maps of a foreign file). Names follow
:mod:`gpuckpt.convert.names`. Used by ``gpuckpt convert``; importing this package imports
neither torch nor safetensors (torch only when a torch file is written or read).
"""

from __future__ import annotations

import os
from collections.abc import Callable

from ..reader import CheckpointReader
from .readers import load_safetensors, load_torch, write_checkpoint
from .source import exported
from .writers import write_npz, write_safetensors, write_torch

EXPORTERS = {"safetensors": write_safetensors, "torch": write_torch, "npz": write_npz}
IMPORTERS = {"safetensors": load_safetensors, "torch": load_torch}


def export(src: str | os.PathLike, dst: str | os.PathLike, to: str, *, match: Callable[[str], bool] = lambda k: True,
           force: bool = False) -> int:
    """Write checkpoint ``src``'s tensors (those whose key ``match``-es) to file ``dst``; return how many."""
    with CheckpointReader(os.fspath(src)) as reader:
        ex = exported(reader, match)
        EXPORTERS[to](reader, ex, os.fspath(dst), force=force)
    return len(ex.items) + len(ex.strings)


def import_file(src: str | os.PathLike, dst: str | os.PathLike, fmt: str, *, force: bool = False) -> int:
    """Write file ``src`` (``fmt``: safetensors or torch) as a checkpoint at prefix ``dst``; return tensors written."""
    loaded = IMPORTERS[fmt](os.fspath(src))
    write_checkpoint(loaded, os.fspath(dst), force=force)
    return len(loaded.values)
