"""A real learning check: distillation must close most of the gap a pruning opened."""

import torch

from ablate.distill.correction import correct_teacher, correction_config
from ablate.distill.losses import kl_div_loss
from ablate.distill.train import TrainConfig, train
from tests.distill.conftest import slice_prune, text_batches, tiny_model

SEQ = 64


def held_out_kl(student, teacher, batches) -> float:
    with torch.inference_mode():
        return kl_div_loss(student(batches).logits, teacher(batches).logits).item()


def test_distilling_a_pruned_tiny_mistral_halves_the_held_out_kl(tmp_path):
    train_split, eval_split = text_batches(SEQ, 240), text_batches(SEQ, 32, offset=240)
    teacher = tiny_model(seed=0)
    # Give the random teacher real structure first (teacher correction on the same text).
    corrected = correct_teacher(
        teacher, train_split, correction_config(tokens=150 * 8 * SEQ, lr=3e-3, warmup_steps=10, global_batch=8,
                                                micro_batch=8, seq_len=SEQ),
        tmp_path / "correction",
    )  # fmt: skip
    assert corrected.final_loss < corrected.loss_curve[0] - 1.5  # it learned the text
    teacher.eval()

    student = slice_prune(teacher, hidden=48, ffn=32)
    start = held_out_kl(student, teacher, eval_split)
    assert start > 0.05  # the pruning did hurt
    cfg = TrainConfig(
        loss="kld", tokens=200 * 8 * SEQ, global_batch=8, micro_batch=8, seq_len=SEQ, lr=3e-3, min_lr=3e-4,
        warmup_steps=10, checkpoint_every=100,
    )  # fmt: skip
    result = train(
        student, teacher, train_split, cfg, tmp_path / "distill",
        eval_fn=lambda m: {"kl": held_out_kl(m, teacher, eval_split)}, eval_every=50,
    )  # fmt: skip
    end = result.evals[-1]["kl"]
    assert end < 0.5 * start, (start, result.evals)
    assert result.loss_curve[-1] < result.loss_curve[0]
