"""Benchmark results as JSON, for ``bench/report.py`` to draw: one shared shape for every script.

    {"benchmark": NAME, "when": ISO time, "machine": {...}, "command": [...], "config": {...}, "results": {...}}

``results`` is each benchmark's own (documented in its ``to_json``/where it calls ``write``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys


def add_option(parser: argparse.ArgumentParser) -> None:
    """The ``--json PATH`` option every benchmark takes."""
    parser.add_argument("--json", metavar="PATH", default=None,
                        help="also write the results as JSON to PATH (bench/report.py draws them)")


def machine() -> dict:
    """What the figures depend on: CPUs, memory, OS, Python; whether a GPU was used is per benchmark."""
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        mem = None
    return {"cpus": os.cpu_count(), "memory_bytes": mem, "platform": platform.platform(),
            "python": platform.python_version()}


def write(path: str | None, benchmark: str, config: dict, results: dict) -> None:
    """Write one benchmark run to ``path`` (nothing when ``path`` is None)."""
    if path is None:
        return
    doc = {"benchmark": benchmark, "when": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "machine": machine(), "command": sys.argv, "config": config, "results": results}
    with open(path, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    print(f"results written to {path}")
