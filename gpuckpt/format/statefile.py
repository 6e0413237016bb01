"""The ``checkpoint`` state file: a text-format ``CheckpointState`` naming a directory's checkpoints.

gpuckpt ends the file with a comment line ``# gpuckpt-crc32c: xxxxxxxx``, the masked CRC32C of
every byte before that line. TensorFlow's text-format parser skips comments, so TF reads the
file as before; gpuckpt detects a damaged file instead of reading a flipped bit as "no checkpoint"
or as an older one. Files without the line (TensorFlow's) are read unverified.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from google.protobuf import text_encoding, text_format

from ..errors import DataLossError, DataLossReason
from . import crc, proto

_DAMAGED = DataLossReason.BAD_STATE_FILE  # the reason of every DataLossError this module raises

CHECKSUM_TAG = b"# gpuckpt-crc32c: "
_CHECKSUM_LINE = re.compile(rb"# gpuckpt-crc32c: ([0-9a-f]{8})\n\Z")


@dataclass(frozen=True)
class CheckpointState:
    """Which checkpoints a directory holds, oldest first; paths as written (often relative)."""

    model_checkpoint_path: str
    all_model_checkpoint_paths: tuple[str, ...] = ()
    all_model_checkpoint_timestamps: tuple[float, ...] = ()
    last_preserved_timestamp: float = 0.0


def parse_bytes(raw: bytes, path: str | None = None) -> CheckpointState:
    """Parse a state file's bytes, first checking its checksum line where it has one.

    DataLossError naming the file when the checksum does not match, the text is not UTF-8 or does
    not parse, or it names no checkpoint.
    """
    at = raw.rfind(CHECKSUM_TAG)
    if at >= 0 and (at == 0 or raw[at - 1 : at] == b"\n"):
        match = _CHECKSUM_LINE.match(raw, at)
        if match is None:
            raise DataLossError(f"checkpoint state file {path!r} is damaged: its checksum line is malformed",
                                path=path, reason=_DAMAGED)
        if int(match[1], 16) != crc.masked_crc32c(raw[:at]):
            raise DataLossError(f"checkpoint state file {path!r} is damaged: checksum mismatch", path=path,
                                reason=_DAMAGED)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataLossError(f"checkpoint state file {path!r} is not UTF-8 text (byte {exc.start})", path=path,
                            reason=_DAMAGED) from None
    return parse(text, path)


def parse(text: str, path: str | None = None) -> CheckpointState:
    """Parse protobuf text format (any field order, comments, either quote style, C escapes)."""
    msg = proto.CheckpointState()
    try:
        text_format.Parse(text, msg)
    except text_format.ParseError as exc:  # its message quotes the file: only the position is said
        raise DataLossError(f"cannot parse checkpoint state file {path!r} (line {exc.GetLine()}, column "
                            f"{exc.GetColumn()})", path=path, reason=_DAMAGED) from None
    except (ValueError, RecursionError):
        raise DataLossError(f"cannot parse checkpoint state file {path!r}", path=path, reason=_DAMAGED) from None
    if not msg.model_checkpoint_path:
        raise DataLossError(f"checkpoint state file {path!r} names no model_checkpoint_path", path=path,
                            reason=_DAMAGED)
    return CheckpointState(
        _text(msg.model_checkpoint_path, path),
        tuple(_text(p, path) for p in msg.all_model_checkpoint_paths),
        tuple(msg.all_model_checkpoint_timestamps),
        msg.last_preserved_timestamp,
    )


def _text(raw: bytes, path: str | None) -> str:
    if b"\x00" in raw:
        raise DataLossError(f"checkpoint state file {path!r} holds a path with a NUL byte", path=path, reason=_DAMAGED)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataLossError(f"checkpoint state file {path!r} holds a path that is not UTF-8", path=path,
                            reason=_DAMAGED) from exc


def _quote(s: str) -> str:
    return '"' + text_encoding.CEscape(s.encode("utf-8"), as_utf8=True) + '"'


def format(state: CheckpointState) -> str:  # noqa: A001 - mirrors parse()
    """Render the state as TensorFlow writes it (one field per line, doubles in shortest form), then
    the checksum comment line."""
    lines = [f"model_checkpoint_path: {_quote(state.model_checkpoint_path)}"]
    lines += [f"all_model_checkpoint_paths: {_quote(p)}" for p in state.all_model_checkpoint_paths]
    lines += [f"all_model_checkpoint_timestamps: {float(t)!r}" for t in state.all_model_checkpoint_timestamps]
    if state.last_preserved_timestamp:
        lines.append(f"last_preserved_timestamp: {float(state.last_preserved_timestamp)!r}")
    body = "\n".join(lines) + "\n"
    return body + f"{CHECKSUM_TAG.decode()}{crc.masked_crc32c(body.encode('utf-8')):08x}\n"
