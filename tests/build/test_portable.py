"""A built model folder reads the same under every transformers the package allows (>= 4.48): the RoPE
base and dtype in the keys 4.x reads too, a tokenizer class 4.x can import, the model's inputs named, no
loading flags. The fast tests check the files an export writes; the slow one loads the folder in every
other interpreter named by $ABLATE_COMPAT_PYTHONS (or /tmp/tf448, /tmp/tf457 when they exist; see
bench/transformers_compat.py), and is skipped where there is none."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from ablate.build.portable import LOADING_FLAGS, clean_tokenizer_config, portable_config

sys.path.insert(0, str(Path(__file__).parents[2] / "bench"))
import transformers_compat  # noqa: E402


def test_rope_base_and_dtype_are_written_where_4x_reads_them():
    new = {"rope_parameters": {"rope_theta": 1e6, "rope_type": "default"}, "dtype": "bfloat16"}
    out = portable_config(new)
    assert out["rope_theta"] == 1e6 and out["torch_dtype"] == "bfloat16" and "rope_scaling" not in out
    assert out["rope_parameters"] == new["rope_parameters"]  # transformers 5 still reads its own key
    scaled = {"rope_parameters": {"rope_theta": 5e5, "rope_type": "llama3", "factor": 8.0}}
    assert portable_config(scaled)["rope_scaling"] == {"rope_type": "llama3", "factor": 8.0}
    legacy = {"rope_theta": 1e4, "rope_scaling": None, "torch_dtype": "float32"}
    assert portable_config(legacy) == legacy


def test_tokenizer_config_loses_its_loading_flags():
    saved = {
        "tokenizer_class": "TokenizersBackend",
        "is_local": True,
        "local_files_only": True,
        "eos_token": "</s>",
    }
    out = clean_tokenizer_config(saved, chat_template="{{ messages }}")
    assert not set(out) & set(LOADING_FLAGS)
    assert out["tokenizer_class"] == "PreTrainedTokenizerFast" and out["eos_token"] == "</s>"
    assert out["model_input_names"] == ["input_ids", "attention_mask"]
    assert out["chat_template"] == "{{ messages }}"


def test_an_exported_folder_is_portable(tmp_path):
    model_dir = transformers_compat.export("builtin:tiny-mistral", tmp_path)
    config = json.loads((model_dir / "config.json").read_text())
    tokenizer = json.loads((model_dir / "tokenizer_config.json").read_text())
    assert config["rope_theta"] == (config.get("rope_parameters") or config)["rope_theta"]
    assert not set(tokenizer) & set(LOADING_FLAGS)
    assert tokenizer["tokenizer_class"] != "TokenizersBackend"
    row = transformers_compat.load_in(sys.executable, model_dir)  # plain transformers, no ablate
    assert "error" not in row and row["ablate_imported"] is False and len(row["text"]) > 0


def _other_pythons() -> list[str]:
    named = [p for p in os.environ.get("ABLATE_COMPAT_PYTHONS", "").split(os.pathsep) if p]
    return named or [p for p in ("/tmp/tf448/bin/python", "/tmp/tf457/bin/python") if Path(p).is_file()]


@pytest.mark.slow
@pytest.mark.skipif(
    not _other_pythons(), reason="no interpreter with another transformers (see the docstring)"
)
def test_the_lowest_and_highest_transformers_load_the_same_model(tmp_path):
    result = transformers_compat.compare("builtin:tiny-mistral", _other_pythons(), tmp_path)
    assert result["same"], json.dumps(result["rows"], indent=1)
    assert len({row["transformers"] for row in result["rows"]}) == len(result["rows"])
