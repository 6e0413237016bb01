"""The issue's transformers cases: a smaller GPT-2, a Llama, a compiled model and a meta-device model."""

from __future__ import annotations

from pathlib import Path

import pytest

import gpuckpt

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def gpt2(layers: int) -> "transformers.GPT2LMHeadModel":
    torch.manual_seed(layers)
    config = transformers.GPT2Config(vocab_size=32, n_positions=8, n_embd=16, n_layer=layers, n_head=2,
                                     bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(config)


def test_a_two_layer_checkpoint_into_a_one_layer_model_names_h1(tmp_path: Path) -> None:
    path = gpuckpt.Checkpoint(model=gpt2(2)).write(tmp_path / "c")
    with pytest.raises(gpuckpt.UnmatchedStateError) as raised:
        gpuckpt.Checkpoint(model=gpt2(1)).read(path)
    unexpected = {d.path for d in raised.value.unexpected}
    assert "transformer.h.1.attn.c_attn.weight" in unexpected and not raised.value.missing
    assert all(p.startswith("transformer.h.1.") for p in unexpected)
    assert "model/transformer/h/1/attn/c_attn/weight/.ATTRIBUTES/VARIABLE_VALUE" in str(raised.value)


def test_a_gpt2_checkpoint_into_a_llama_lists_both_sides(tmp_path: Path) -> None:
    path = gpuckpt.Checkpoint(model=gpt2(1)).write(tmp_path / "c")
    llama = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=8))
    with pytest.raises(gpuckpt.UnmatchedStateError, match=r"(?s)Missing key\(s\).*model.embed_tokens.weight.*"
                                                          r"Unexpected key\(s\).*transformer.wpe.weight"):
        gpuckpt.Checkpoint(model=llama).read(path)


def test_a_compiled_gpt2_checkpoint_restores_into_the_plain_model(tmp_path: Path) -> None:
    source = gpt2(1)
    path = gpuckpt.Checkpoint(model=torch.compile(source)).write(tmp_path / "c")
    target = gpt2(1)
    torch.nn.init.zeros_(target.transformer.wpe.weight)
    gpuckpt.Checkpoint(model=target).read(path).assert_consumed()
    assert torch.equal(target.transformer.wpe.weight, source.transformer.wpe.weight)


def test_a_meta_device_gpt2_restores_after_to_empty_with_its_tie(tmp_path: Path) -> None:
    source = gpt2(1)
    assert source.lm_head.weight is source.transformer.wte.weight
    path = gpuckpt.Checkpoint(model=source).write(tmp_path / "c")
    config = source.config
    with torch.device("meta"):
        target = transformers.GPT2LMHeadModel(config)
    target.to_empty(device="cpu")
    gpuckpt.Checkpoint(model=target).read(path).assert_consumed()
    assert target.lm_head.weight is target.transformer.wte.weight
    for name, tensor in source.state_dict().items():
        assert torch.equal(target.state_dict()[name], tensor), name
