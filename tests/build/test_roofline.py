"""The bandwidth roofline: device bandwidths by name and bytes per decode step, against hand arithmetic."""

from __future__ import annotations

import pytest
from transformers import AutoModelForCausalLM, MistralConfig

from ablate.build import roofline as rl
from ablate.models.registry import tiny_mistral_config

# MN-Minitron-8B: hidden 4096, 40 layers, 32 heads, 8 kv heads, head_dim 128, FFN 11520, vocab 131072
MINITRON = rl.Shape(hidden=4096, layers=40, heads=32, kv_heads=8, head_dim=128, ffn=11520, vocab=131072)


def test_bandwidth_by_device_name():
    assert rl.bandwidth("NVIDIA H200") == 4.8e12
    assert rl.bandwidth("NVIDIA H100 80GB HBM3") == 3.35e12
    assert rl.bandwidth("NVIDIA H100 PCIe") == 2.0e12
    assert rl.bandwidth("NVIDIA A100-SXM4-80GB") == 2.0e12
    assert rl.bandwidth("cpu") is None and rl.bandwidth("NVIDIA GeForce RTX 4090") is None


def test_minitron_8b_bf16_batch_1_against_hand_arithmetic():
    # block linears: 40 x (4096*128*(32+32+8+8) + 3*4096*11520) = 7,340,032,000 parameters
    assert MINITRON.block_linear_params() == 7_340_032_000
    # + 81 norms of 4096 + lm_head 131072*4096, all 2 bytes: 15,754,469,376 bytes of weights per step
    assert rl.weight_bytes_per_step(MINITRON, "bf16") == 15_754_469_376
    # KV: 2 (k, v) * 40 layers * 8 heads * 128 * 2 bytes = 163,840 per token, mean context 512 + 127/2
    assert rl.kv_bytes_per_step(MINITRON, 1, 512, 128, "bf16") == 94_289_920
    tpot = rl.roofline_tpot(MINITRON, "bf16", 1, 512, 128, "NVIDIA H200")
    assert tpot == pytest.approx(15_848_759_296 / 4.8e12) and tpot == pytest.approx(3.3018e-3, rel=1e-4)


def test_fp8_halves_the_block_linears_only():
    # 1 byte per block-linear weight + a float32 scale per output row (40 * 37,376 rows), lm_head/norms BF16
    assert rl.weight_bytes_per_step(MINITRON, "fp8") == 7_340_032_000 + 4 * 1_495_040 + 1_074_405_376
    assert rl.weight_bytes_per_step(MINITRON, "fp8-wo") == rl.weight_bytes_per_step(MINITRON, "fp8")
    bf16 = rl.roofline_tpot(MINITRON, "bf16", 1, 512, 128, "NVIDIA H200")
    fp8 = rl.roofline_tpot(MINITRON, "fp8", 1, 512, 128, "NVIDIA H200")
    assert bf16 / fp8 == pytest.approx(1.861, abs=1e-3)  # the best FP8 can do at batch 1
    assert rl.roofline_tpot(MINITRON, "bf16", 1, 512, 128, "cpu") is None
    with pytest.raises(ValueError, match="int4"):
        rl.weight_bytes_per_step(MINITRON, "int4")


def test_shape_counts_every_parameter_of_a_real_model():
    for config in (tiny_mistral_config(), MistralConfig(vocab_size=300, hidden_size=32, intermediate_size=48,
                   num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=True)):  # fmt: skip
        model = AutoModelForCausalLM.from_config(config)
        shape = rl.Shape.of(config)
        embedding = 0 if shape.tied else shape.vocab * shape.hidden  # read a few rows per step, not counted
        assert sum(p.numel() for p in model.parameters()) == (
            shape.block_linear_params() + shape.other_params_read() + embedding
        )
