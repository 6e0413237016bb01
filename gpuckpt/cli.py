"""The ``gpuckpt`` command: ``inspect`` and ``verify`` a checkpoint, or run the ``demo``.

``rich`` draws the tables when it is installed (the ``cli`` extra); plain text otherwise.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .errors import CheckpointError
from .reader import CheckpointReader, load_checkpoint


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _rows(reader: CheckpointReader) -> list[tuple[str, str, str, int, str]]:
    rows = []
    for key in reader.keys():
        e = reader.entry(key)
        size = sum(reader.index.slice_entries[k].size for k in _slice_keys(key, e)) if e.is_sliced else e.size
        shard = f"{len(e.slices)} slices" if e.is_sliced else str(e.shard_id)
        rows.append((key, e.dtype.name, str(list(e.shape)), size, shard))
    return rows


def _slice_keys(key: str, entry) -> list[bytes]:
    from .format.slices import slice_key

    return [slice_key(key, extents) for extents in entry.slices]


def _print_table(title: str, header: Sequence[str], rows: list[Sequence[str]]) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
        print(title)
        for row in [header, *rows]:
            print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)))
        return
    table = Table(title=title)
    for i, name in enumerate(header):
        table.add_column(name, justify="right" if i == 3 else "left")
    for row in rows:
        table.add_row(*map(str, row))
    Console().print(table)


def inspect(path: str) -> int:
    """Print key, dtype, shape, bytes and shard of every tensor, with totals."""
    with load_checkpoint(path) as reader:
        rows = _rows(reader)
        total = sum(r[3] for r in rows)
        title = f"{reader.prefix}: {len(rows)} tensors, {_human(total)} in {reader.index.num_shards} shard(s)"
        _print_table(title, ("key", "dtype", "shape", "bytes", "shard"), [(*r[:3], _human(r[3]), r[4]) for r in rows])
    return 0


def verify(path: str) -> int:
    """Re-read every tensor and check every CRC; exit status 1 and the bad keys named on failure."""
    with load_checkpoint(path) as reader:
        bad = []
        for key in reader.keys():
            try:
                reader.get_tensor(key)
            except CheckpointError as exc:
                bad.append((key, str(exc)))
        if bad:
            for key, why in bad:
                print(f"CORRUPT {key}: {why}", file=sys.stderr)
            print(f"{reader.prefix}: {len(bad)} of {len(reader.keys())} tensors failed verification", file=sys.stderr)
            return 1
        print(f"{reader.prefix}: all {len(reader.keys())} tensors verified (index and data CRCs match)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gpuckpt", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, func in (("inspect", inspect), ("verify", verify)):
        p = sub.add_parser(name, help=func.__doc__.splitlines()[0])
        p.add_argument("path", help="checkpoint prefix, or a directory holding a 'checkpoint' state file")
    sub.add_parser("demo", help="train, save asynchronously, get killed, restart and verify", add_help=False)
    args, rest = parser.parse_known_args(argv)
    if args.command == "demo":
        from .demo import main as demo

        return demo(rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        return {"inspect": inspect, "verify": verify}[args.command](args.path)
    except CheckpointError as exc:
        print(f"gpuckpt {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
