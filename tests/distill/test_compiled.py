"""`distill.compile` (ablate.distill.compiled): each decoder layer through torch.compile (Inductor) trains
to the eager run's losses, leaves the models eager and their state-dict keys as they were, and a spec
that asks for it where it cannot work is refused before anything runs."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from ablate.distill.config import TrainConfig
from ablate.distill.train import train
from ablate.errors import TrainError
from ablate.models.arch import decoder_layers
from tests.distill.conftest import SEQ, slice_prune, small_config, text_batches, tiny_model


def config(**overrides) -> TrainConfig:
    return small_config(3, **{"warmup_steps": 1, "checkpoint_every": 10, **overrides})


@pytest.mark.slow
def test_compiled_layers_train_to_the_eager_losses_and_are_eager_again_after(tmp_path):
    teacher = tiny_model(seed=0)
    eager = train(
        slice_prune(teacher, hidden=48, ffn=64), teacher, text_batches(SEQ, 20), config(), tmp_path / "e"
    )
    student = slice_prune(teacher, hidden=48, ffn=64)
    keys = list(student.state_dict())
    compiled = train(student, teacher, text_batches(SEQ, 20), config(compile=True), tmp_path / "c")
    assert len(compiled.loss_curve) == len(eager.loss_curve) == 3
    # Inductor fuses the norms and the MLP: the same losses up to float rounding (2e-6 measured), while a
    # layer that ran wrong (a dropped residual, the wrong weights) moves them by far more.
    for step, (a, b) in enumerate(zip(compiled.loss_curve, eager.loss_curve, strict=True), start=1):
        assert abs(a - b) <= 2e-5 * abs(b), f"step {step}: {a} compiled vs {b} eager"
    assert eager.loss_curve[-1] != eager.loss_curve[0]  # the curve moves: a run that did nothing would show
    for model in (student, teacher):  # the caller's models leave as they came: eager, same keys
        assert all(layer._compiled_call_impl is None for layer in decoder_layers(model))
    assert list(student.state_dict()) == keys


def test_compile_is_refused_with_intermediate_states_and_must_be_a_bool():
    with pytest.raises(TrainError, match="compile does not work with loss kld\\+intermediate"):
        config(loss="kld+intermediate", compile=True).validate()
    with pytest.raises(TrainError, match="compile must be true or false"):
        config(compile="yes").validate()


def test_a_spec_asking_for_compile_with_intermediate_states_exits_2_naming_the_field(tmp_path, write):
    from ablate.cli import main

    path = write(
        """
        name: c
        teacher: {model: builtin:tiny-mistral}
        targets: {w: {hidden_size: 48}}
        data: {seq_len: 64}
        distill: {tokens: 2k, global_batch: 8, micro_batch: 4, loss: kld+intermediate, compile: true}
        """
    )
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == 2, result.output
    assert (
        "distill" in result.output
        and "compile: true does not work with loss kld+intermediate" in result.output
    )
    assert "set compile: false" in result.output
