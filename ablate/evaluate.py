"""Held-out evaluation: LM loss, perplexity, and (with a teacher) KL to the teacher, top-1 agreement and
the teacher's own LM loss on the same batches (``teacher_lm_loss``).

LM loss is the mean next-token negative log-likelihood over every predicted position of the packed
eval sequences (seq_len - 1 per sequence); perplexity is exp(lm_loss). KL(teacher || student) and
top-1 agreement are averaged over every position. Log-softmax and KL are computed in float32 whatever
the models' dtype. The logits are made `logit_chunk` positions at a time from the models' final hidden
states (ablate.distill.losses.chunked_eval_sums), never for a whole batch at once.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import PreTrainedModel

from ablate.data.corpus import batches
from ablate.distill.logits import final_hidden, head_of
from ablate.distill.losses import Head, chunked_eval_sums
from ablate.errors import ModelError


def kl_sum(teacher_logits: Tensor, student_logits: Tensor) -> Tensor:
    """Sum over positions of KL(teacher || student), in float32 (float64 result)."""
    t = F.log_softmax(teacher_logits.float(), dim=-1)
    s = F.log_softmax(student_logits.float(), dim=-1)
    return (t.exp() * (t - s)).sum(-1).sum(dtype=torch.float64)


@contextmanager
def _head_or_none(model: PreTrainedModel | None) -> Iterator[Head | None]:
    if model is None:
        yield None
        return
    with head_of(model) as head:
        yield head


def evaluate(
    model: PreTrainedModel,
    eval_batches: Iterable[Tensor] | Tensor,
    teacher: PreTrainedModel | None = None,
    batch_size: int = 8,
    logit_chunk: int | str = "auto",
) -> dict[str, float]:
    """Metrics of `model` on `eval_batches` ([n, S] tensor or an iterable of [b, S] tensors);
    `logit_chunk` positions of logits at a time (see ablate.spec.schema.Distill.logit_chunk)."""
    if teacher is not None and teacher.config.vocab_size != model.config.vocab_size:
        raise ModelError(
            f"teacher vocabulary ({teacher.config.vocab_size}) differs from the model's "
            f"({model.config.vocab_size}); KL needs the same tokenizer"
        )
    device = next(model.parameters()).device
    nll = torch.zeros((), dtype=torch.float64)
    kl = torch.zeros((), dtype=torch.float64)
    teacher_nll = torch.zeros((), dtype=torch.float64)
    agree = 0
    predicted = positions = sequences = 0
    models = [m for m in (model, teacher) if m is not None]
    modes = [m.training for m in models]
    for m in models:
        m.eval()
    try:
        with torch.inference_mode():
            for batch in batches(eval_batches, batch_size):
                batch = batch.to(device)
                hidden = final_hidden(model, batch)
                t_hidden = None
                if teacher is not None:
                    t_device = next(teacher.parameters()).device
                    t_hidden = final_hidden(teacher, batch.to(t_device))
                with head_of(model) as head, _head_or_none(teacher) as t_head:
                    sums = chunked_eval_sums(hidden, head, batch, t_hidden, t_head, logit_chunk)
                nll += sums["nll"].cpu()
                predicted += batch[:, 1:].numel()
                sequences += batch.shape[0]
                if teacher is not None:
                    kl += sums["kl"].cpu()
                    teacher_nll += sums["teacher_nll"].cpu()
                    agree += int(sums["agree"])
                    positions += batch.numel()
                del hidden, t_hidden
    finally:
        for m, mode in zip(models, modes, strict=True):
            m.train(mode)
    if predicted == 0:
        raise ModelError("evaluation got no eval tokens")
    loss = float(nll) / predicted
    out = {
        "lm_loss": loss,
        "perplexity": math.exp(loss) if loss < 700 else math.inf,
        "tokens": predicted,
        "sequences": sequences,
    }
    if teacher is not None:
        out["kl_to_teacher"] = float(kl) / positions
        out["top1_agreement"] = agree / positions
        out["teacher_lm_loss"] = float(teacher_nll) / predicted  # the report's teacher row
    return out
