"""Held-out evaluations during distillation (`distill.eval_every`): when they run, and that they leave
the training itself untouched (same weights with and without them)."""

from __future__ import annotations

import pytest
import torch

from ablate.distill.config import TrainConfig, eval_interval
from ablate.distill.train import train
from ablate.errors import TrainError
from ablate.evaluate import evaluate
from ablate.spec.schema import AUTO_EVALS, Distill
from tests.distill.conftest import slice_prune, text_batches, tiny_model

SEQ = 16


@pytest.mark.parametrize(
    ("asked", "steps", "every"),
    [
        (None, 100, 25),  # automatic: 25, 50, 75, 100
        (None, 101, 26),  # 26, 52, 78 and the final step
        (None, 4, 1),
        (None, 3, 0),  # too short for a curve: the trial's eval gives the final point
        (None, 0, 0),
        (0, 100, 0),  # off
        (7, 100, 7),  # as asked
        (7, 3, 7),
    ],
)
def test_eval_interval_resolves_the_spec_value(asked, steps, every):
    assert eval_interval(asked, steps) == every


def test_automatic_gives_about_four_points():
    for steps in range(AUTO_EVALS, 400):
        every = eval_interval(None, steps)
        points = set(range(every, steps + 1, every)) | {steps}
        assert AUTO_EVALS - 1 <= len(points) <= AUTO_EVALS, steps  # 3 only for a handful of short runs


@pytest.mark.parametrize("bad", [-1, True, 2.5])
def test_eval_interval_refuses_what_is_not_a_step_count(bad):
    with pytest.raises(TrainError, match="eval_every"):
        eval_interval(bad, 10)


def test_the_spec_default_stays_none_and_zero_is_allowed():
    """None stays the default (it is in every hashed distill config); 0 now means off."""
    assert Distill.model_fields["eval_every"].default is None
    assert Distill(tokens=1000, eval_every=0).eval_every == 0
    with pytest.raises(ValueError):
        Distill(tokens=1000, eval_every=-1)


def _dropout_model(seed: int):
    """tiny-mistral with attention dropout, so training draws from the RNG on every step."""
    return tiny_model(seed=seed, attention_dropout=0.2)


@pytest.mark.parametrize("loss", ["kld", "ce"])
def test_weights_are_identical_with_and_without_evaluations(tmp_path, loss):
    data = text_batches(SEQ, 12)
    held_out = text_batches(SEQ, 4, offset=12)
    teacher = _dropout_model(0)
    cfg = TrainConfig(
        loss=loss, tokens=6 * 4 * SEQ, global_batch=4, micro_batch=2, seq_len=SEQ, lr=2e-3, seed=3,
        checkpoint_every=100,
    )  # fmt: skip

    def eval_fn(model):
        torch.rand(1000)  # an evaluation that draws from the RNG must not shift training's draws
        return evaluate(model, held_out, teacher=teacher, batch_size=2)

    runs = {}
    for name, every in (("off", 0), ("every step", 1), ("auto", eval_interval(None, cfg.steps))):
        student = slice_prune(teacher, hidden=32, ffn=48)
        for m in student.modules():  # slice_prune builds the child without the teacher's dropout
            if hasattr(m, "attention_dropout"):
                m.attention_dropout = 0.2
        fn = None if every == 0 else eval_fn
        result = train(student, teacher, data, cfg, tmp_path / name, eval_fn=fn, eval_every=every)
        runs[name] = (student.state_dict(), result)
    off_state, off = runs["off"]
    assert off.evals == []
    assert [e["step"] for e in runs["auto"][1].evals] == [2, 4, 6]
    assert len(runs["every step"][1].evals) == 6
    for name in ("every step", "auto"):
        state, result = runs[name]
        assert result.loss_curve == off.loss_curve, name
        for key, value in off_state.items():
            assert torch.equal(value, state[key]), (name, key)
