"""Held-out evaluation metrics against hand computations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ablate.errors import ModelError
from ablate.evaluate import evaluate, kl_sum
from ablate.models.registry import load_model, tiny_mistral_config
from tests.prune.tiny import tiny_model, token_batch


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


IDS = token_batch(5, 12, seed=11)


def test_lm_loss_and_perplexity_match_cross_entropy():
    model = tiny_model("mistral")
    metrics = evaluate(model, IDS, batch_size=2)
    with torch.inference_mode():
        logits = model(input_ids=IDS).logits
    expected = F.cross_entropy(logits[:, :-1].reshape(-1, 260), IDS[:, 1:].reshape(-1)).item()
    assert metrics["lm_loss"] == pytest.approx(expected, rel=1e-5)
    assert metrics["perplexity"] == pytest.approx(math.exp(expected), rel=1e-5)
    assert metrics["tokens"] == 5 * 11 and metrics["sequences"] == 5
    assert "kl_to_teacher" not in metrics


def test_the_teacher_itself_has_zero_kl_and_full_agreement():
    model = tiny_model("mistral")
    metrics = evaluate(model, list(IDS.split(2)), teacher=model)
    assert metrics["kl_to_teacher"] == pytest.approx(0.0, abs=1e-6)
    assert metrics["top1_agreement"] == 1.0
    assert metrics["teacher_lm_loss"] == pytest.approx(metrics["lm_loss"], rel=1e-6)  # report's teacher


def test_kl_and_agreement_against_a_hand_computation():
    student, teacher = tiny_model("mistral", seed=0), tiny_model("mistral", seed=1)
    metrics = evaluate(student, IDS, teacher=teacher, batch_size=3)
    with torch.inference_mode():
        s, t = student(input_ids=IDS).logits.double(), teacher(input_ids=IDS).logits.double()
    p = t.softmax(-1)
    kl = (p * (p.log() - s.log_softmax(-1))).sum(-1).mean().item()
    assert metrics["kl_to_teacher"] == pytest.approx(kl, rel=1e-4)
    assert metrics["top1_agreement"] == pytest.approx((s.argmax(-1) == t.argmax(-1)).double().mean().item())
    assert 0 < metrics["top1_agreement"] < 1


def test_kl_is_computed_in_float32_from_bf16_logits():
    t = torch.tensor([[[4.0, 0.0, -4.0]]], dtype=torch.bfloat16)
    s = torch.tensor([[[0.0, 0.0, 0.0]]], dtype=torch.bfloat16)
    p = torch.tensor([4.0, 0.0, -4.0]).softmax(-1)
    assert kl_sum(t, s).dtype == torch.float64
    assert kl_sum(t, s).item() == pytest.approx((p * (p.log() + math.log(3))).sum().item(), rel=1e-5)


def test_teacher_with_another_vocabulary_is_refused():
    model, _ = load_model("builtin:tiny-mistral")
    other = tiny_model("mistral", vocab_size=300)
    assert other.config.vocab_size != tiny_mistral_config().vocab_size
    with pytest.raises(ModelError, match="vocabulary"):
        evaluate(model, IDS, teacher=other)
