"""CUDA kernels of gpuckpt, importable as ``gpuckpt.kernels``.

Importing this package does not import Numba; each kernel module loads on first use, and a
missing ``numba``/``numba-cuda`` gives an ImportError naming the ``gpu`` extra.
"""

from __future__ import annotations

import importlib

_EXPORTS = {"crc_segments": "segments"}


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'gpuckpt.kernels' has no attribute {name!r}")
    try:
        module = importlib.import_module(f".{_EXPORTS[name]}", __name__)
    except ImportError as exc:
        raise ImportError(f"gpuckpt's CUDA kernels need numba-cuda: pip install 'gpuckpt[gpu]' ({exc})") from exc
    return getattr(module, name)
