"""Optional dependencies, imported on first use with an install hint when they are missing."""

from __future__ import annotations

import importlib
from types import ModuleType


def import_optional(name: str, *, extra: str) -> ModuleType:
    """Import ``name`` or raise ImportError saying which gpuckpt extra provides it."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise ImportError(
            f"{name} is needed for this and is not installed: pip install 'gpuckpt[{extra}]'"
        ) from exc
