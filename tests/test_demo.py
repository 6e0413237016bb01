"""The README's main job: ``gpuckpt demo`` trains, is killed with a save in flight, resumes, and matches."""

from __future__ import annotations

import re
import subprocess
import sys


def test_demo_resumes_from_the_latest_committed_checkpoint(tmp_path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gpuckpt.cli", "demo", "--steps", "60", "--save-every", "10", "--kill-at", "35",
         "--rounds", "2", "--dir", str(tmp_path)],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "killed at step 35" in result.stdout
    # the save of step 30 may still have been in flight at the kill: then step 20 is the latest
    assert re.search(r"restored step (20|30) and trained to step 60: losses identical", result.stdout)
    assert "per-save blocking time" in result.stdout
    # the overhead is measured over the same steps on both sides, with its spread over the rounds
    assert re.search(r"checkpointing overhead: [+-]\d+\.\d% \(median of 2 rounds of 20 steps; "
                     r"min [+-]\d+\.\d%, max [+-]\d+\.\d%\)", result.stdout), result.stdout
    assert not (tmp_path / "timing").exists()  # the timing's own checkpoints are cleaned up
