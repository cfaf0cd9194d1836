"""The token budget in optimizer steps: the formula and the one-step rule the spec and the trainer share."""

import pytest

from ablate.distill.config import TrainConfig
from ablate.spec import budget


@pytest.mark.parametrize(
    "tokens,steps", [(128, 1), (129, 2), (1000, 8), (1024, 8), (1025, 9)]
)  # global_batch 4 x seq_len 32 = 128 tokens a step
def test_steps_round_the_budget_up_to_whole_steps(tokens, steps):
    assert budget.tokens_per_step(4, 32) == 128
    assert budget.steps(tokens, 4, 32) == steps
    config = TrainConfig(tokens=tokens, global_batch=4, micro_batch=2, seq_len=32)
    assert (config.steps, config.tokens_consumed) == (steps, steps * 128)  # the trainer uses the same formula


def test_a_budget_must_pay_for_one_step():
    assert budget.fits_one_step(128, 4, 32) and not budget.fits_one_step(127, 4, 32)
    assert TrainConfig(tokens=127, global_batch=4, micro_batch=2, seq_len=32).problems() == [
        "the budget of 127 tokens is smaller than one optimizer step (global_batch 4 x seq_len 32 = 128 tokens); "
        "raise tokens or lower global_batch"
    ]
