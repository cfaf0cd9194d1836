"""Which FP8 rows a device measures (a fake capability check, no GPU needed) and torchao's quantisation."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from transformers import AutoModelForCausalLM

from ablate.build import fp8
from ablate.build import throughput as tp
from ablate.models.registry import tiny_mistral_config


def has_torchao() -> str | None:
    return "0.18.0"


def no_torchao() -> str | None:
    return None


def test_fp8_selection():
    assert "CUDA" in fp8.fp8_unavailable("cpu", torchao=has_torchao)
    hopper, ampere = (lambda d: (9, 0)), (lambda d: (8, 0))
    assert fp8.fp8_unavailable("cuda", hopper, has_torchao) == ""
    assert fp8.fp8_unavailable("cuda:1", lambda d: (8, 9), has_torchao) == ""  # Ada
    assert "8.9" in fp8.fp8_unavailable("cuda", ampere, has_torchao)
    assert "8.0" in fp8.fp8_unavailable("cuda", ampere, has_torchao)
    assert "torchao" in fp8.fp8_unavailable("cuda", hopper, no_torchao)
    assert "none is available" in fp8.fp8_unavailable("cuda", lambda d: None, has_torchao)
    # the throughput table's view: CPU measures float32 only; a GPU's FP8 rows follow the check above
    assert tp.skip_reason("fp32", "cpu") == "" and "float32 only" in tp.skip_reason("fp8", "cpu")
    assert tp.skip_reason("bf16", "cuda", ampere) == "" and "8.9" in tp.skip_reason("fp8-wo", "cuda", ampere)


def test_only_decoder_block_linears_are_selected():
    model = AutoModelForCausalLM.from_config(tiny_mistral_config())
    chosen = [name for name, m in model.named_modules() if fp8.is_block_linear(m, name)]
    assert len(chosen) == 4 * 7 and not any("lm_head" in n or "embed" in n for n in chosen)


@pytest.mark.skipif(importlib.util.find_spec("torchao") is None, reason="torchao is not installed")
def test_weight_only_fp8_logits_close_to_bf16():
    """Weight-only FP8 runs on a CPU (W8A8 needs FP8 tensor cores): logits within 8% relative L2 of BF16."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_mistral_config()).to(torch.bfloat16).eval()
    ids = torch.randint(0, 256, (2, 12))
    with torch.inference_mode():
        ref = model(ids).logits.float()
        assert fp8.quantize(model, "fp8-wo") == 28
        out = model(ids).logits.float()
    assert type(model.model.layers[0].mlp.up_proj.weight).__name__ == "Float8Tensor"
    assert type(model.lm_head.weight) is torch.nn.Parameter and model.lm_head.weight.dtype == torch.bfloat16
    assert ((out - ref).norm() / ref.norm()).item() < 0.08
