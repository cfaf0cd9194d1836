"""Shared fixtures for the distillation tests: tiny-mistral models, a slicing pruner, byte-level text."""

from __future__ import annotations

from pydoc_data.topics import topics

import pytest
import torch
from transformers import MistralForCausalLM

from ablate.distill.config import TrainConfig
from ablate.models.registry import tiny_mistral_config

SEQ = 32  # the training tests' sequence length (text_batches(SEQ, ...))


@pytest.fixture(autouse=True)
def _one_thread():
    """Two cores are shared with other test runs: one thread each, restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_model(seed: int = 0, **overrides) -> MistralForCausalLM:
    config = tiny_mistral_config()
    for key, value in overrides.items():
        setattr(config, key, value)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return MistralForCausalLM(config)


def slice_prune(
    model: MistralForCausalLM, hidden: int | None = None, ffn: int | None = None
) -> MistralForCausalLM:
    """A width-pruned child keeping the first channels (stands in for importance-ranked pruning)."""
    hidden = hidden or model.config.hidden_size
    ffn = ffn or model.config.intermediate_size
    child = tiny_model(hidden_size=hidden, intermediate_size=ffn)
    state = {}
    for key, value in model.state_dict().items():
        value = value.clone()
        if "gate_proj" in key or "up_proj" in key:
            value = value[:ffn]
        if "down_proj" in key:
            value = value[:, :ffn]
        if any(name in key for name in ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj", "lm_head")):
            value = value[..., :hidden]
        if "o_proj" in key or "down_proj" in key or "norm" in key:
            value = value[:hidden]
        if "embed_tokens" in key:
            value = value[:, :hidden]
        state[key] = value
    child.load_state_dict(state)
    return child


def text_batches(seq_len: int, sequences: int, offset: int = 0) -> torch.Tensor:
    """Byte-level token ids (tiny-mistral's tokenizer is bytes) of English text, packed [n, seq_len]."""
    text = "\n".join(topics[k] for k in sorted(topics)).encode()
    ids = torch.tensor(list(text[offset * seq_len : (offset + sequences) * seq_len]), dtype=torch.long)
    return ids.view(sequences, seq_len)


def small_config(steps: int, **overrides) -> TrainConfig:
    """A kld run of `steps` optimizer steps of 8 x SEQ tokens (micro-batch 4, warm-up 2, a checkpoint every
    4 steps): the training tests' base, each overriding what it tests."""
    base = dict(
        loss="kld", tokens=steps * 8 * SEQ, global_batch=8, micro_batch=4, seq_len=SEQ, lr=2e-3, min_lr=1e-4,
        warmup_steps=2, checkpoint_every=4, seed=0,
    )  # fmt: skip
    return TrainConfig(**{**base, **overrides})
