"""A sample of the kill test (bench/kill_test.py runs hundreds of trials): SIGKILL a saving
process at random moments and at storage calls; the latest checkpoint must survive whole."""

from __future__ import annotations

import pytest

from gpuckpt.testing import crashes


@pytest.mark.slow
def test_kills_at_random_moments_and_at_storage_calls(tmp_path) -> None:
    calls = crashes.calls_per_save()
    report = crashes.run(str(tmp_path), random_trials=6, call_modes=("sync", "async"), seed=1, call_stride=8)
    print(report.line())
    assert report.failures == []
    assert sum(report.trials.values()) == 6 + 2 * len(range(0, calls, 8))
    assert report.debris["temp"] > 0, "no kill landed inside a save, so nothing was tested"
