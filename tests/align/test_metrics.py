"""The held-out metrics against a hand computation: the answer's log-likelihood is the sum of the model's
log-probabilities of exactly the answer's tokens, each given everything before it (batched and padded)."""

from __future__ import annotations

import pytest
import torch

from ablate.align.metrics import answer_logprobs, encode, instruct_metrics, preference_metrics
from ablate.align.templates import CHATML_TEMPLATE, ChatTemplateError, apply, template_for
from ablate.models.registry import load_model


@pytest.fixture(scope="module")
def tiny():
    model, tokenizer = load_model("builtin:tiny-mistral")
    return model, apply(tokenizer, CHATML_TEMPLATE)


def _by_hand(model, tokenizer, prompt, answer, max_length=512) -> tuple[float, int]:
    ids, start = encode(tokenizer, prompt, answer, max_length)
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)
    return float(sum(logp[t - 1, ids[t]] for t in range(start, len(ids)))), len(ids) - start


def test_answer_logprobs_match_a_token_by_token_sum(tiny):
    model, tokenizer = tiny
    pairs = [
        ([{"role": "user", "content": "What is a list?"}], [{"role": "assistant", "content": "A sequence."}]),
        (
            [{"role": "user", "content": "Hi"}],
            [{"role": "assistant", "content": "Hello there, how are you?"}],
        ),
        ([{"role": "user", "content": "x" * 40}], [{"role": "assistant", "content": "y"}]),
    ]
    got = answer_logprobs(model, tokenizer, pairs, 512, batch_size=2)  # padded batches of unequal length
    for (prompt, answer), (value, n) in zip(pairs, got, strict=True):
        want, count = _by_hand(model, tokenizer, prompt, answer)
        assert n == count and n > 0
        assert value == pytest.approx(want, rel=1e-5)
    # the answer's tokens are exactly those after the generation prompt
    ids, start = encode(tokenizer, *pairs[0], 512)
    assert tokenizer.decode(ids[start:]) == "A sequence.<|im_end|>\n"


def test_metrics_from_the_log_likelihoods(tiny):
    model, tokenizer = tiny
    prompt = [{"role": "user", "content": "Say it"}]
    good, bad = [{"role": "assistant", "content": "ab"}], [{"role": "assistant", "content": "zq"}]
    (lg, ng), (lb, _) = answer_logprobs(model, tokenizer, [(prompt, good), (prompt, bad)], 512)
    prefs = preference_metrics(model, tokenizer, [{"prompt": prompt, "chosen": good, "rejected": bad}], 512)
    assert prefs["pref_margin"] == pytest.approx(lg - lb, rel=1e-6)
    assert prefs["pref_win_rate"] == float(lg > lb)
    assert instruct_metrics(model, tokenizer, [{"prompt": prompt, "completion": good}], 512)[
        "instruct_loss"
    ] == (pytest.approx(-lg / ng, rel=1e-6))


def test_a_tokenizer_without_a_template_needs_one_from_the_spec(tiny):
    _, tokenizer = load_model("builtin:tiny-mistral")
    with pytest.raises(ChatTemplateError, match="align.chat_template"):
        template_for(None, tokenizer)
    assert template_for("chatml", tokenizer) == CHATML_TEMPLATE
