"""``import gpuckpt`` works without the heavy extras, and each absence names the extra to install."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest


def run(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_import_pulls_in_nothing_heavy() -> None:
    out = run(
        """
        import sys, gpuckpt
        print(sorted(m for m in ("numba", "cupy", "tensorflow", "torch", "jax", "mpi4py") if m in sys.modules))
        """
    )
    assert out.strip() == "[]"


def test_cpu_checkpoints_work_with_numba_and_cupy_blocked(tmp_path) -> None:
    out = run(
        f"""
        import sys
        sys.modules["numba"] = None
        sys.modules["cupy"] = None
        import numpy as np, gpuckpt
        ck = gpuckpt.Checkpoint(v=gpuckpt.Variable(np.arange(3.0)))
        path = ck.save({str(tmp_path / "ck")!r})
        ck.restore(path).assert_consumed()
        import gpuckpt.kernels
        try:
            gpuckpt.kernels.crc_segments
        except ImportError as exc:
            print("kernels:", exc)
        from gpuckpt.engine.gpu import GpuEngine
        try:
            GpuEngine()
        except ImportError as exc:
            print("engine:", exc)
        """
    )
    assert "kernels:" in out and "engine:" in out
    assert out.count("pip install 'gpuckpt[gpu]'") == 2


def test_adapters_name_their_extra_when_the_framework_is_missing() -> None:
    out = run(
        """
        import sys
        sys.modules["torch"] = None
        sys.modules["jax"] = None
        import gpuckpt
        for adapter in ("gpuckpt.torch", "gpuckpt.jax"):
            try:
                __import__(adapter)
            except ImportError as exc:
                print(adapter, "->", exc)
        """
    )
    assert "gpuckpt.torch -> torch is needed for this and is not installed: pip install 'gpuckpt[torch]'" in out
    assert "gpuckpt.jax -> jax is needed for this and is not installed: pip install 'gpuckpt[jax]'" in out


def test_torch_objects_are_adapted_only_once_torch_is_imported() -> None:
    pytest.importorskip("torch", reason="needs torch: pip install 'gpuckpt[torch]'")
    out = run(
        """
        import sys, numpy as np, gpuckpt
        gpuckpt.Checkpoint(v=gpuckpt.Variable(np.zeros(2)))._graph()
        print("before:", "gpuckpt.torch" in sys.modules)
        import torch
        ck = gpuckpt.Checkpoint(model=torch.nn.Linear(2, 1))
        print("after:", "gpuckpt.torch" in sys.modules, [k for k, _ in ck._graph().tensors_by_key().items()])
        """
    )
    assert "before: False" in out
    assert "after: True ['model/weight/.ATTRIBUTES/VARIABLE_VALUE', 'model/bias/.ATTRIBUTES/VARIABLE_VALUE']" in out
