"""``gpuckpt verify`` groups failures by what they are (a DataLossError's ``reason``), not by message text."""

from __future__ import annotations

from pathlib import Path

import numpy as np

import gpuckpt
from gpuckpt.cli import main
from gpuckpt.saver import write_tensors


def test_crc_mismatches_of_one_file_are_one_line_whatever_their_messages(tmp_path: Path, capsys, monkeypatch) -> None:
    from gpuckpt.cli import verify

    monkeypatch.setattr(verify, "BATCH_BYTES", 8192)  # t3 (16 KB) is streamed in chunks: its message differs
    monkeypatch.setattr(verify, "CHUNK_BYTES", 4096)
    tensors = {f"t{i}": np.full(1000 * (i + 1), i, np.float32) for i in range(4)}
    write_tensors(tmp_path / "ck", tensors)
    with gpuckpt.load_checkpoint(tmp_path / "ck") as reader:
        entries = {key: reader.entry(key) for key in tensors}
    shard = next(tmp_path.glob("ck.data-*"))
    raw = bytearray(shard.read_bytes())
    for entry in entries.values():
        raw[entry.offset + 5] ^= 0x01
    shard.write_bytes(bytes(raw))
    assert main(["verify", str(tmp_path / "ck")]) == 1
    err = capsys.readouterr().err
    failures = [line for line in err.splitlines() if line.startswith("  ")]
    assert len(failures) == 1 and "checksum mismatch" in failures[0] and "3 more tensors" in failures[0], err
    assert "Traceback" not in err
