"""CUDA kernels of gpuckpt, importable as ``gpuckpt.kernels``: CRC-32C of many segments in one launch
(save and restore); the gather and scatter kernels live in ``gpuckpt.kernels.gather``.

Importing this package is cheap and does not import numba; the first use of a function
below imports the submodule that defines it (and numba with it). Without numba and
numba-cuda that use raises ImportError naming the ``gpuckpt[gpu]`` extra.

    crc_segments(buf, seg_offsets, seg_sizes, stream=None) -> uint32[n]    raw CRC-32C of each segment
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "crc_segments": "pack",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from ._deps import require_numba

    require_numba()
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
