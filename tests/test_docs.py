"""Every code block in README.md and docs/*.md runs as written.

The rule, per fenced block (see "Docs that run" in docs/api.md):

* ```` ```python ```` blocks of one file run in order, in one fresh Python process (later blocks
  see earlier blocks' names, as a reader following the page would), with ``/tmp/run``
  replaced by a temporary directory. A file whose code imports ``mpi4py`` runs under
  ``mpirun -n 2`` (its examples are collective).
* ```` ```bash ```` blocks run in that same order (a bash block runs after the python blocks above
  it), with ``set -e``, in the temporary directory, this environment's ``bin`` first on ``PATH``
  (so ``gpuckpt`` is this checkout's). The one exception is the install-and-run commands of
  README's "The two commands" (lines starting ``python3 -m venv``): creating environments is
  what CI itself does, so the test checks instead that ``.ci/run`` runs the test line verbatim
  and that ``tests/test_demo.py`` runs ``gpuckpt demo``.
* Blocks without a language are diagrams and tables, not code; any other language fails the test.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)
INSTALL = "python3 -m venv"
SHOWN = ("console", "text")  # blocks that show output or byte layouts; they are read, not run


def blocks(path: Path) -> list[tuple[str, str]]:
    """(language, code) of every fenced block of ``path``, in order."""
    return [(info.strip().split(" ")[0], code) for info, code in FENCE.findall(path.read_text())]


def script(path: Path, workdir: Path) -> str:
    """One Python program running the file's python and bash blocks in order."""
    lines = ["import subprocess, sys"]
    for number, (language, code) in enumerate(blocks(path)):
        code = code.replace("/tmp/run", str(workdir / "run"))
        if language == "python":
            lines.append(f"exec(compile({code!r}, {f'{path.name} block {number}'!r}, 'exec'))")
        elif language == "bash":
            commands = "\n".join(line for line in code.splitlines() if not line.startswith(INSTALL))
            lines.append(f"subprocess.run(['bash', '-ec', {commands!r}], check=True)")
        elif language and language not in SHOWN:
            raise AssertionError(f"{path.name} block {number}: unknown language {language!r}")
    return "\n".join(lines) + "\n"


def _mpirun() -> list[str] | None:
    beside = Path(sys.executable).with_name("mpirun")
    found = str(beside) if beside.exists() else shutil.which("mpirun")
    if found is None:
        return None
    return [found, "-n", "2", "--oversubscribe", "--allow-run-as-root"]


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_code_blocks_run_as_written(path: Path, tmp_path: Path) -> None:
    program = script(path, tmp_path)
    if "exec(" not in program and "subprocess.run(['bash'" not in program:
        pytest.skip(f"{path.name} has no code blocks")
    (tmp_path / "run").mkdir()
    runner = tmp_path / "doc_blocks.py"
    runner.write_text(program)
    command = [sys.executable, str(runner)]
    env = dict(os.environ, PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    if "mpi4py" in program:
        launcher = _mpirun()
        if launcher is None:
            if os.environ.get("GPUCKPT_REQUIRE_MPI"):
                pytest.fail("GPUCKPT_REQUIRE_MPI is set but there is no mpirun")
            pytest.skip("no mpirun for the collective examples")
        command = launcher + command
        env.update(OMPI_MCA_btl_vader_single_copy_mechanism="none", OMPI_MCA_rmaps_base_oversubscribe="1")
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, f"{path.name}: the code blocks failed\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"


def test_readme_runs_the_quickstart_and_its_async_save(tmp_path: Path) -> None:
    program = script(ROOT / "README.md", tmp_path)
    assert "gpuckpt.Checkpoint" in program
    (tmp_path / "run").mkdir()
    (tmp_path / "r.py").write_text(program)
    env = dict(os.environ, PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    subprocess.run([sys.executable, str(tmp_path / "r.py")], cwd=tmp_path, env=env, check=True, capture_output=True,
                   timeout=600)
    assert (tmp_path / "run" / "checkpoint").exists()
    assert (tmp_path / "run" / "ckpt-2.index").exists()  # the asynchronous save, committed by sync()


def test_install_commands_are_the_ones_ci_runs() -> None:
    install = [line for path in FILES for language, code in blocks(path) if language == "bash"
               for line in code.splitlines() if line.startswith(INSTALL)]
    assert len(install) == 2
    ci = (ROOT / ".ci" / "run").read_text()
    tests_line = next(line for line in install if "pytest" in line)
    assert tests_line in ci
    demo_line = next(line for line in install if "gpuckpt demo" in line)
    assert demo_line.endswith(".venv/bin/gpuckpt demo")
    assert "demo" in (ROOT / "tests" / "test_demo.py").read_text()


def test_unknown_languages_are_refused(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("```ruby\nputs 1\n```\n")
    with pytest.raises(AssertionError, match="unknown language 'ruby'"):
        script(page, tmp_path)
