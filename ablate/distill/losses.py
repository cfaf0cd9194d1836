"""Distillation losses: forward KL on logits, LM cross-entropy, and intermediate hidden-state cosine.

All reductions run in float32 (or float64 when given float64, so gradients can be checked by finite
differences) whatever dtype the models compute in: bf16 logits are upcast before `log_softmax`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _compute_dtype(*tensors: Tensor) -> torch.dtype:
    dtype = torch.float32
    for t in tensors:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def kl_div_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    temperature: float = 1.0,
    mask: Tensor | None = None,
) -> Tensor:
    """Forward KL(teacher || student) per token, averaged over tokens, scaled by T^2.

    KL = sum_v p_t(v) (log p_t(v) - log p_s(v)) with p = softmax(logits / T). Logits have shape
    [..., vocab]; `mask` (same leading shape, bool or 0/1) selects the tokens that count.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} differ"
        )
    dtype = _compute_dtype(student_logits, teacher_logits)
    log_ps = F.log_softmax(student_logits.to(dtype) / temperature, dim=-1)
    log_pt = F.log_softmax(teacher_logits.to(dtype) / temperature, dim=-1)
    # kl_div(input=log q, target=log p, log_target=True) = p * (log p - log q), exact at p == 0.
    per_token = F.kl_div(log_ps, log_pt, reduction="none", log_target=True).sum(-1)
    return _masked_mean(per_token, mask) * (temperature**2)


def cross_entropy_loss(logits: Tensor, input_ids: Tensor, mask: Tensor | None = None) -> Tensor:
    """Next-token cross-entropy: position t predicts token t+1 (the last position has no label)."""
    dtype = _compute_dtype(logits)
    shifted = logits[..., :-1, :].to(dtype)
    labels = input_ids[..., 1:]
    per_token = F.cross_entropy(shifted.reshape(-1, shifted.shape[-1]), labels.reshape(-1), reduction="none")
    per_token = per_token.view(labels.shape)
    return _masked_mean(per_token, None if mask is None else mask[..., 1:])


def _masked_mean(values: Tensor, mask: Tensor | None) -> Tensor:
    if mask is None:
        return values.mean()
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp_min(1.0)


def cosine_loss(student_hidden: Tensor, teacher_hidden: Tensor) -> Tensor:
    """Mean of 1 - cos(student, teacher) over tokens (last dim is the feature dim)."""
    dtype = _compute_dtype(student_hidden, teacher_hidden)
    cos = F.cosine_similarity(student_hidden.to(dtype), teacher_hidden.to(dtype), dim=-1, eps=1e-6)
    return (1.0 - cos).mean()


class HiddenProjection(nn.Module):
    """One learned linear map student_hidden -> teacher_hidden shared by every mapped layer.

    Identity (no parameters) when widths agree. When the student is a width-pruned child whose kept
    hidden channels are known, the map starts as the selection that puts each kept channel back in
    its teacher position; otherwise it starts from a small random matrix.
    """

    def __init__(self, student_hidden: int, teacher_hidden: int, kept_channels: Sequence[int] | None = None):
        super().__init__()
        self.student_hidden = student_hidden
        self.teacher_hidden = teacher_hidden
        if student_hidden == teacher_hidden:
            self.proj = None
            return
        self.proj = nn.Linear(student_hidden, teacher_hidden, bias=False)
        with torch.no_grad():
            if kept_channels is not None and len(kept_channels) == student_hidden:
                self.proj.weight.zero_()
                self.proj.weight[torch.as_tensor(list(kept_channels)), torch.arange(student_hidden)] = 1.0
            else:
                nn.init.normal_(self.proj.weight, std=student_hidden**-0.5)

    def forward(self, x: Tensor) -> Tensor:
        if self.proj is None:
            return x
        return F.linear(x, self.proj.weight.to(x.dtype))


def intermediate_loss(
    student_hiddens: Sequence[Tensor], teacher_hiddens: Sequence[Tensor], projection: HiddenProjection
) -> Tensor:
    """Mean cosine loss over mapped pairs of post-norm hidden states, student side projected."""
    if len(student_hiddens) != len(teacher_hiddens) or not student_hiddens:
        raise ValueError("intermediate_loss needs the same non-zero number of student and teacher states")
    losses = [cosine_loss(projection(s), t) for s, t in zip(student_hiddens, teacher_hiddens, strict=True)]
    return torch.stack(losses).mean()


def combine_dynamic(logit_loss: Tensor, is_loss: Tensor) -> Tensor:
    """L = L_logits + alpha * L_is with alpha = L_logits / L_is (detached), as in Minitron.

    The intermediate term then always carries the same weight as the logit term, whatever their
    natural scales; alpha is a constant for the gradient.
    """
    alpha = (logit_loss.detach() / is_loss.detach().clamp_min(1e-8)).to(is_loss.dtype)
    return logit_loss + alpha * is_loss
