"""A real learning check: distillation must close most of the gap a pruning opened."""

from ablate.data.corpus import batches, token_splits
from ablate.distill.config import TrainConfig
from ablate.distill.correction import correct_teacher, correction_config
from ablate.distill.train import train
from ablate.evaluate import evaluate
from ablate.models.registry import load_model
from ablate.prune.apply import prune_model
from ablate.prune.importance import compute_importance

SEQ = 64


def test_distilling_a_pruned_tiny_mistral_halves_the_held_out_kl(tmp_path):
    teacher, tokenizer = load_model("builtin:tiny-mistral")
    splits = token_splits(tokenizer, "builtin:pydoc", SEQ, eval_tokens=32 * SEQ, calibration_samples=16)
    # The built-in teacher is random; give it real structure first (teacher correction on the corpus).
    corrected = correct_teacher(
        teacher, splits.train, correction_config(tokens=150 * 8 * SEQ, lr=3e-3, warmup_steps=10, global_batch=8,
                                                 micro_batch=8, seq_len=SEQ),
        tmp_path / "correction",
    )  # fmt: skip
    assert corrected.final_loss < corrected.loss_curve[0] - 1.5  # it learned the text

    scores = compute_importance(teacher, "activation", batches(splits.calibration, 8))
    student = prune_model(teacher, scores, {"hidden_size": 48, "intermediate_size": 32})
    start = evaluate(student, splits.eval, teacher=teacher)["kl_to_teacher"]
    assert start > 0.05  # the pruning did hurt
    cfg = TrainConfig(
        loss="kld", tokens=200 * 8 * SEQ, global_batch=8, micro_batch=8, seq_len=SEQ, lr=3e-3, min_lr=3e-4,
        warmup_steps=10, checkpoint_every=100,
    )  # fmt: skip
    result = train(
        student, teacher, splits.train, cfg, tmp_path / "distill",
        eval_fn=lambda m: {"kl": evaluate(m, splits.eval, teacher=teacher)["kl_to_teacher"]}, eval_every=50,
    )  # fmt: skip
    end = result.evals[-1]["kl"]
    assert end < 0.5 * start, (start, result.evals)
    assert result.steps == 200 and result.tokens == 200 * 8 * SEQ
