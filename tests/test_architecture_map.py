"""README's architecture section names every module of the package, and only modules that exist.

A module is named by its path from the repository root, ``gpuckpt/…/name.py`` or ``kernels/name.py``;
a package's ``__init__.py`` is named by the package's folder (``gpuckpt/format/``). The package
itself, ``gpuckpt/__init__.py``, is named by that path. docs/architecture.md may name fewer
modules, but none that does not exist.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("gpuckpt", "kernels")
NAMED = re.compile(r"(?<![\w./-])((?:gpuckpt|kernels)/(?:[A-Za-z_][\w]*/)*(?:[A-Za-z_]\w*\.py)?)(?![\w/-])")


def modules() -> set[str]:
    """Every module file of the package, as the map names it."""
    found = set()
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            relative = path.relative_to(ROOT).as_posix()
            if relative == "gpuckpt/__init__.py":
                found.add(relative)
            elif path.name == "__init__.py":
                found.add(relative[: -len("__init__.py")])
            else:
                found.add(relative)
    return found


def section(text: str, heading: str) -> str:
    """The text of a ``## heading`` section, up to the next heading of that level."""
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def named(text: str) -> set[str]:
    return set(NAMED.findall(text))


def exists(name: str) -> bool:
    if name.endswith("/"):
        return (ROOT / name / "__init__.py").is_file()
    return (ROOT / name).is_file()


def test_the_pattern_reads_paths_and_package_folders() -> None:
    text = "`gpuckpt/format/` and gpuckpt/storage/base.py, kernels/pack.py; not mygpuckpt/x.py nor gpuckpt/x.pyc"
    assert named(text) == {"gpuckpt/format/", "gpuckpt/storage/base.py", "kernels/pack.py"}


def test_every_module_is_in_the_readme_architecture_section() -> None:
    mapped = named(section((ROOT / "README.md").read_text(), "Architecture"))
    missing = sorted(modules() - mapped)
    assert not missing, f"modules missing from README's architecture section: {missing}"


def test_every_module_the_readme_names_exists() -> None:
    mapped = named(section((ROOT / "README.md").read_text(), "Architecture"))
    absent = sorted(name for name in mapped if not exists(name))
    assert not absent, f"README's architecture section names modules that do not exist: {absent}"


def test_every_module_docs_architecture_names_exists() -> None:
    mapped = named((ROOT / "docs" / "architecture.md").read_text())
    assert mapped, "docs/architecture.md names no module"
    absent = sorted(name for name in mapped if not exists(name))
    assert not absent, f"docs/architecture.md names modules that do not exist: {absent}"
