"""TrainConfig: the LR schedule, token accounting, refused values, and building it from the spec's section."""

import math

import pytest

from ablate.distill.config import TrainConfig, lr_at
from ablate.distill.train import train
from ablate.errors import TrainError
from ablate.spec.schema import Data, Distill
from tests.distill.conftest import text_batches, tiny_model


def test_cosine_schedule_at_the_points_that_matter():
    cfg = TrainConfig(lr=1e-3, min_lr=1e-5, warmup_steps=10, schedule="cosine")
    total = 110  # 10 warm-up steps, then 100 decay steps: p = (step - 10) / 99
    assert lr_at(0, total, cfg) == pytest.approx(1e-3 * 1 / 10)  # step 0: first warm-up step
    assert lr_at(4, total, cfg) == pytest.approx(1e-3 * 5 / 10)
    assert lr_at(9, total, cfg) == pytest.approx(1e-3)  # end of warm-up: peak
    assert lr_at(10, total, cfg) == pytest.approx(1e-3)  # first decay step: still peak (p = 0)
    mid = 1e-5 + 0.5 * (1e-3 - 1e-5) * (1 + math.cos(math.pi * (60 - 10) / 99))
    assert lr_at(60, total, cfg) == pytest.approx(mid)
    # The exact middle of the decay (p = 0.5) is the mean of peak and floor: 101 decay steps, step 60.
    assert lr_at(60, 111, cfg) == pytest.approx((1e-3 + 1e-5) / 2)
    assert lr_at(total - 1, total, cfg) == pytest.approx(1e-5)  # last step: min_lr
    lrs = [lr_at(s, total, cfg) for s in range(10, total)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:], strict=False))  # monotone decay


def test_linear_and_constant_schedules_and_no_warmup():
    lin = TrainConfig(lr=1.0, min_lr=0.0, warmup_steps=0, schedule="linear")
    assert [lr_at(s, 5, lin) for s in range(5)] == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0])
    const = TrainConfig(lr=0.5, min_lr=0.0, warmup_steps=2, schedule="constant")
    assert [lr_at(s, 5, const) for s in range(5)] == pytest.approx([0.25, 0.5, 0.5, 0.5, 0.5])
    one = TrainConfig(lr=0.5, min_lr=0.0)
    assert lr_at(0, 1, one) == 0.5  # a single step runs at peak


def test_token_accounting_rounds_up_to_whole_steps_and_reports_what_was_consumed(tmp_path):
    cfg = TrainConfig(
        loss="ce", tokens=20_000, global_batch=8, micro_batch=4, seq_len=128, lr=1e-3, min_lr=1e-4
    )
    assert cfg.steps == math.ceil(20000 / 1024) == 20
    seen = []
    result = train(tiny_model(), None, text_batches(128, 40), cfg, tmp_path, on_step=seen.append)
    assert result.steps == 20 and len(result.loss_curve) == 20
    assert result.tokens == 20 * 8 * 128 == 20480
    assert result.tokens_budget == 20000 and result.tokens_per_step == 1024
    assert [m["step"] for m in seen] == list(range(1, 21))
    assert seen[-1]["tokens"] == 20480 and seen[0]["tokens"] == 1024
    assert {"loss", "lr", "tokens", "grad_norm", "ce"} <= set(seen[0])
    assert (tmp_path / "train_result.json").is_file()


def test_a_budget_smaller_than_one_step_is_refused():
    cfg = TrainConfig(tokens=1000, global_batch=8, seq_len=128)
    with pytest.raises(TrainError, match="smaller than one optimizer step"):
        cfg.validate()


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("micro_batch", 3, "multiple of micro_batch"),
        ("loss", "mse", "loss 'mse' is unknown"),
        ("schedule", "step", "schedule 'step' is unknown"),
        ("min_lr", 1.0, "min_lr must be between"),
        ("lr", float("nan"), "lr must be a positive number"),
        ("global_batch", 0, "global_batch must be a positive integer"),
    ],
)
def test_bad_configs_say_what_is_wrong(field, value, message):
    cfg = TrainConfig(tokens=10_000, global_batch=8, micro_batch=4, seq_len=16, lr=1e-3, min_lr=1e-5)
    setattr(cfg, field, value)
    with pytest.raises(TrainError, match=message):
        cfg.validate()


def test_from_mapping_takes_the_spec_section():
    cfg = TrainConfig.from_mapping(
        {"loss": "kld", "tokens": 4000, "eval_every": 5, "intermediate_layers": [[0, 1]]}, seq_len=16, seed=3
    )
    assert cfg.intermediate_layers == [(0, 1)] and cfg.seed == 3 and cfg.seq_len == 16
    with pytest.raises(TrainError, match="unknown training option"):
        TrainConfig.from_mapping({"lossy": "kld"})


def test_the_defaults_are_the_spec_schemas():
    """One source of defaults: a field the spec's `distill` section also has defaults to the spec's value."""
    shared = {
        k: f.default for k, f in Distill.model_fields.items() if k != "tokens" and hasattr(TrainConfig, k)
    }
    assert shared and {k: getattr(TrainConfig(), k) for k in shared} == shared
    assert TrainConfig().seq_len == Data.model_fields["seq_len"].default
