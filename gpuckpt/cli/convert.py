"""``gpuckpt convert``: the command-line face of :mod:`gpuckpt.convert`."""

from __future__ import annotations

import argparse
import time

from .common import human, key_matcher, resolve_prefix, strip_suffix


def run(args: argparse.Namespace) -> int:
    from .. import convert

    start = time.perf_counter()
    if args.to:
        count = convert.export(resolve_prefix(args.src), args.dst, args.to, match=key_matcher(args.filter),
                               force=args.force)
        what = f"{args.dst} ({args.to})"
    else:
        if args.filter:
            from ..errors import InvalidArgumentError

            raise InvalidArgumentError("--filter applies to --to only")
        dst = strip_suffix(args.dst)
        count = convert.import_file(args.src, dst, args.from_, force=args.force)
        what = f"checkpoint {dst}"
    import os

    size = os.path.getsize(args.dst) if args.to else sum(
        os.path.getsize(p) for p in _files(strip_suffix(args.dst)))
    print(f"wrote {count} tensors to {what}: {human(size)} in {time.perf_counter() - start:.2f} s")
    return 0


def _files(prefix: str) -> list[str]:
    from ..storage.filesystem import shard_files

    return [prefix + ".index", *shard_files(prefix)]
