"""Tiny Llama-layout models of every supported family, with weights large enough that bookkeeping
mistakes change the logits visibly (GQA 6 q / 2 kv heads, head_dim 12 decoupled from hidden 48 / 6)."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config

FAMILIES = ("llama", "mistral", "qwen2", "qwen3")
CONFIGS = {"llama": LlamaConfig, "mistral": MistralConfig, "qwen2": Qwen2Config, "qwen3": Qwen3Config}
# (family, tied embeddings): every family, and both tied and untied embeddings among them.
VARIANTS = [("llama", True), ("mistral", False), ("qwen2", True), ("qwen3", False)]


def tiny_config(family: str, tied: bool = False, layers: int = 4, **overrides):
    options = dict(
        vocab_size=260,
        hidden_size=48,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=6,
        num_key_value_heads=2,
        head_dim=12,
        max_position_embeddings=128,
        tie_word_embeddings=tied,
        bos_token_id=256,
        eos_token_id=257,
        pad_token_id=259,
        architectures=[CONFIGS[family].__name__.replace("Config", "ForCausalLM")],
    )
    if family == "mistral":
        options["sliding_window"] = None
    options.update(overrides)
    return CONFIGS[family](**options)


def tiny_model(family: str, tied: bool = False, seed: int = 0, layers: int = 4, **overrides):
    """A random model whose weights (norms and biases included) are all far from their init values."""
    config = tiny_config(family, tied, layers, **overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name.endswith("norm.weight"):
                    param.copy_(1 + 0.3 * torch.randn_like(param))
                elif name.endswith("bias"):
                    param.copy_(0.3 * torch.randn_like(param))
                else:
                    param.copy_(0.2 * torch.randn_like(param))
    return model.eval()


def token_batch(n: int = 4, seq: int = 24, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 256, (n, seq), generator=torch.Generator().manual_seed(seed))


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(input_ids=ids, use_cache=False).logits.float()
