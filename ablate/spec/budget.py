"""A distillation's token budget in optimizer steps: the one formula the spec, the trainer and the executor share.

A run of `tokens` takes `ceil(tokens / (global_batch * seq_len))` optimizer steps (the last one may run
past the budget); a budget smaller than one step cannot run at all. Pure arithmetic, so the spec's
validator can use it without importing torch.
"""

from __future__ import annotations

import math


def tokens_per_step(global_batch: int, seq_len: int) -> int:
    """Training tokens one optimizer step consumes (a sequence of seq_len tokens counts seq_len)."""
    return global_batch * seq_len


def steps(tokens: int, global_batch: int, seq_len: int) -> int:
    """Optimizer steps that cover `tokens`: the budget rounded up to whole steps."""
    return math.ceil(tokens / tokens_per_step(global_batch, seq_len))


def fits_one_step(tokens: int, global_batch: int, seq_len: int) -> bool:
    """Whether the budget pays for at least one optimizer step (the rule both the spec and the trainer apply)."""
    return tokens >= tokens_per_step(global_batch, seq_len)
