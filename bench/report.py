"""Draw the benchmarks' JSON results (``--json PATH`` of each ``bench/*.py``) as PNGs for the docs.

    .venv/bin/python bench/report.py bench/out/*.json --out docs/img

One picture per result file, named after its benchmark: ``io.png`` and ``gpu.png`` (throughput of
gpuckpt beside its peers, with the hardware limit measured in the same run as a line over each
workload), ``overlap.png`` (each step's time during a run, with the saves in flight shaded),
``cli.png`` (inspect and verify beside reading the index alone and plain reads of the data),
``mpi.png`` (throughput by rank count). Needs matplotlib (the ``bench`` extra).
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _caption(doc: dict) -> str:
    m = doc.get("machine", {})
    mem = m.get("memory_bytes")
    return (f"{doc['benchmark']} benchmark, {doc.get('when', '?')}; {m.get('cpus', '?')} CPUs"
            + (f", {mem / 2**30:.0f} GiB" if mem else "") + f"; config {json.dumps(doc.get('config', {}))}")


def _bars(ax, groups: list[str], sides: dict[str, list[float | None]], limits: list[float | None], unit: str) -> None:
    """Grouped bars, one group per workload, with each workload's limit as a dashed line across it."""
    width = 0.8 / max(len(sides), 1)
    for i, (side, values) in enumerate(sides.items()):
        xs = [g + (i - (len(sides) - 1) / 2) * width for g in range(len(groups))]
        bars = ax.bar([x for x, v in zip(xs, values) if v is not None], [v for v in values if v is not None],
                      width, label=side)
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    for g, limit in enumerate(limits):
        if limit is not None:
            ax.hlines(limit, g - 0.45, g + 0.45, colors="black", linestyles="dashed",
                      label="limit (plain I/O / memcpy, same run)" if g == next(
                          i for i, v in enumerate(limits) if v is not None) else None)
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylabel(unit)
    ax.legend(fontsize=8)


def draw_io(doc: dict, plt):
    seconds, nbytes = doc["results"]["seconds"], doc["results"]["bytes"]

    def rate(name: str) -> float | None:
        return nbytes / seconds[name] / 1e9 if name in seconds else None

    ops = [("save", ""), ("restore", " (warm)"), ("restore", " (cold)")]
    groups = [f"{op}{mode}" for op, mode in ops]
    sides = {"gpuckpt": [rate(f"{op} gpuckpt{mode}") for op, mode in ops],
             "TensorFlow": [rate(f"{op} TensorFlow{mode}") for op, mode in ops]}
    if all(v is None for v in sides["TensorFlow"]):
        del sides["TensorFlow"]
    fig, ax = plt.subplots(figsize=(7, 4))
    _bars(ax, groups, sides, [rate(f"{op} plain{mode}") for op, mode in ops], "GB/s")
    ax.set_title(f"Save and restore, {nbytes / 2**30:.2f} GiB (bench_io.py)")
    return fig


def draw_gpu(doc: dict, plt):
    rows = doc["results"]["rows"]
    fig, ax = plt.subplots(figsize=(7, 4))
    names = [r["measurement"] for r in rows]
    values = [r["gb_per_s"] for r in rows]
    colors = ["gray" if "limit" in n or n.startswith(("memcpy", "D2H", "H2D", "device copy")) else "C0" for n in names]
    bars = ax.barh(names, values, color=colors)
    ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.invert_yaxis()
    ax.margins(x=0.2)
    ax.set_xlabel("GB/s (gray: hardware limits measured in the same run)")
    ax.set_title("GPU engine (bench_gpu.py)" + ("" if doc["config"].get("on_gpu") else ": CPU path, no GPU"))
    return fig


def draw_overlap(doc: dict, plt):
    runs = doc["results"]["runs"]
    fig, axes = plt.subplots(len(runs), 1, figsize=(8, 1.6 * len(runs) + 1), sharex=True, squeeze=False)
    top = max((max(r["step_s"]) for r in runs if r["step_s"]), default=1) * 1e3
    for ax, run in zip(axes[:, 0], runs):
        for start, end in run["in_flight_s"]:
            ax.axvspan(start, end, color="orange", alpha=0.3, lw=0)
        ax.plot(run["step_start_s"], [s * 1e3 for s in run["step_s"]], ".-", ms=3, lw=0.8)
        base = doc["results"]["baselines"].get(run["name"].split(":")[0])
        if base:
            ax.axhline(base * 1e3, color="black", ls="dashed", lw=0.8)
        ax.set_ylim(0, top * 1.05)
        ax.set_ylabel("step ms", fontsize=8)
        ax.set_title(f"{run['name']} (total {run['total_s']:.2f} s)", fontsize=9)
    axes[-1, 0].set_xlabel("seconds since the first step (orange: a save in flight; dashed: median step "
                           "without checkpoints)")
    fig.suptitle("Step time during overlapped saves (bench_overlap.py)")
    return fig


def draw_cli(doc: dict, plt):
    rows = doc["results"]["rows"]
    fig, ax = plt.subplots(figsize=(8, 4))
    names = [r["measurement"] for r in rows]
    colors = ["gray" if "plain" in n or "index" in n or "start-up" in n else "C0" for n in names]
    bars = ax.barh(names, [r["seconds"] for r in rows], color=colors)
    ax.bar_label(bars, labels=[f"{r['seconds']:.2f} s" + (f", {r['gb_per_s']:.2f} GB/s" if r["gb_per_s"] else "")
                               for r in rows], fontsize=7)
    ax.invert_yaxis()
    ax.margins(x=0.3)
    ax.set_xlabel("seconds, best of the runs (gray: the floors measured in the same run)")
    c = doc["config"]
    ax.set_title(f"inspect and verify, {c['tensors']} tensors, {c['bytes'] / 2**30:.2f} GiB (bench_cli.py)")
    return fig


def draw_mpi(doc: dict, plt):
    rows, nbytes = doc["results"]["rows"], doc["results"]["bytes"]
    groups = [r["setup"] for r in rows]
    sides = {"save": [nbytes / r["save_s"] / 1e9 for r in rows],
             "restore": [nbytes / r["restore_s"] / 1e9 for r in rows]}
    fig, ax = plt.subplots(figsize=(7, 4))
    _bars(ax, groups, sides, [None] * len(rows), "GB/s")
    ax.set_title("Many processes (bench_mpi.py)")
    return fig


DRAW = {"io": draw_io, "gpu": draw_gpu, "overlap": draw_overlap, "cli": draw_cli, "mpi": draw_mpi}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", nargs="+", help="JSON files written by the benchmarks' --json")
    ap.add_argument("--out", default="docs/img", help="directory for the PNGs (default docs/img)")
    args = ap.parse_args(argv)
    plt = _plt()
    os.makedirs(args.out, exist_ok=True)
    for path in args.results:
        with open(path) as f:
            doc = json.load(f)
        draw = DRAW.get(doc.get("benchmark"))
        if draw is None:
            print(f"{path}: no drawing for benchmark {doc.get('benchmark')!r}", file=sys.stderr)
            continue
        fig = draw(doc, plt)
        fig.text(0.01, 0.005, _caption(doc), fontsize=6, color="gray", wrap=True)
        fig.tight_layout(rect=(0, 0.04, 1, 1))
        out = os.path.join(args.out, f"{doc['benchmark']}.png")
        fig.savefig(out, dpi=110)
        plt.close(fig)
        print(f"{path} -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
