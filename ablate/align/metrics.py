"""Held-out metrics of an alignment stage's model: what each stage buys, measured the same way before and
after it on the records no stage trained on.

- `instruct_loss`: the mean negative log-likelihood per token of the assistant's answers to held-out
  instructions, given the chat-formatted prompt (the loss SFT lowers, on unseen records);
- `pref_margin`: the mean of log p(chosen | prompt) - log p(rejected | prompt) over held-out preference
  pairs (summed over each answer's tokens, as DPO's implicit reward is, without its reference term), and
  `pref_win_rate`: the share of those pairs where the chosen answer is the more likely one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

INSTRUCT_METRICS = ("instruct_loss",)
PREFERENCE_METRICS = ("pref_margin", "pref_win_rate")


def encode(
    tokenizer: Any, prompt: list[dict], completion: list[dict], max_length: int
) -> tuple[list[int], int]:
    """Token ids of the chat-formatted prompt and answer (cut to max_length) and where the answer starts."""
    prompt_text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    full_text = tokenizer.apply_chat_template(prompt + completion, tokenize=False)
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    if full_text.startswith(prompt_text):
        answer_ids = tokenizer(full_text[len(prompt_text) :], add_special_tokens=False)["input_ids"]
    else:  # a template that renders the prompt differently once an answer follows
        full_ids = tokenizer(full_text, add_special_tokens=False)["input_ids"]
        answer_ids = full_ids[len(prompt_ids) :]
    ids = (prompt_ids + answer_ids)[:max_length]
    return ids, min(len(prompt_ids), len(ids))


@torch.no_grad()
def answer_logprobs(
    model: Any,
    tokenizer: Any,
    pairs: Sequence[tuple[list[dict], list[dict]]],
    max_length: int,
    batch_size: int = 8,
) -> list[tuple[float, int]]:
    """(sum of log-probabilities, token count) of each answer given its prompt."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out: list[tuple[float, int]] = []
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    for start in range(0, len(pairs), batch_size):
        encoded = [encode(tokenizer, p, c, max_length) for p, c in pairs[start : start + batch_size]]
        width = max(len(ids) for ids, _ in encoded)
        ids = torch.full((len(encoded), width), pad, dtype=torch.long)
        mask = torch.zeros((len(encoded), width), dtype=torch.long)
        for i, (row, _) in enumerate(encoded):
            ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
        logp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:, None].to(device))[..., 0]
        for i, (row, answer_at) in enumerate(encoded):
            # position t predicts token t+1: the answer's tokens answer_at..len-1 are predicted at answer_at-1..
            span = logp[i, max(answer_at - 1, 0) : len(row) - 1]
            out.append((float(span.sum()), int(span.numel())))
    if was_training:
        model.train()
    return out


def instruct_metrics(model: Any, tokenizer: Any, records: list[dict], max_length: int) -> dict[str, float]:
    scored = answer_logprobs(model, tokenizer, [(r["prompt"], r["completion"]) for r in records], max_length)
    tokens = sum(n for _, n in scored)
    return {"instruct_loss": -sum(s for s, _ in scored) / max(tokens, 1)}


def preference_metrics(model: Any, tokenizer: Any, records: list[dict], max_length: int) -> dict[str, float]:
    chosen = answer_logprobs(model, tokenizer, [(r["prompt"], r["chosen"]) for r in records], max_length)
    rejected = answer_logprobs(model, tokenizer, [(r["prompt"], r["rejected"]) for r in records], max_length)
    margins = [c - r for (c, _), (r, _) in zip(chosen, rejected, strict=True)]
    return {
        "pref_margin": sum(margins) / len(margins),
        "pref_win_rate": sum(m > 0 for m in margins) / len(margins),
    }
