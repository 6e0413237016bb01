"""The ``checkpoint`` state file: a text-format ``CheckpointState`` naming a directory's checkpoints."""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf import text_encoding, text_format

from ..errors import DataLossError
from . import proto


@dataclass(frozen=True)
class CheckpointState:
    """Which checkpoints a directory holds, oldest first; paths as written (often relative)."""

    model_checkpoint_path: str
    all_model_checkpoint_paths: tuple[str, ...] = ()
    all_model_checkpoint_timestamps: tuple[float, ...] = ()
    last_preserved_timestamp: float = 0.0


def parse(text: str, path: str | None = None) -> CheckpointState:
    """Parse protobuf text format (any field order, comments, either quote style, C escapes)."""
    msg = proto.CheckpointState()
    try:
        text_format.Parse(text, msg)
    except text_format.ParseError as exc:
        raise DataLossError(f"cannot parse checkpoint state file {path!r}: {exc}", path=path) from exc
    if not msg.model_checkpoint_path:
        raise DataLossError(f"checkpoint state file {path!r} names no model_checkpoint_path", path=path)
    return CheckpointState(
        _text(msg.model_checkpoint_path, path),
        tuple(_text(p, path) for p in msg.all_model_checkpoint_paths),
        tuple(msg.all_model_checkpoint_timestamps),
        msg.last_preserved_timestamp,
    )


def _text(raw: bytes, path: str | None) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataLossError(f"checkpoint state file {path!r} holds a path that is not UTF-8", path=path) from exc


def _quote(s: str) -> str:
    return '"' + text_encoding.CEscape(s.encode("utf-8"), as_utf8=True) + '"'


def format(state: CheckpointState) -> str:  # noqa: A001 - mirrors parse()
    """Render the state as TensorFlow writes it: one field per line, doubles in shortest form."""
    lines = [f"model_checkpoint_path: {_quote(state.model_checkpoint_path)}"]
    lines += [f"all_model_checkpoint_paths: {_quote(p)}" for p in state.all_model_checkpoint_paths]
    lines += [f"all_model_checkpoint_timestamps: {float(t)!r}" for t in state.all_model_checkpoint_timestamps]
    if state.last_preserved_timestamp:
        lines.append(f"last_preserved_timestamp: {float(state.last_preserved_timestamp)!r}")
    return "\n".join(lines) + "\n"
