"""One adapter over Llama-layout decoder families: which configs we accept and how a target shape
becomes a consistent Hugging Face config.

Pruned shapes routinely break the rule hidden_size % num_attention_heads == 0 (Mistral NeMo already
does: 32 heads x 128 != 5120). transformers' LlamaConfig refuses such a config even when head_dim is
set, while MistralConfig accepts it and builds the same modules. A Llama model whose pruned shape
trips that check is therefore saved as the Mistral architecture (bias-free Llama blocks are
numerically identical to Mistral blocks with sliding_window=None), so plain transformers loads it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn
from transformers import AutoConfig, PretrainedConfig

from ablate.errors import ModelError, PruneError

if TYPE_CHECKING:  # the modelling classes cost seconds to import; validate and plan need configs only
    from transformers import PreTrainedModel

SUPPORTED_FAMILIES = ("llama", "mistral", "qwen2", "qwen3")
AXES = ("hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers")
# Per-layer lists some configs carry; depth pruning must keep them aligned with the kept layers.
PER_LAYER_KEYS = ("layer_types",)
# Keys a derived (pruned or converted) config must not inherit: a GGUF source marks itself quantized.
DROPPED_CONFIG_KEYS = ("transformers_version", "quantization_config", "_name_or_path")


def check_family(config: PretrainedConfig) -> None:
    """Refuse anything that is not a Llama-layout decoder, naming the family."""
    if config.model_type not in SUPPORTED_FAMILIES:
        raise ModelError(
            f"model family '{config.model_type}' is not supported (supported: {', '.join(SUPPORTED_FAMILIES)}); "
            "ablate prunes decoders with the Llama block layout"
        )


def head_dim(config: PretrainedConfig) -> int:
    hd = getattr(config, "head_dim", None)
    return int(hd) if hd else config.hidden_size // config.num_attention_heads


def shape_of(config: PretrainedConfig) -> dict[str, int]:
    """The prunable axes of a config plus the fixed ones a reader wants to see."""
    return {
        "num_hidden_layers": config.num_hidden_layers,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_attention_heads": config.num_attention_heads,
        "num_key_value_heads": config.num_key_value_heads,
        "head_dim": head_dim(config),
        "vocab_size": config.vocab_size,
    }


def check_target(config: PretrainedConfig, target: Mapping[str, int]) -> list[str]:
    """Problems with a target against a teacher config (empty list when it is applicable)."""
    problems: list[str] = []
    shape = shape_of(config)
    for axis, value in target.items():
        if axis not in AXES:
            problems.append(f"unknown axis '{axis}' (expected one of {', '.join(AXES)})")
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            problems.append(f"{axis} must be a positive integer (got {value!r})")
            continue
        if value > shape[axis]:
            problems.append(
                f"{axis}={value} is larger than the teacher's {shape[axis]} (a target can only shrink)"
            )
    heads = target.get("num_attention_heads")
    if isinstance(heads, int) and heads > 0 and heads % shape["num_key_value_heads"] != 0:
        problems.append(
            f"num_attention_heads={heads} is not a multiple of the {shape['num_key_value_heads']} KV heads "
            "(query heads are removed equally within each KV group)"
        )
    return problems


def pruned_config(
    config: PretrainedConfig,
    target: Mapping[str, int],
    kept_layers: Sequence[int] | None = None,
) -> PretrainedConfig:
    """A config for `config` trimmed to `target`; head_dim and KV heads are kept.

    kept_layers (indices into the original layers) aligns per-layer config lists after depth pruning;
    without it the first num_hidden_layers entries are kept, which is what planning needs.
    """
    check_family(config)
    problems = check_target(config, target)
    if problems:
        raise PruneError("; ".join(problems))
    data = config.to_dict()
    for key in DROPPED_CONFIG_KEYS:
        data.pop(key, None)
    data["head_dim"] = head_dim(config)
    data.update({k: int(v) for k, v in target.items()})
    layers = data["num_hidden_layers"]
    if kept_layers is None:
        kept_layers = list(range(layers))
    if len(kept_layers) != layers:
        raise PruneError(f"kept_layers has {len(kept_layers)} entries but num_hidden_layers is {layers}")
    for key in PER_LAYER_KEYS:
        if isinstance(data.get(key), list):
            data[key] = [data[key][i] for i in kept_layers]
    if isinstance(data.get("max_window_layers"), int):
        data["max_window_layers"] = min(data["max_window_layers"], layers)
    if data["model_type"] == "llama" and data["hidden_size"] % data["num_attention_heads"] != 0:
        data = llama_as_mistral(data)
    return config_from_dict(data)


def llama_as_mistral(data: dict) -> dict:
    """A Llama config dict rewritten as the equivalent Mistral config (same modules when bias-free)."""
    if data.get("attention_bias") or data.get("mlp_bias"):
        raise PruneError(
            "a Llama model with attention/MLP bias cannot be saved with hidden_size not divisible by "
            "num_attention_heads (transformers refuses that LlamaConfig); choose heads dividing hidden"
        )
    if data.get("pretraining_tp", 1) not in (1, None):
        raise PruneError("a Llama model with pretraining_tp > 1 cannot be rewritten as Mistral")
    data = dict(data)
    data.update(model_type="mistral", architectures=["MistralForCausalLM"], sliding_window=None)
    for key in ("attention_bias", "mlp_bias", "pretraining_tp"):
        data.pop(key, None)
    return data


def config_from_dict(data: Mapping) -> PretrainedConfig:
    data = dict(data)
    model_type = data.pop("model_type")
    return AutoConfig.for_model(model_type, **data)


def count_parameters(config: PretrainedConfig) -> int:
    """Exact parameter count of the real architecture, built on the meta device (no memory, no weights).

    Tied embeddings are counted once, as `model.parameters()` yields shared tensors once.
    """
    with torch.device("meta"):
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


# --- the module adapter: where the parts of a Llama-layout block live ---------------------------------

LAYER_PARTS = (
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
    "input_layernorm",
    "post_attention_layernorm",
)


def check_model(model: PreTrainedModel) -> None:
    """Refuse models whose family or module layout is not the Llama block layout we know how to trim."""
    check_family(model.config)
    base = getattr(model, "model", None)
    layers = getattr(base, "layers", None)
    if base is None or layers is None or not hasattr(base, "embed_tokens") or not hasattr(model, "lm_head"):
        raise ModelError(
            f"{type(model).__name__} does not have the Llama layout (model.layers, embed_tokens, lm_head)"
        )
    for i, layer in enumerate(layers):
        for part in LAYER_PARTS:
            if not _has_submodule(layer, part):
                raise ModelError(
                    f"{type(model).__name__} layer {i} has no '{part}'; not a Llama-layout block"
                )


def _has_submodule(module: nn.Module, path: str) -> bool:
    try:
        module.get_submodule(path)
    except AttributeError:
        return False
    return True


def decoder_layers(model: PreTrainedModel) -> nn.ModuleList:
    return model.model.layers


def embeddings_tied(model: PreTrainedModel) -> bool:
    """True when lm_head shares its weight with the input embedding."""
    return model.lm_head.weight is model.model.embed_tokens.weight or (
        model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    )


def rebuild_rotary(model: PreTrainedModel) -> None:
    """Recompute rotary-embedding buffers (inv_freq) that a meta-device build leaves empty."""
    for name, module in list(model.named_modules()):
        buffers = dict(module.named_buffers(recurse=False))
        if "inv_freq" not in buffers:
            continue
        device = next((p.device for p in model.parameters() if p.device.type != "meta"), torch.device("cpu"))
        fresh = type(module)(module.config) if hasattr(module, "config") else None
        if fresh is None:
            raise ModelError(f"cannot rebuild rotary embedding '{name}' ({type(module).__name__})")
        fresh.to(device)
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, fresh)


def meta_tensors(model: nn.Module) -> list[str]:
    """Names of parameters and buffers still on the meta device (must be empty for a usable model)."""
    named = list(model.named_parameters()) + list(model.named_buffers())
    return [n for n, t in named if t.device.type == "meta"]


@contextlib.contextmanager
def skip_layers(model: PreTrainedModel, indices: Sequence[int]) -> Iterator[None]:
    """Run the model as if the given decoder layers were not there (each passes its input through)."""
    layers = decoder_layers(model)
    patched = []
    try:
        for i in indices:
            layer = layers[i]
            layer.forward = _identity_forward
            patched.append(layer)
        yield
    finally:
        for layer in patched:
            del layer.forward


def _identity_forward(hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    return hidden_states
