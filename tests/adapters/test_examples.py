"""examples/: the GPT-2 (PyTorch) and flax/optax (JAX) loops, SIGKILLed at random steps over 20 trials each
and resumed, must log losses bit-identical to their uninterrupted runs.

Each example runs as one process that imports its framework once and forks every run (the
uninterrupted reference, then a killed and a resumed child per trial), which keeps CI time small.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
TRIAL = re.compile(r"trial +\d+ (sync|async) +killed at step +(\d+) \((\w+)\), resumed from step +(\d+): "
                   r"(\d+) losses logged, (\d+) differ")


def run_example(name: str, tmp_path: Path) -> list[tuple[str, int, str, int, int, int]]:
    done = subprocess.run([sys.executable, str(EXAMPLES / name), "--trials", "20", "--seed", "3",
                           "--dir", str(tmp_path / "runs")], capture_output=True, text=True, timeout=900,
                          check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    trials = [(m[1], int(m[2]), m[3], int(m[4]), int(m[5]), int(m[6])) for m in TRIAL.finditer(done.stdout)]
    assert len(trials) == 20, done.stdout
    assert re.search(r"20 trials, \d+ losses compared, 0 differ from the uninterrupted run", done.stdout)
    return trials


def check_coverage(trials: list[tuple[str, int, str, int, int, int]]) -> None:
    assert all(differ == 0 for *_, differ in trials)
    assert {mode for mode, *_ in trials} == {"sync", "async"}
    assert any(mode == "async" and phase == "after_save" for mode, _, phase, *_ in trials)  # a save in flight
    assert any(resumed > 0 for _, _, _, resumed, _, _ in trials)  # resumed from a checkpoint, not from scratch


@pytest.mark.slow
def test_gpt2_resumes_bit_identically_after_sigkill(tmp_path: Path) -> None:
    for module in ("torch", "transformers", "torchdata"):
        pytest.importorskip(module)
    check_coverage(run_example("gpt2_resume.py", tmp_path))


@pytest.mark.slow
def test_flax_optax_resumes_bit_identically_after_sigkill(tmp_path: Path) -> None:
    for module in ("jax", "flax", "optax"):
        pytest.importorskip(module)
    check_coverage(run_example("jax_resume.py", tmp_path))
