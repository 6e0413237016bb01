"""The ``gpuckpt`` console script: inspect and verify."""

from __future__ import annotations

import numpy as np

from gpuckpt.cli import main
from gpuckpt.saver import write_tensors


def make(tmp_path):
    prefix = tmp_path / "ck"
    write_tensors(prefix, {"w": np.zeros((4, 8), np.float32), "name": b"model"}, max_shard_size=64)
    return prefix


def test_inspect_lists_keys_with_totals(tmp_path, capsys) -> None:
    assert main(["inspect", str(make(tmp_path))]) == 0
    out = capsys.readouterr().out
    assert "w" in out and "float32" in out and "[4, 8]" in out and "2 tensors" in out and "2 shard(s)" in out


def test_verify_passes_then_names_the_corrupt_key(tmp_path, capsys) -> None:
    prefix = make(tmp_path)
    assert main(["verify", str(prefix)]) == 0
    assert "all 2 tensors verified" in capsys.readouterr().out
    shard = next(tmp_path.glob("ck.data-00001-*"))
    raw = bytearray(shard.read_bytes())
    raw[3] ^= 0x80
    shard.write_bytes(bytes(raw))
    assert main(["verify", str(prefix)]) == 1
    err = capsys.readouterr().err
    assert "CORRUPT" in err and "1 of 2 tensors failed" in err


def test_missing_checkpoint_exits_2(tmp_path, capsys) -> None:
    assert main(["verify", str(tmp_path / "none")]) == 2
    assert "none.index" in capsys.readouterr().err
