"""The ``gpuckpt`` command line: ls, inspect, diff, verify, --version and help, on checkpoints the
tests write and on TensorFlow's fixtures. (convert: tests/test_convert.py.)"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import gpuckpt
from gpuckpt.cli import build_parser, main
from gpuckpt.saver import write_tensors
from gpuckpt.storage.filesystem import HOST_TAG
from tests.api.models import Adam, Dense

FIXTURES = Path(__file__).parent / "fixtures" / "tf"
SUBCOMMANDS = ("ls", "inspect", "diff", "verify", "convert")
DOCS = Path(__file__).parents[1] / "docs" / "cli.md"


def make(tmp_path):
    prefix = tmp_path / "ck"
    write_tensors(prefix, {"w": np.zeros((4, 8), np.float32), "name": b"model"}, max_shard_size=64)
    return prefix


def trained(tmp_path, name="run"):
    """A model with an aliased layer and an optimizer with slots, saved by a Checkpoint."""
    model = gpuckpt.Module()
    model.dense = Dense(3, 2)
    model.again = model.dense  # an alias: two paths to one object
    opt = Adam()
    opt.apply_gradients([(np.ones((3, 2), np.float32), model.dense.kernel)])
    return gpuckpt.Checkpoint(model=model, optimizer=opt).write(str(tmp_path / name / "ckpt"))


def test_inspect_lists_keys_with_totals(tmp_path, capsys) -> None:
    deep = tmp_path / ("a-rather-long-directory-name-" * 6)  # wider than any terminal: nothing may wrap
    deep.mkdir()
    assert main(["inspect", str(make(deep))]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == f"{deep}/ck: 2 tensors, 138 B in 2 shard(s)"  # 128 + the string's 10
    shard = gpuckpt.load_checkpoint(deep / "ck").entry("w").shard_id
    assert any(line.split() == ["float32", "[4,", "8]", "128", "B", str(shard), "w"] for line in lines), out


def test_inspect_never_cuts_keys_when_piped(tmp_path) -> None:
    keys = [f"model/layer_{i}/" + "x" * 150 + f"/exp_avg{suffix}" for i in range(3) for suffix in ("", "_sq")]
    write_tensors(tmp_path / "ck", {k: np.zeros(2, np.float32) for k in keys})
    out = subprocess.run([sys.executable, "-m", "gpuckpt.cli", "inspect", str(tmp_path / "ck")], check=False,
                         capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "80"})
    assert out.returncode == 0, out.stderr
    assert [line.split()[-1] for line in out.stdout.splitlines()[2:]] == sorted(keys)
    assert "…" not in out.stdout and "..." not in out.stdout


def test_inspect_json_parses_back_with_every_tensor(tmp_path, capsys) -> None:
    prefix = trained(tmp_path)
    assert main(["inspect", "--json", prefix]) == 0
    doc = json.loads(capsys.readouterr().out)
    with gpuckpt.load_checkpoint(prefix) as reader:
        assert doc["schema"] == "gpuckpt.inspect/1" and doc["num_shards"] == reader.index.num_shards
        assert [t["key"] for t in doc["tensors"]] == reader.keys()
        for t in doc["tensors"]:
            e = reader.entry(t["key"])
            assert (t["dtype"], t["shape"], t["bytes"], t["shard"], t["crc32c"]) == (
                e.dtype.name, list(e.shape), e.size, e.shard_id, e.crc32c)
    assert doc["totals"] == {"tensors": len(doc["tensors"]), "bytes": sum(t["bytes"] for t in doc["tensors"]),
                             "all_tensors": len(doc["tensors"])}


@pytest.mark.parametrize("pattern, expected", [
    ("*/exp_avg", ["a/exp_avg", "b/exp_avg"]),  # glob: the whole key
    ("a/*", ["a/exp_avg", "a/exp_avg_sq", "a/w"]),
    ("exp_avg$", ["a/exp_avg", "b/exp_avg"]),   # regex: searched
    ("exp_avg_sq", ["a/exp_avg_sq"]),
    ("glob:b/*", ["b/exp_avg"]),
    ("re:^a/", ["a/exp_avg", "a/exp_avg_sq", "a/w"]),
])
def test_inspect_filter_glob_or_regex(tmp_path, capsys, pattern, expected) -> None:
    write_tensors(tmp_path / "ck", {k: np.zeros(1, np.float32) for k in ("a/w", "a/exp_avg", "a/exp_avg_sq",
                                                                         "b/exp_avg")})
    assert main(["inspect", "--json", "--filter", pattern, str(tmp_path / "ck")]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [t["key"] for t in doc["tensors"]] == sorted(expected) and doc["totals"]["all_tensors"] == 4


def test_inspect_graph_shows_paths_keys_slots_and_aliases(tmp_path, capsys) -> None:
    prefix = trained(tmp_path)
    assert main(["inspect", "--graph", prefix]) == 0
    out = capsys.readouterr().out
    assert "    again -> alias of (root).model.dense\n" in out
    assert "      kernel\n        = model/dense/kernel/.ATTRIBUTES/VARIABLE_VALUE  float32 [3, 2]\n" in out
    assert "    slot 'm' of (root).model.dense.kernel\n" in out
    assert "      = model/dense/kernel/.OPTIMIZER_SLOT/optimizer/m/.ATTRIBUTES/VARIABLE_VALUE  float32 [3, 2]" in out
    assert main(["inspect", "--graph", "--json", prefix]) == 0
    nodes = json.loads(capsys.readouterr().out)["graph"]
    dense = next(n for n in nodes if n["path"] == ["model", "dense"])
    assert dense["aliases"] == [["model", "again"]]


@pytest.mark.parametrize("fixture", sorted(p.name for p in FIXTURES.iterdir() if p.is_dir()))
def test_inspect_and_verify_tensorflow_fixtures(fixture, capsys) -> None:
    directory = FIXTURES / fixture
    prefix = str(directory / "ckpt") if (directory / "ckpt.index").exists() else gpuckpt.latest_checkpoint(directory)
    assert main(["inspect", "--json", prefix + ".index"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [t["key"] for t in doc["tensors"]] == gpuckpt.load_checkpoint(prefix).keys()
    assert main(["inspect", "--graph", prefix]) == 0
    assert main(["verify", str(directory)]) == 0
    assert "verified" in capsys.readouterr().out


def test_verify_passes_then_names_the_corrupt_key(tmp_path, capsys) -> None:
    prefix = make(tmp_path)
    assert main(["verify", str(prefix)]) == 0
    out = capsys.readouterr().out
    assert "all 2 tensors verified" in out and "GB/s" in out
    entry = gpuckpt.load_checkpoint(prefix).entry("w")
    shard = next(tmp_path.glob(f"ck.data-0000{entry.shard_id}-*"))
    raw = bytearray(shard.read_bytes())
    raw[entry.offset + 3] ^= 0x80
    shard.write_bytes(bytes(raw))
    assert main(["verify", str(prefix) + ".index"]) == 1
    err = capsys.readouterr().err
    assert "checksum mismatch for key 'w'" in err and "1 of 2 tensors failed" in err
    assert "computed" not in err  # a CRC computed over the bytes read would disclose them


def test_verify_reports_a_missing_data_file_once(tmp_path, capsys) -> None:
    write_tensors(tmp_path / "ck", {f"t{i:03d}": np.full(4, i, np.float32) for i in range(125)}, max_shard_size=1024)
    victim = next(tmp_path.glob("ck.data-00000-*"))
    victim.unlink()
    assert main(["verify", str(tmp_path / "ck")]) == 1
    err = capsys.readouterr().err
    failures = [line for line in err.splitlines() if line.startswith("  ")]
    assert len(failures) == 1 and str(victim) in failures[0] and "more tensors" in failures[0]
    assert "distinct failure(s)" in err and "Traceback" not in err


def test_verify_directory_and_exit_statuses(tmp_path, capsys) -> None:
    run = tmp_path / "run"
    manager = gpuckpt.CheckpointManager(gpuckpt.Checkpoint(v=gpuckpt.Variable(np.ones(3, np.float32))), run, 5)
    for _ in range(3):
        manager.save()
    assert main(["verify", str(run)]) == 0
    assert capsys.readouterr().out.count("OK ") == 3
    assert main(["verify", str(tmp_path / "none")]) == 2
    assert "none.index" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["verify", str(run), str(tmp_path / "empty")]) == 2
    (run / "ckpt-2.index").write_bytes(b"not an index at all, just some bytes")
    assert main(["verify", str(run)]) == 1
    err = capsys.readouterr().err
    assert "CORRUPT" in err and "ckpt-2" in err and "Traceback" not in err


def test_verify_streams_tensors_larger_than_a_batch(tmp_path, capsys, monkeypatch) -> None:
    from gpuckpt.cli import verify

    monkeypatch.setattr(verify, "BATCH_BYTES", 1024)
    monkeypatch.setattr(verify, "CHUNK_BYTES", 1000)
    write_tensors(tmp_path / "ck", {"big": np.arange(3000, dtype=np.float32), "small": np.ones(4, np.float32)})
    assert main(["verify", str(tmp_path / "ck")]) == 0
    data = next(tmp_path.glob("ck.data-*"))
    raw = bytearray(data.read_bytes())
    raw[5000] ^= 1
    data.write_bytes(bytes(raw))
    assert main(["verify", str(tmp_path / "ck")]) == 1
    assert "checksum mismatch for key 'big'" in capsys.readouterr().err


def test_missing_checkpoint_exits_2(tmp_path, capsys) -> None:
    assert main(["verify", str(tmp_path / "none")]) == 2
    assert "none.index" in capsys.readouterr().err
    assert main(["inspect", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("gpuckpt inspect: NotFoundError:")


def test_ls_shows_checkpoints_kept_and_leftovers_without_changing_anything(tmp_path, capsys) -> None:
    clock = iter(float(t) for t in range(0, 10**6, 3600)).__next__
    ckpt = gpuckpt.Checkpoint(v=gpuckpt.Variable(np.ones(3, np.float32)))
    manager = gpuckpt.CheckpointManager(ckpt, tmp_path, max_to_keep=2, keep_checkpoint_every_n_hours=2, clock=clock)
    for _ in range(5):
        manager.save()
    (tmp_path / "ckpt-9.data-00000-of-00001").write_bytes(b"orphan")
    (tmp_path / f"ckpt-6.index.tmp-999999-{HOST_TAG}-00000000").write_bytes(b"tmp")
    for n in (2, 4, 5):  # as if written at the fake clock's times
        os.utime(tmp_path / f"ckpt-{n}.index", (3600.0 * n, 3600.0 * n))
    before = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    assert main(["ls", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == before
    statuses = {line.split()[-1]: line.split()[-2] for line in out.splitlines() if line.rstrip().endswith(
        tuple(f"ckpt-{i}" for i in range(1, 6)))}
    assert statuses == {"ckpt-2": "preserved", "ckpt-4": "managed", "ckpt-5": "latest"}, out
    assert "orphan data" in out and "ckpt-9.data-00000-of-00001" in out
    assert "temporary" in out and "writer pid 999999 gone" in out
    assert main(["ls", "--json", str(tmp_path)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["schema"] == "gpuckpt.ls/1"
    assert [c["number"] for c in doc["checkpoints"]] == [2, 4, 5]
    assert all(c["shards"] == c["shards_present"] == 1 for c in doc["checkpoints"])
    assert {s["kind"] for s in doc["other"]} == {"orphan data", "temporary"} and doc["missing"] == []
    (tmp_path / "ckpt-4.index").unlink()
    assert main(["ls", str(tmp_path)]) == 0
    assert "the state file names ckpt-4, which has no index here" in capsys.readouterr().out


def test_ls_of_tensorflow_managers_directory(capsys) -> None:
    assert main(["ls", str(FIXTURES / "manager")]) == 0
    out = capsys.readouterr().out
    assert "latest" in out and "ckpt-3" in out and "managed" in out and "manifest.json" in out


def test_diff_keys_dtypes_shapes_and_values(tmp_path, capsys) -> None:
    a = write_tensors(tmp_path / "a", {"same": np.ones(4, np.float32), "grows": np.zeros(2, np.float32),
                                       "gone": np.zeros(1, np.int8), "moved": np.arange(6, dtype=np.float64)})
    b = write_tensors(tmp_path / "b", {"same": np.ones(4, np.float32), "grows": np.zeros(3, np.float32),
                                       "new": b"x", "moved": np.arange(6, dtype=np.float64) * [1, 1, 1, 1, 1, 1.5]})
    assert main(["diff", a, a]) == 0
    capsys.readouterr()
    assert main(["diff", a, b]) == 1
    out = capsys.readouterr().out
    assert "+ new  string []" in out and "- gone  int8 [1]" in out and "~ grows  float32 [2] -> float32 [3]" in out
    assert "1 tensor(s) of the same dtype and shape hold different bytes" in out
    assert main(["diff", "--values", "--json", a, b]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["values"] == [{"key": "moved", "elements": 6, "differing": 1, "max_abs": 2.5, "max_rel": 2.5 / 7.5}]


def test_diff_values_in_chunks_with_bfloat16_and_nan(tmp_path, capsys, monkeypatch) -> None:
    import ml_dtypes

    from gpuckpt.cli import diff

    monkeypatch.setattr(diff, "CHUNK_BYTES", 16)
    x = np.arange(100, dtype=np.float32).astype(ml_dtypes.bfloat16)
    y = x.copy()
    y[97] = 1000
    n = np.array([np.nan, 1.0], np.float32)
    a = write_tensors(tmp_path / "a", {"x": x, "n": n})
    b = write_tensors(tmp_path / "b", {"x": y, "n": n.copy()})
    assert main(["diff", "--values", a, b]) == 1
    out = capsys.readouterr().out
    assert "! x  1 of 100 elements differ, max abs 903" in out and "! n" not in out


@pytest.mark.parametrize("command", [None, *SUBCOMMANDS])
def test_version_everywhere(command, capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([*([command] if command else []), "--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"gpuckpt {gpuckpt.__version__}"


def test_help_has_no_markup_and_documents_every_option() -> None:
    docs = DOCS.read_text()
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name in SUBCOMMANDS:
        p = sub.choices[name]
        text = p.format_help()
        assert "``" not in text and "[bold" not in text, text
        assert f"## `gpuckpt {name}" in docs
        for action in p._actions:
            for flag in action.option_strings:
                if flag not in ("-h", "--help"):
                    assert f"`{flag}" in docs, f"docs/cli.md does not document gpuckpt {name} {flag}"
    assert "``" not in parser.format_help()


def test_demo_help_has_no_markup_and_is_documented(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    out = capsys.readouterr().out
    assert "``" not in out and "--save-every" in out
    docs = DOCS.read_text()
    for flag in re.findall(r"(--[a-z-]+)", out):
        if flag != "--help":
            assert f"`{flag}" in docs, flag


def test_docs_cli_blocks_run_in_order(tmp_path) -> None:
    """docs/cli.md's python and bash blocks, in order, against the directory its first block makes
    (moved into a temporary directory); ``console`` blocks are sample output and are not run."""
    text = DOCS.read_text()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "gpuckpt").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m gpuckpt.cli "$@"\n')
    (bin_dir / "gpuckpt").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    blocks = re.findall(r"```(python|bash)\n(.*?)```", text, re.S)
    assert [lang for lang, _ in blocks].count("bash") >= 6
    for lang, code in blocks:
        code = code.replace("/tmp/cli-demo", str(tmp_path / "cli-demo"))
        if lang == "python":
            exec(compile(code, "docs/cli.md", "exec"), {})
        else:
            result = subprocess.run(["bash", "-e", "-c", code], env=env, capture_output=True, text=True, timeout=600,
                                    check=False)
            assert result.returncode == 0, f"{code}\n{result.stdout}\n{result.stderr}"
            assert "Traceback" not in result.stderr, result.stderr
    assert json.loads((tmp_path / "cli-demo-inspect.json").read_text())["totals"]["tensors"] == 1
    assert (tmp_path / "cli-demo-back" / "ckpt.index").exists()


def test_damaged_index_is_one_line_for_every_command(tmp_path, capsys) -> None:
    prefix = make(tmp_path)
    good = write_tensors(tmp_path / "good", {"w": np.zeros(2, np.float32)})
    (tmp_path / "ck.index").write_bytes(b"\x00" * 100)
    for argv, status in ((["inspect", str(prefix)], 2), (["inspect", "--graph", str(prefix)], 2),
                         (["diff", good, str(prefix)], 2), (["verify", str(prefix)], 1),
                         (["convert", str(prefix), str(tmp_path / "x.npz"), "--to", "npz"], 2)):
        assert main(argv) == status, argv
        err = capsys.readouterr().err
        assert "DataLossError" in err and "ck.index" in err and "Traceback" not in err, (argv, err)
        assert len(err.strip().splitlines()) == 1, err


def test_verify_progress_bar_when_asked(tmp_path, capsys) -> None:
    prefix = make(tmp_path)
    assert main(["verify", "--progress", str(prefix)]) == 0
    assert "all 2 tensors verified" in capsys.readouterr().out
