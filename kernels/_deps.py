"""Imports numba and numba-cuda once, turning their absence into an error that names the extra."""

from __future__ import annotations

INSTALL_HINT = "pip install 'gpuckpt[gpu]'"


def require_numba() -> None:
    """Raise ImportError naming the gpu extra unless numba and numba-cuda are importable."""
    try:
        import numba  # noqa: F401
        import numba_cuda  # noqa: F401
        from numba import cuda  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            f"gpuckpt.kernels needs numba and numba-cuda ({exc}); install them with: {INSTALL_HINT}"
        ) from exc

