"""The architecture adapter: target checks, pruned configs that transformers accepts, meta-device builds."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from ablate.errors import ModelError, PruneError
from ablate.models.arch import (
    check_model,
    check_target,
    count_parameters,
    llama_as_mistral,
    meta_tensors,
    pruned_config,
    rebuild_rotary,
    shape_of,
)
from ablate.models.registry import load_config, tiny_mistral_config


def test_check_target_names_every_problem():
    config = tiny_mistral_config()
    assert check_target(config, {"hidden_size": 48, "num_attention_heads": 2}) == []
    problems = check_target(config, {"hidden_size": 65, "num_attention_heads": 3, "depth": 2})
    assert any("hidden_size=65 is larger" in p for p in problems)
    assert any("not a multiple of the 2 KV heads" in p for p in problems)
    assert any("unknown axis 'depth'" in p for p in problems)


def test_smollm2_width_target_becomes_a_mistral_config_transformers_accepts():
    teacher = load_config("builtin:smollm2-135m")
    teacher.quantization_config = {"quant_method": "gguf"}  # what a GGUF-loaded config carries
    config = pruned_config(teacher, {"hidden_size": 448, "intermediate_size": 1152})
    assert config.model_type == "mistral" and config.sliding_window is None
    assert (config.hidden_size, config.num_attention_heads, config.head_dim) == (448, 9, 64)
    assert config.tie_word_embeddings and not hasattr(config, "quantization_config")
    assert count_parameters(config) < count_parameters(teacher)
    # a shape that keeps divisibility stays Llama
    assert pruned_config(teacher, {"intermediate_size": 1152}).model_type == "llama"


def test_llama_with_bias_cannot_be_rewritten():
    with pytest.raises(PruneError, match="bias"):
        llama_as_mistral({"model_type": "llama", "attention_bias": True})


def test_depth_pruning_keeps_per_layer_lists_aligned():
    from transformers import Qwen2Config

    teacher = Qwen2Config(
        hidden_size=48,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=6,
        num_key_value_heads=2,
        vocab_size=100,
        layer_types=["full_attention", "sliding_attention", "full_attention", "sliding_attention"],
        use_sliding_window=True,
        sliding_window=16,
        max_window_layers=4,
    )
    config = pruned_config(teacher, {"num_hidden_layers": 2}, kept_layers=[1, 2])
    assert config.layer_types == ["sliding_attention", "full_attention"]
    assert config.max_window_layers == 2
    with pytest.raises(PruneError, match="kept_layers"):
        pruned_config(teacher, {"num_hidden_layers": 2}, kept_layers=[0, 1, 2])


def test_meta_build_needs_its_rotary_buffers_rebuilt():
    config = tiny_mistral_config()
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    real = {k: torch.randn(v.shape) for k, v in model.state_dict().items()}
    model.load_state_dict(real, assign=True)
    assert any("inv_freq" in name for name in meta_tensors(model))
    rebuild_rotary(model)
    assert meta_tensors(model) == []
    expected = 1.0 / (10000.0 ** (torch.arange(0, 24, 2, dtype=torch.float) / 24))
    assert torch.allclose(model.model.rotary_emb.inv_freq, expected)


def test_check_model_refuses_foreign_layouts():
    config = LlamaConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, vocab_size=50
    )
    model = AutoModelForCausalLM.from_config(config)
    check_model(model)
    del model.model.layers[0].mlp.gate_proj
    with pytest.raises(ModelError, match="mlp.gate_proj"):
        check_model(model)
    assert shape_of(config)["head_dim"] == 8
