"""One alignment stage on TRL, interrupted and resumed: the resumed run starts from its last checkpoint and
ends with the weights an uninterrupted run ends with."""

from __future__ import annotations

import pytest
import torch

from ablate.align.sets import load_set
from ablate.align.templates import CHATML_TEMPLATE, apply
from ablate.align.train import align_model, steps_for
from ablate.models.registry import load_model

SETTINGS = {
    "name": "sft",
    "method": "sft",
    "examples": 16,
    "lr": 1e-3,
    "schedule": "cosine",
    "warmup_steps": 0,
    "weight_decay": 0.0,
    "global_batch": 4,
    "micro_batch": 4,
    "max_length": 384,
    "beta": 0.1,
    "checkpoint_every": 2,
}


class Interrupted(Exception):
    pass


def _fresh():
    model, tokenizer = load_model("builtin:tiny-mistral")
    return model, apply(tokenizer, CHATML_TEMPLATE)


def test_budget_in_steps():
    assert steps_for(SETTINGS, 1000) == 4
    assert steps_for({**SETTINGS, "examples": None}, 10) == 3  # one pass, the last step partial


@pytest.mark.slow
def test_an_interrupted_stage_resumes_from_its_checkpoint_to_the_same_weights(tmp_path):
    records = load_set("builtin:pydoc-instruct", "sft", 0.1).train
    model, tokenizer = _fresh()
    whole = align_model(model, tokenizer, SETTINGS, records, tmp_path / "whole", seed=0)
    assert whole.steps == 4 and whole.resumed_from_step == 0 and len(whole.loss_curve) == 4

    def stop_at_3(m):
        if m["step"] == 3:
            raise Interrupted

    interrupted, tokenizer = _fresh()
    with pytest.raises(Interrupted):
        align_model(interrupted, tokenizer, SETTINGS, records, tmp_path / "work", seed=0, on_step=stop_at_3)
    assert (tmp_path / "work" / "checkpoint-2").is_dir()
    resumed_model, tokenizer = _fresh()  # a new process would start from the stage's input model
    resumed = align_model(resumed_model, tokenizer, SETTINGS, records, tmp_path / "work", seed=0)
    assert resumed.resumed_from_step == 2
    assert resumed.loss_curve == pytest.approx(whole.loss_curve, rel=1e-4)
    for (name, a), b in zip(model.state_dict().items(), resumed_model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)
