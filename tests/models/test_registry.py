"""Model references: built-ins, local directories, HF ids (offline), and every way they can be wrong."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoTokenizer, GPT2Config

from ablate.errors import ModelError
from ablate.models.arch import count_parameters, head_dim
from ablate.models.registry import load_config, load_model, load_tokenizer, tiny_mistral_config


def test_tiny_mistral_is_small_gqa_decoupled_and_deterministic():
    config = tiny_mistral_config()
    assert config.num_key_value_heads < config.num_attention_heads
    assert head_dim(config) * config.num_attention_heads != config.hidden_size
    state = torch.random.get_rng_state()
    a, tok = load_model("builtin:tiny-mistral")
    assert torch.equal(torch.random.get_rng_state(), state)  # the fixed seed does not leak
    b, _ = load_model("builtin:tiny-mistral")
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), name
    params = sum(p.numel() for p in a.parameters())
    assert params < 1_000_000 and params == count_parameters(config)
    assert not a.training and a.dtype == torch.float32


def test_tiny_tokenizer_is_bytes_plus_specials(tmp_path):
    tok = load_tokenizer("builtin:tiny-mistral")
    text = "Größe → 🙂\n\tend"
    ids = tok(text, add_special_tokens=False).input_ids
    assert ids == list(text.encode("utf-8"))
    assert tok.decode(ids) == text
    assert (tok.bos_token_id, tok.eos_token_id, tok.unk_token_id, tok.pad_token_id) == (256, 257, 258, 259)
    assert len(tok) == tiny_mistral_config().vocab_size
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert again(text, add_special_tokens=False).input_ids == ids and again.eos_token_id == 257


@pytest.fixture
def saved_tiny(tmp_path):
    model, tok = load_model("builtin:tiny-mistral")
    model.save_pretrained(tmp_path / "tiny")
    tok.save_pretrained(tmp_path / "tiny")
    return model, tmp_path / "tiny"


def test_local_directory_round_trip(saved_tiny):
    original, path = saved_tiny
    model, tok = load_model(str(path))
    ids = torch.tensor([[72, 105, 33, 10]])
    with torch.inference_mode():
        assert torch.equal(model(ids).logits, original(ids).logits)
    assert tok.eos_token_id == 257
    assert load_config(str(path)).hidden_size == 64
    bf16, _ = load_model(str(path), dtype=torch.bfloat16)
    assert bf16.dtype == torch.bfloat16


def test_corrupt_safetensors_is_a_clear_error(saved_tiny):
    _, path = saved_tiny
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:300])
    with pytest.raises(ModelError, match="corrupt"):
        load_model(str(path))


def test_directory_without_tokenizer(saved_tiny):
    _, path = saved_tiny
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (path / name).unlink()
    with pytest.raises(ModelError, match="tokenizer"):
        load_model(str(path))


def test_unknown_family_is_refused_by_name(tmp_path):
    (tmp_path / "gpt").mkdir()
    GPT2Config(n_layer=1, n_embd=8, n_head=2).save_pretrained(tmp_path / "gpt")
    with pytest.raises(ModelError, match="family 'gpt2' is not supported"):
        load_model(str(tmp_path / "gpt"))


def test_missing_models(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match="local cache"):
        load_model("nobody-here/no-such-model-xyz")
    with pytest.raises(ModelError, match="without config.json"):
        load_model(str(tmp_path))
    with pytest.raises(ModelError, match="unknown built-in model"):
        load_model("builtin:gpt-5")


def test_smollm2_config_file_matches_the_design():
    config = load_config("builtin:smollm2-135m")
    assert (config.num_hidden_layers, config.hidden_size, config.intermediate_size) == (30, 576, 1536)
    assert (config.num_attention_heads, config.num_key_value_heads, head_dim(config)) == (9, 3, 64)
    assert config.tie_word_embeddings and count_parameters(config) == 134_515_008
    assert json.loads(json.dumps(config.to_dict()))["model_type"] == "llama"
