"""Resolve model references: `builtin:NAME`, a local Hugging Face directory, or an HF id (cache only).

`load_config` never reads weights: planning uses it to count parameters on the meta device.
"""

from __future__ import annotations

import json
from pathlib import Path

from transformers import AutoConfig, MistralConfig, PretrainedConfig

from ablate.errors import ModelError
from ablate.models.arch import check_family

CONFIG_DIR = Path(__file__).with_name("configs")
BUILTINS = ("tiny-mistral", "smollm2-135m")


def tiny_mistral_config() -> MistralConfig:
    """Well under a million parameters; GQA and head_dim (24) decoupled from hidden/heads (64/4)."""
    return MistralConfig(
        vocab_size=260,  # 256 bytes + <s>, </s>, <unk>, <pad>
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=24,
        max_position_embeddings=1024,
        sliding_window=None,
        tie_word_embeddings=False,
        bos_token_id=256,
        eos_token_id=257,
        pad_token_id=259,
        architectures=["MistralForCausalLM"],
    )


def config_from_file(path: str | Path) -> PretrainedConfig:
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"config file '{path}' does not exist; point teacher.config at a config.json")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ModelError(f"config file '{path}' is not valid JSON: {exc}") from exc
    model_type = data.pop("model_type", None)
    if not model_type:
        raise ModelError(f"config file '{path}' has no model_type; it must be a Hugging Face config.json")
    try:
        config = AutoConfig.for_model(model_type, **data)
    except ValueError as exc:
        raise ModelError(f"config file '{path}': {exc}") from exc
    check_family(config)
    return config


def load_config(ref: str, config_path: str | Path | None = None) -> PretrainedConfig:
    """The architecture config of `ref` without reading any weights or touching the network.

    An explicit `config_path` wins (an HF id with no local weights is planned that way).
    """
    if config_path is not None:
        return config_from_file(config_path)
    if ref.startswith("builtin:"):
        name = ref.removeprefix("builtin:")
        if name == "tiny-mistral":
            return tiny_mistral_config()
        if name == "smollm2-135m":
            return config_from_file(CONFIG_DIR / "smollm2-135m.json")
        raise ModelError(f"unknown built-in model '{ref}' (built-ins: {', '.join('builtin:' + b for b in BUILTINS)})")
    path = Path(ref).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(f"'{ref}' is a directory without config.json; it must be a Hugging Face model directory")
        return config_from_file(path / "config.json")
    try:
        config = AutoConfig.from_pretrained(ref, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ModelError(
            f"model '{ref}' is neither a built-in, a local directory, nor an HF id in the local cache "
            "(no network here); download it first or set teacher.config to its config.json"
        ) from exc
    check_family(config)
    return config
