"""``gpuckpt convert``: round trips through safetensors and torch are bit-identical, the files are
what safetensors, torch and NumPy read, tied weights and bfloat16 survive, memory stays bounded."""

from __future__ import annotations

import json
import tracemalloc

import ml_dtypes
import numpy as np
import pytest

import gpuckpt
from gpuckpt.cli import main
from gpuckpt.convert import export, import_file, source
from gpuckpt.convert.names import key_to_name, name_to_key
from gpuckpt.format.objgraph import OBJECT_GRAPH_KEY
from gpuckpt.saver import write_tensors
from tests.api.models import Adam, Dense

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")


def model_and_checkpoint(tmp_path):
    model = gpuckpt.Module()
    model.dense = Dense(3, 2)
    model.tied = model.dense.kernel  # a second path to one variable; breadth first, the first is model/tied
    model.half = gpuckpt.Variable(np.linspace(-2, 2, 7, dtype=np.float32).astype(ml_dtypes.bfloat16))
    model.mask = gpuckpt.Variable(np.array([True, False, True]))
    model.empty = gpuckpt.Variable(np.zeros((0, 4), np.float16))
    model.count = gpuckpt.Variable(np.int64(7))
    opt = Adam()
    opt.apply_gradients([(np.ones((3, 2), np.float32), model.dense.kernel)])
    ckpt = gpuckpt.Checkpoint(model=model, optimizer=opt)
    return model, ckpt, ckpt.save(str(tmp_path / "src" / "ckpt"))


def tensors_of(prefix) -> dict[str, tuple]:
    """Every key's dtype, shape and exact bytes (string tensors as their elements)."""
    with gpuckpt.load_checkpoint(prefix) as reader:
        out = {}
        for key in reader.keys():
            value = reader.get_tensor(key)
            entry = reader.entry(key)
            raw = value if isinstance(value, bytes) else (
                list(value.reshape(-1)) if value.dtype == object else value.tobytes())
            out[key] = (entry.dtype.name, entry.shape, raw)
        return out


@pytest.mark.parametrize("fmt, suffix", [("safetensors", "safetensors"), ("torch", "pt")])
def test_round_trip_is_bit_identical_and_restores(tmp_path, fmt, suffix, capsys) -> None:
    model, ckpt, prefix = model_and_checkpoint(tmp_path)
    file = tmp_path / f"model.{suffix}"
    assert main(["convert", prefix, str(file), "--to", fmt]) == 0
    assert main(["convert", str(file), str(tmp_path / "back" / "ckpt"), "--from", fmt]) == 0
    assert tensors_of(tmp_path / "back" / "ckpt") == tensors_of(prefix)
    capsys.readouterr()
    assert main(["diff", "--values", prefix, str(tmp_path / "back" / "ckpt")]) == 0
    expected = model.dense.kernel.numpy().copy()
    model.dense.kernel.assign(np.zeros((3, 2), np.float32))
    ckpt.restore(str(tmp_path / "back" / "ckpt")).assert_consumed()
    np.testing.assert_array_equal(model.dense.kernel.numpy(), expected)


def test_safetensors_reads_what_convert_writes(tmp_path) -> None:
    model, _, prefix = model_and_checkpoint(tmp_path)
    export(prefix, tmp_path / "m.safetensors", "safetensors")
    loaded = safetensors_torch.load_file(str(tmp_path / "m.safetensors"))
    np.testing.assert_array_equal(loaded["model.tied"].numpy(), model.dense.kernel.numpy())
    assert loaded["model.half"].dtype == torch.bfloat16
    np.testing.assert_array_equal(loaded["model.half"].float().numpy(), model.half.numpy().astype(np.float32))
    assert loaded["model.mask"].dtype == torch.bool and loaded["model.empty"].shape == (0, 4)
    assert "model.dense.kernel" not in loaded  # safetensors holds no shared tensors: the alias is in the metadata
    slot = "model/tied/.OPTIMIZER_SLOT/optimizer/m/.ATTRIBUTES/VARIABLE_VALUE"
    assert slot in loaded
    from safetensors import safe_open

    with safe_open(str(tmp_path / "m.safetensors"), "pt") as f:
        meta = f.metadata()
    assert json.loads(meta["gpuckpt.aliases"]) == {"model.dense.kernel": "model.tied"}
    assert "/" + OBJECT_GRAPH_KEY in json.loads(meta["gpuckpt.strings"])


@pytest.mark.parametrize("mmap", [False, True])
def test_torch_load_weights_only_reads_what_convert_writes(tmp_path, mmap) -> None:
    model, _, prefix = model_and_checkpoint(tmp_path)
    export(prefix, tmp_path / "m.pt", "torch")
    state = torch.load(str(tmp_path / "m.pt"), weights_only=True, mmap=mmap)
    np.testing.assert_array_equal(state["model.dense.kernel"].numpy(), model.dense.kernel.numpy())
    assert state["model.tied"] is state["model.dense.kernel"]  # tied, as torch.save writes tied weights
    assert state["model.half"].dtype == torch.bfloat16 and state["save_counter"].dtype == torch.int64
    assert state["model.count"].item() == 7 and state["model.empty"].shape == (0, 4)
    assert isinstance(state["/" + OBJECT_GRAPH_KEY], bytes)
    net = torch.nn.Linear(3, 2)
    net.load_state_dict({"weight": state["model.dense.kernel"].T, "bias": state["model.dense.bias"]})


def test_npz_holds_every_tensor_with_dtypes_named(tmp_path) -> None:
    model, _, prefix = model_and_checkpoint(tmp_path)
    export(prefix, tmp_path / "m.npz", "npz")
    with np.load(tmp_path / "m.npz") as z:
        np.testing.assert_array_equal(z["model.tied"], model.dense.kernel.numpy())
        meta = json.loads(z["gpuckpt.json"])
        assert json.loads(meta["gpuckpt.dtypes"])["model.half"] == "bfloat16"
        np.testing.assert_array_equal(z["model.half"].view(ml_dtypes.bfloat16), model.half.numpy())


def test_a_plain_torch_state_dict_with_tied_weights(tmp_path, capsys) -> None:
    embed = torch.arange(12, dtype=torch.bfloat16).reshape(4, 3)
    state = {"embed.weight": embed, "head.weight": embed, "head.bias": torch.ones(4), "step": 3,
             "opt": {"state": {0: {"exp_avg": torch.zeros(2)}}, "param_groups": [{"lr": 0.5}]}}
    torch.save(state, tmp_path / "plain.pt")
    import_file(tmp_path / "plain.pt", tmp_path / "ck", "torch")
    with gpuckpt.load_checkpoint(tmp_path / "ck") as reader:
        keys = set(reader.keys())
        assert "embed/weight/.ATTRIBUTES/VARIABLE_VALUE" in keys
        assert "head/weight/.ATTRIBUTES/VARIABLE_VALUE" not in keys
        assert reader.get_tensor("opt/param_groups/0/lr/.ATTRIBUTES/VARIABLE_VALUE") == 0.5
        assert reader.get_tensor("step/.ATTRIBUTES/VARIABLE_VALUE") == 3
        np.testing.assert_array_equal(reader.get_tensor("embed/weight/.ATTRIBUTES/VARIABLE_VALUE").astype(np.float32),
                                      embed.float().numpy())
    assert main(["inspect", "--graph", str(tmp_path / "ck")]) == 0
    assert "weight -> alias of (root).embed.weight" in capsys.readouterr().out
    # restores into objects shaped like the names, the tied variable through both paths
    shared = gpuckpt.Variable(np.zeros((4, 3), ml_dtypes.bfloat16))
    embed_m, head_m = gpuckpt.Module(), gpuckpt.Module()
    embed_m.weight = head_m.weight = shared
    head_m.bias = gpuckpt.Variable(np.zeros(4, np.float32))
    gpuckpt.Checkpoint(embed=embed_m, head=head_m).restore(str(tmp_path / "ck")).expect_partial()
    np.testing.assert_array_equal(shared.numpy().astype(np.float32), embed.float().numpy())


def test_a_safetensors_file_from_safetensors_itself(tmp_path) -> None:
    tensors = {"a.b": torch.randn(5, 2).to(torch.bfloat16), "c": torch.arange(6, dtype=torch.int32),
               "f8": torch.ones(3).to(torch.float8_e4m3fn)}
    safetensors_torch.save_file(tensors, str(tmp_path / "x.safetensors"))
    import_file(tmp_path / "x.safetensors", tmp_path / "ck", "safetensors")
    with gpuckpt.load_checkpoint(tmp_path / "ck") as reader:
        got = reader.get_tensor(name_to_key("a.b"))
        assert got.dtype == ml_dtypes.bfloat16
        np.testing.assert_array_equal(got.view(np.uint16), tensors["a.b"].view(torch.int16).numpy().view(np.uint16))
        np.testing.assert_array_equal(reader.get_tensor(name_to_key("c")), np.arange(6, dtype=np.int32))
        assert reader.get_tensor(name_to_key("f8")).dtype == ml_dtypes.float8_e4m3fn


@pytest.mark.parametrize("key", [
    "model/w/.ATTRIBUTES/VARIABLE_VALUE", "a..b/.ATTRIBUTES/VARIABLE_VALUE", "global_step", "/x", "//y",
    "dense/kernel", "w/.OPTIMIZER_SLOT/opt/m/.ATTRIBUTES/VARIABLE_VALUE", "/.ATTRIBUTES/VARIABLE_VALUE",
    "a//b/.ATTRIBUTES/VARIABLE_VALUE", "x/.ATTRIBUTES/OTHER", "_CHECKPOINTABLE_OBJECT_GRAPH",
    "a.S/.ATTRIBUTES/VARIABLE_VALUE",
])
def test_names_map_back_to_their_keys(key) -> None:
    assert name_to_key(key_to_name(key)) == key


def test_names_are_state_dict_style() -> None:
    assert key_to_name("model/layers/0/weight/.ATTRIBUTES/VARIABLE_VALUE") == "model.layers.0.weight"
    assert key_to_name("global_step") == "/global_step"


@pytest.mark.parametrize("fmt", ["safetensors", "npz", "torch"])
def test_export_streams_in_bounded_memory(tmp_path, monkeypatch, fmt) -> None:
    big = np.arange(12 << 20, dtype=np.float32)  # 48 MiB
    prefix = write_tensors(tmp_path / "ck", {"big": big, "small": np.ones(3, np.float32)})
    del big
    monkeypatch.setattr(source, "CHUNK_BYTES", 1 << 20)
    if fmt == "torch":
        export(prefix, tmp_path / "warm.pt", fmt)  # torch's own import-time allocations outside the measure
    tracemalloc.start()
    try:
        export(prefix, tmp_path / "out", fmt)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, peak
    if fmt == "safetensors":
        assert safetensors_torch.load_file(str(tmp_path / "out"))["/big"].numpy()[-1] == (12 << 20) - 1


def test_import_maps_instead_of_reading_whole(tmp_path) -> None:
    safetensors_torch.save_file({"big": torch.arange(12 << 20, dtype=torch.float32)}, str(tmp_path / "x.safetensors"))
    tracemalloc.start()
    try:
        import_file(tmp_path / "x.safetensors", tmp_path / "ck", "safetensors")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, peak
    assert gpuckpt.load_checkpoint(tmp_path / "ck").get_tensor(name_to_key("big"))[-1] == (12 << 20) - 1


def test_corrupt_or_unsupported_input_is_one_line_and_leaves_nothing(tmp_path, capsys) -> None:
    prefix = write_tensors(tmp_path / "ck", {"w": np.arange(64, dtype=np.float32), "q": np.zeros(2, np.complex128)})
    assert main(["convert", prefix, str(tmp_path / "o.safetensors"), "--to", "safetensors"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'q'" in err and "complex128" in err
    assert main(["convert", prefix, str(tmp_path / "o.safetensors"), "--to", "safetensors", "--filter", "w"]) == 0
    assert main(["convert", prefix, str(tmp_path / "o.safetensors"), "--to", "safetensors", "--filter", "w"]) == 2
    assert "--force" in capsys.readouterr().err
    data = next(tmp_path.glob("ck.data-*"))
    raw = bytearray(data.read_bytes())
    entry = gpuckpt.load_checkpoint(prefix).entry("w")
    raw[entry.offset + 10] ^= 4
    data.write_bytes(bytes(raw))
    for fmt in ("safetensors", "torch", "npz"):
        assert main(["convert", prefix, str(tmp_path / f"bad.{fmt}"), "--to", fmt, "--filter", "w"]) == 2
        err = capsys.readouterr().err
        assert "DataLossError" in err and "'w'" in err and "Traceback" not in err
        assert not list(tmp_path.glob(f"bad.{fmt}*"))
    (tmp_path / "junk.safetensors").write_bytes(b"\xff" * 8 + b"{}")
    assert main(["convert", str(tmp_path / "junk.safetensors"), str(tmp_path / "j"), "--from", "safetensors"]) == 2
    assert "header length" in capsys.readouterr().err
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    assert main(["convert", str(tmp_path / "junk.pt"), str(tmp_path / "j"), "--from", "torch"]) == 2
    assert "DataLossError" in capsys.readouterr().err and not list(tmp_path.glob("j.*"))


@pytest.mark.parametrize("fixture", ["dtypes", "scalars_and_empty", "nested_module", "sharded_slices"])
def test_tensorflow_fixtures_round_trip_through_torch_and_safetensors(tmp_path, fixture) -> None:
    from pathlib import Path

    prefix = str(Path(__file__).parent / "fixtures" / "tf" / fixture / "ckpt")
    export(prefix, tmp_path / "x.pt", "torch")
    import_file(tmp_path / "x.pt", tmp_path / "t", "torch")
    assert tensors_of(tmp_path / "t") == tensors_of(prefix)
    with gpuckpt.load_checkpoint(prefix) as reader:  # safetensors holds no complex128: leave it out
        dtypes_ = {k: reader.entry(k).dtype.name for k in reader.keys()}
    keep = {k for k, d in dtypes_.items() if d != "complex128"}
    export(prefix, tmp_path / "x.safetensors", "safetensors", match=keep.__contains__)
    import_file(tmp_path / "x.safetensors", tmp_path / "s", "safetensors")
    assert tensors_of(tmp_path / "s") == {k: v for k, v in tensors_of(prefix).items() if k in keep}


@pytest.mark.parametrize("fmt", ["safetensors", "torch"])
def test_a_one_shard_checkpoint_comes_back_byte_for_byte(tmp_path, fmt) -> None:
    _, _, prefix = model_and_checkpoint(tmp_path)
    export(prefix, tmp_path / "x", fmt)
    import_file(tmp_path / "x", tmp_path / "back", fmt)
    assert (tmp_path / "back.index").read_bytes() == open(prefix + ".index", "rb").read()
    assert (tmp_path / "back.data-00000-of-00001").read_bytes() == open(prefix + ".data-00000-of-00001", "rb").read()
