"""Kernel tests run in numba's CUDA simulator unless NUMBA_ENABLE_CUDASIM is already set.

The variable must be set before numba is first imported, hence at the top of this file.
Run with NUMBA_ENABLE_CUDASIM=0 on a machine with a GPU to run the same tests on it.
Test modules that need numba skip themselves with pytest.importorskip("numba.cuda"), so
the packaging tests still run where numba is absent.
"""

import os

os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20261124)


@pytest.fixture
def launch_shape(monkeypatch):
    """Set the kernels' module-level sizes for one test; small values keep simulated launches short."""

    def set_shape(chunk: int = 64, threads: int = 4, cell: int = 8, max_blocks: int = 4):
        from gpuckpt.kernels import pack

        monkeypatch.setattr(pack, "CHUNK_BYTES", chunk)
        monkeypatch.setattr(pack, "THREADS_PER_BLOCK", threads)
        monkeypatch.setattr(pack, "CELL_BYTES", cell)
        monkeypatch.setattr(pack, "MAX_BLOCKS", max_blocks)

    return set_shape
