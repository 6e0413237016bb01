"""The one place ``gpuckpt.convert`` imports torch: only for torch files, with an install hint."""

from __future__ import annotations

from types import ModuleType

from .._deps import import_optional


def torch() -> ModuleType:
    """The ``torch`` module (and its ``torch._utils``, which torch files' pickles name)."""
    module = import_optional("torch", extra="torch")
    import_optional("torch._utils", extra="torch")
    return module
