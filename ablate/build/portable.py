"""A built model folder that loads the same under every transformers the package allows (>= 4.48).

transformers 5 writes files older readers misread without a word: the RoPE base moved into
`rope_parameters` (4.x reads no `rope_theta` and falls back to its default, 10000, so a 1e5/1e6 model
silently computes other logits), the dtype is `dtype` (4.x: `torch_dtype`), the tokenizer class is
`TokenizersBackend` (4.x cannot import it) and the chat template lives in chat_template.jinja (4.48 reads
only tokenizer_config.json). It also records how the tokenizer was loaded (`is_local`,
`local_files_only`), which is no property of the model, and 4.x's fast tokenizer returns token_type_ids
that `generate` refuses unless the config names the model's inputs. These helpers rewrite both JSON files so each
version reads the same model: the legacy keys next to the new ones (transformers 5 reads either), the
loading flags gone. tests/build/test_portable.py checks the files; bench/transformers_compat.py loads a
build under the lowest and the highest allowed transformers and compares logits and generated text.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

LOADING_FLAGS = (
    "is_local",
    "local_files_only",
    "cache_dir",
    "force_download",
    "proxies",
    "revision",
    "subfolder",
    "token",
    "trust_remote_code",
    "_commit_hash",
)
"""tokenizer_config.json keys that describe one `from_pretrained` call, not the tokenizer."""

NEW_TOKENIZER_CLASSES = {"TokenizersBackend": "PreTrainedTokenizerFast"}
"""transformers 5 class names -> the name every version since 4.x resolves to the same fast tokenizer."""


def _read(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def _write(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def portable_config(config: dict[str, Any]) -> dict[str, Any]:
    """config.json with the legacy keys transformers 4.x reads next to transformers 5's."""
    out = dict(config)
    rope = out.get("rope_parameters")
    if isinstance(rope, dict) and "rope_theta" in rope and "rope_theta" not in out:
        out["rope_theta"] = rope["rope_theta"]
        extra = {k: v for k, v in rope.items() if k != "rope_theta"}
        if extra.get("rope_type", "default") != "default" and "rope_scaling" not in out:
            out["rope_scaling"] = extra  # YaRN, llama3, linear ...: 4.x reads them from rope_scaling
    if "dtype" in out and "torch_dtype" not in out:
        out["torch_dtype"] = out["dtype"]
    return out


def clean_tokenizer_config(config: dict[str, Any], chat_template: str | None = None) -> dict[str, Any]:
    """tokenizer_config.json without loading flags, with a class name and chat template every version reads."""
    out = {k: v for k, v in config.items() if k not in LOADING_FLAGS}
    cls = out.get("tokenizer_class")
    if cls in NEW_TOKENIZER_CLASSES:
        out["tokenizer_class"] = NEW_TOKENIZER_CLASSES[cls]
    # a causal LM takes no token_type_ids; 4.x's fast tokenizer returns them unless told, and generate()
    # then refuses the inputs (the card's usage example would fail)
    out.setdefault("model_input_names", ["input_ids", "attention_mask"])
    if chat_template and "chat_template" not in out:
        out["chat_template"] = chat_template
    return out


def make_portable(folder: Path) -> None:
    """Rewrite config.json and tokenizer_config.json of a saved model folder in place (those present)."""
    config = folder / "config.json"
    if config.is_file():
        _write(config, portable_config(_read(config)))
    tokenizer = folder / "tokenizer_config.json"
    if tokenizer.is_file():
        template = folder / "chat_template.jinja"
        text = template.read_text() if template.is_file() else None
        _write(tokenizer, clean_tokenizer_config(_read(tokenizer), text))


__all__ = ["LOADING_FLAGS", "clean_tokenizer_config", "make_portable", "portable_config"]
