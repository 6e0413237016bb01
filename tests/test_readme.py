"""The README's Python examples run as written (with their directory moved into a temp dir)."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_blocks_run(tmp_path) -> None:
    code = "\n".join(re.findall(r"```python\n(.*?)```", README.read_text(), re.S))
    assert "gpuckpt.Checkpoint" in code
    exec(compile(code.replace("/tmp/run", str(tmp_path / "run")), str(README), "exec"), {})
    assert (tmp_path / "run" / "checkpoint").exists()
    assert (tmp_path / "run" / "ckpt-2.index").exists()  # the asynchronous save, committed by sync()
