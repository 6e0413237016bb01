"""bench/gather_options.py's plumbing under the simulator: the numba option runs and checks its bytes,
the options that need a real device are skipped with a reason (figures there are not measurements)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("gpuckpt.kernels.gather")
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
gather_options = pytest.importorskip("gather_options")


def test_every_option_is_measured_or_skipped_with_its_reason():
    if not gather_options.SIM:
        pytest.skip("a real GPU: bench/gpu_check runs the full comparison")
    result = gather_options.compare({"odd": [1, 7, 300, 9], "empty_and_one": [0, 64]}, repeat=1)
    for state in result.values():
        assert set(state) >= set(gather_options.OPTIONS)
        for option in ("numba_pointer_table_kernel", "numba_fused_gather_crc"):  # bytes (and CRCs) checked
            numba = state[option]
            assert numba["exact"] and numba["launches"] == 1 and numba["simulated"]
        for option in ("cupy_raw_kernel", "cuda_memcpy_batch_async"):
            assert state[option]["skipped"]


def test_gpu_check_fused_step_checks_bytes_and_crcs():
    """bench/gpu_check's ``fused`` step under the simulator: plumbing only (its GB/s mean nothing here)."""
    if not gather_options.SIM:
        pytest.skip("a real GPU: bench/gpu_check runs the step at full size")
    import gpu_check

    found = gpu_check.step_fused(Path("unused"))
    assert found["status"] == "ok" and found["byte_mismatches"] == 0 and found["crc_mismatches"] == 0
    assert found["pieces"] == 9 and found["rows"] >= found["pieces"]
