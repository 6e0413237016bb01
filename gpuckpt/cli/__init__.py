"""The ``gpuckpt`` command: look into, compare, check and convert checkpoints, or run the demo.

Subcommands: ls, inspect, diff, verify, convert, demo. ``docs/cli.md`` documents every option.
Output meant for people goes through ``rich`` on a terminal when it is installed (the ``cli``
extra); piped output is plain text with nothing cut, and ``--json`` gives documented JSON.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from ..errors import CheckpointError

DESCRIPTION = "Look into, compare, check and convert gpuckpt / TensorFlow checkpoints."
FILTER_HELP = ("only keys matching PATTERN: a shell glob over the whole key (e.g. '*exp_avg*') or a regular "
               "expression searched in the key (e.g. 'exp_avg$'); force either with 'glob:' or 're:'")


def version() -> str:
    from .. import __version__

    return f"gpuckpt {__version__}"


def _add_version(p: argparse.ArgumentParser) -> None:
    p.add_argument("--version", action="version", version=version(), help="print gpuckpt's version and exit")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gpuckpt", description=DESCRIPTION)
    _add_version(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("ls", help="list a checkpoint directory: checkpoints, latest, kept, leftovers",
                       description="List a checkpoint directory's checkpoints (number, time, size, shards, latest, "
                                   "kept) and every file that is not part of a committed checkpoint. Changes nothing.")
    p.add_argument("directory", help="a CheckpointManager directory")
    p.add_argument("--json", action="store_true", help="print JSON (schema gpuckpt.ls/1, see docs/cli.md)")
    _add_version(p)

    p = sub.add_parser("inspect", help="list every tensor of a checkpoint (from its index only)",
                       description="List key, dtype, shape, bytes and shard of every tensor, with totals, reading "
                                   "only the index. Keys are never cut.")
    p.add_argument("path", help="checkpoint prefix, its .index file, or a directory (its latest checkpoint)")
    p.add_argument("--filter", metavar="PATTERN", help=FILTER_HELP)
    p.add_argument("--json", action="store_true", help="print JSON (schema gpuckpt.inspect/1, see docs/cli.md)")
    p.add_argument("--graph", action="store_true",
                   help="show the object graph as a tree: object paths, their keys, optimizer slots, aliases")
    _add_version(p)

    p = sub.add_parser("diff", help="compare two checkpoints: keys added, removed, changed; with --values, values",
                       description="Compare two checkpoints' keys, dtypes and shapes; with --values also their values, "
                                   "read in chunks. Exit status 0 if equal, 1 if different, 2 on error.")
    p.add_argument("a", help="first checkpoint (prefix, .index file or directory)")
    p.add_argument("b", help="second checkpoint")
    p.add_argument("--values", action="store_true",
                   help="also compare the values of same-typed tensors: count, max abs and max relative difference")
    p.add_argument("--filter", metavar="PATTERN", help=FILTER_HELP)
    p.add_argument("--json", action="store_true", help="print JSON (schema gpuckpt.diff/1, see docs/cli.md)")
    _add_version(p)

    p = sub.add_parser("verify", help="re-read every tensor and check every CRC",
                       description="Re-read every tensor and check every CRC. Exit status 0 if all verify, 1 if any "
                                   "is corrupt, 2 if an argument is not a checkpoint.")
    p.add_argument("paths", nargs="+", metavar="PATH",
                   help="checkpoint prefix, its .index file, or a directory (every checkpoint in it)")
    bar = p.add_mutually_exclusive_group()
    bar.add_argument("--progress", dest="progress", action="store_true", default=None,
                     help="show a progress bar on stderr (default: only when stderr is a terminal)")
    bar.add_argument("--no-progress", dest="progress", action="store_false", help="never show a progress bar")
    _add_version(p)

    p = sub.add_parser("convert", help="convert to or from safetensors, torch and npz files",
                       description="Convert a checkpoint to safetensors, torch (torch.save format) or npz, or a "
                                   "safetensors or torch file to a checkpoint, streaming tensor by tensor. Key "
                                   "names follow the rule in docs/cli.md.")
    p.add_argument("src", help="source: a checkpoint (prefix, .index or directory), or a file with --from")
    p.add_argument("dst", help="destination: a file with --to, a checkpoint prefix with --from")
    way = p.add_mutually_exclusive_group(required=True)
    way.add_argument("--to", choices=("safetensors", "torch", "npz"), help="write SRC's tensors to DST in this format")
    way.add_argument("--from", dest="from_", choices=("safetensors", "torch"),
                     help="read SRC in this format and write a checkpoint at prefix DST")
    p.add_argument("--filter", metavar="PATTERN", help="with --to: " + FILTER_HELP)
    p.add_argument("--force", action="store_true", help="replace DST if it exists")
    _add_version(p)

    sub.add_parser("demo", help="train, save asynchronously, get killed, restart, verify, and time it",
                   add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; a CheckpointError is reported in one line (exit status 2), never a traceback."""
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command == "demo":
        from ..demo import main as demo

        return demo(rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        return _dispatch(args)
    except CheckpointError as exc:
        print(f"gpuckpt {args.command}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    except ImportError as exc:  # an optional dependency (torch for torch files): its message says which extra
        print(f"gpuckpt {args.command}: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `gpuckpt inspect ... | head`: the reader left, which is not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "ls":
        from . import ls

        return ls.run(args.directory, as_json=args.json)
    if args.command == "inspect":
        from . import inspect

        return inspect.run(args.path, pattern=args.filter, as_json=args.json, graph=args.graph)
    if args.command == "diff":
        from . import diff

        return diff.run(args.a, args.b, values=args.values, pattern=args.filter, as_json=args.json)
    if args.command == "verify":
        from . import verify

        return verify.run(args.paths, progress=args.progress)
    from . import convert

    return convert.run(args)
