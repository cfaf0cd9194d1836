"""Distillation losses: forward KL on logits, LM cross-entropy, and intermediate hidden-state cosine.

All reductions run in float32 (or float64 when given float64, so gradients can be checked by finite
differences) whatever dtype the models compute in: bf16 logits are upcast before `log_softmax`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ablate.distill.chunking import chunk_positions


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


# -- chunked logit losses -------------------------------------------------------------------------
#
# At the recipe's scale the logits are the largest tensors of a step (8192 tokens x 131,072 vocabulary
# x 4 bytes = 4 GiB per fp32 copy, several copies per model). Here the LM head and the loss run a
# chunk of positions at a time, so at most chunk x vocabulary logits of each model exist at once. The
# student's gradients (for its final hidden states and its head) are computed chunk by chunk in the
# forward pass, as they would be by autograd (the gradient of the loss w.r.t. the logits is known in
# closed form), and handed back in backward: no recomputation, and the teacher's head is needed only
# during the forward pass.

class Head:
    """A model's LM head as plain tensors: logits = hidden @ weight.T (+ bias)."""

    def __init__(self, weight: Tensor, bias: Tensor | None = None):
        self.weight, self.bias = weight, bias

    def __call__(self, hidden: Tensor) -> Tensor:
        weight = self.weight
        if hidden.device != weight.device:  # a model split over devices (shared stages)
            hidden = hidden.to(weight.device)
        return F.linear(hidden, weight, self.bias)

    @property
    def vocab(self) -> int:
        return int(self.weight.shape[0])


def position_weights(input_ids: Tensor, mask: Tensor | None, shift: bool) -> Tensor:
    """Per-position weights (flattened [B*S]) that turn a sum over positions into the mean the
    unchunked losses take: over predicted positions (shift: all but each sequence's last) and `mask`."""
    w = torch.ones(input_ids.shape, dtype=torch.float64, device=input_ids.device)
    if shift:
        w[..., -1] = 0.0
        if mask is not None:
            w[..., :-1] *= mask[..., 1:].to(w.dtype)
    elif mask is not None:
        w *= mask.to(w.dtype)
    total = w.sum()
    return (w / (total.clamp_min(1.0) if mask is not None else total)).flatten()


def next_token_labels(input_ids: Tensor) -> Tensor:
    """Label of each position (the next token; the last position's is a placeholder with weight 0)."""
    labels = torch.zeros_like(input_ids)
    labels[..., :-1] = input_ids[..., 1:]
    return labels.flatten()


def _logit_grad_kl(log_ps: Tensor, log_pt: Tensor, temperature: float, w: Tensor) -> tuple[Tensor, Tensor]:
    """Per-position T^2 KL(teacher || student), and the gradient of sum_i w_i T^2 KL_i w.r.t. the
    student's logits, T (p_s - p_t) w, computed in the order autograd's chain takes (kl_div, then
    log_softmax, then the division by T), so it rounds as the unchunked gradient does."""
    per = F.kl_div(log_ps, log_pt, reduction="none", log_target=True).sum(-1)
    g = log_pt.exp_().mul_(-(w * temperature**2).to(log_pt.dtype)[:, None])  # d/d log_ps of kl_div
    grad = g.sub_(log_ps.exp() * g.sum(-1, keepdim=True))  # log_softmax's backward
    return per * temperature**2, grad.div_(temperature)


def _logit_grad_ce(log_ps: Tensor, labels: Tensor, w: Tensor) -> tuple[Tensor, Tensor]:
    """Per-position cross-entropy, and the gradient of sum_i w_i CE_i w.r.t. the logits:
    (softmax - onehot) w."""
    per = -log_ps.gather(-1, labels[:, None]).squeeze(-1)
    w = w.to(log_ps.dtype)[:, None]
    grad = log_ps.exp().mul_(w)
    grad.scatter_add_(-1, labels[:, None], -w)
    return per, grad


class _ChunkedLogitLoss(torch.autograd.Function):
    """sum_i w_i loss_i over positions, the student's logits made a chunk at a time (see above).

    Arguments: hidden [N, H], weight [V, H], bias [V] or None, weights [N] (float64), kind, target,
    chunk, temperature; kind 'kl' takes target (teacher hidden [N, Ht], teacher Head), kind 'ce'
    target labels [N]. Under autocast the head runs in the autocast dtype, like nn.Linear would."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, weights, kind, target, chunk, temperature):
        grads = ctx.needs_input_grad[:3]
        device = hidden.device
        cdt = torch.promote_types(hidden.dtype, weight.dtype)
        if torch.is_autocast_enabled(device.type):
            cdt = torch.get_autocast_dtype(device.type)
        w_c = weight.to(cdt)
        b_c = bias.to(cdt) if bias is not None else None
        acc = torch.promote_types(torch.float32, weight.dtype)  # gradient accumulation dtype
        grad_h = torch.empty_like(hidden) if grads[0] else None
        grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if grads[1] else None
        grad_b = torch.zeros(bias.shape, dtype=acc, device=weight.device) if grads[2] else None
        total = torch.zeros((), dtype=torch.float64, device=weight.device)
        for start in range(0, hidden.shape[0], chunk):
            end = min(start + chunk, hidden.shape[0])
            h = hidden[start:end].to(device=weight.device, dtype=cdt)
            logits = F.linear(h, w_c, b_c)
            dtype = _compute_dtype(logits)
            w = weights[start:end].to(weight.device)
            if kind == "kl":
                t_hidden, t_head = target
                t_logits = t_head(t_hidden[start:end]).to(weight.device)
                dtype = torch.promote_types(dtype, t_logits.dtype)
                log_ps = F.log_softmax(logits.to(dtype) / temperature, dim=-1)
                log_pt = F.log_softmax(t_logits.to(dtype) / temperature, dim=-1)
                del t_logits
                per, grad = _logit_grad_kl(log_ps, log_pt, temperature, w)
                del log_pt
            else:
                log_ps = F.log_softmax(logits.to(dtype), dim=-1)
                per, grad = _logit_grad_ce(log_ps, target[start:end].to(weight.device), w)
            del log_ps, logits
            total += (per.double() * w).sum()
            if any(grads):
                g = grad.to(cdt)
                del grad
                if grad_h is not None:
                    grad_h[start:end] = (g @ w_c).to(device=device, dtype=hidden.dtype)
                if grad_w is not None:
                    if g.dtype == acc:
                        grad_w.addmm_(g.t(), h)
                    else:  # bf16 products (as autocast's), summed over chunks in fp32
                        grad_w += (g.t() @ h).to(acc)
                if grad_b is not None:
                    grad_b += g.sum(0).to(acc)
        ctx.save_for_backward(grad_h, grad_w, grad_b)
        ctx.dtypes = (weight.dtype, None if bias is None else bias.dtype)
        return total.to(torch.promote_types(torch.float32, cdt))

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w, grad_b = ctx.saved_tensors
        w_dtype, b_dtype = ctx.dtypes
        out_h = grad_h * grad_out.to(grad_h.dtype) if grad_h is not None else None
        out_w = (grad_w * grad_out.to(grad_w.dtype)).to(w_dtype) if grad_w is not None else None
        out_b = (grad_b * grad_out.to(grad_b.dtype)).to(b_dtype) if grad_b is not None else None
        return out_h, out_w, out_b, None, None, None, None, None


def chunked_kl_loss(
    hidden: Tensor,
    head: Head,
    teacher_hidden: Tensor,
    teacher_head: Head,
    temperature: float = 1.0,
    chunk: int | str | None = "auto",
    mask: Tensor | None = None,
) -> Tensor:
    """`kl_div_loss` of the logits `head(hidden)` against `teacher_head(teacher_hidden)`, a chunk of
    positions at a time. hidden [..., H] and teacher_hidden [..., Ht] share their leading shape; the
    teacher's side gets no gradient. Equal to kl_div_loss on the full logits, and so is its gradient
    (w.r.t. hidden, head.weight and head.bias)."""
    if hidden.shape[:-1] != teacher_hidden.shape[:-1]:
        raise ValueError(
            f"student hidden states {tuple(hidden.shape)} and teacher's {tuple(teacher_hidden.shape)} "
            "cover different positions"
        )
    lead = hidden.shape[:-1]
    weights = position_weights(torch.empty(lead, device=hidden.device), mask, shift=False)
    teacher = (teacher_hidden.detach().reshape(-1, teacher_hidden.shape[-1]), _frozen(teacher_head))
    return _ChunkedLogitLoss.apply(
        hidden.reshape(-1, hidden.shape[-1]), head.weight, head.bias, weights, "kl", teacher,
        chunk_positions(chunk, head.vocab, head.weight.device.type), float(temperature),
    )  # fmt: skip


def chunked_cross_entropy(
    hidden: Tensor,
    head: Head,
    input_ids: Tensor,
    chunk: int | str | None = "auto",
    mask: Tensor | None = None,
) -> Tensor:
    """`cross_entropy_loss` (next-token, mean over predicted positions) of the logits `head(hidden)`,
    a chunk of positions at a time; same value and gradient as on the full logits."""
    weights = position_weights(input_ids, mask, shift=True)
    return _ChunkedLogitLoss.apply(
        hidden.reshape(-1, hidden.shape[-1]), head.weight, head.bias, weights, "ce",
        next_token_labels(input_ids), chunk_positions(chunk, head.vocab, head.weight.device.type), 1.0,
    )  # fmt: skip


def _frozen(head: Head) -> Head:
    return Head(head.weight.detach(), None if head.bias is None else head.bias.detach())


@torch.no_grad()
def chunked_eval_sums(
    hidden: Tensor,
    head: Head,
    input_ids: Tensor,
    teacher_hidden: Tensor | None = None,
    teacher_head: Head | None = None,
    chunk: int | str | None = "auto",
) -> dict[str, Tensor]:
    """Evaluation sums without the full logits: next-token NLL summed over predicted positions, and
    with a teacher KL(teacher || student) summed and top-1 agreements counted over every position, and the
    teacher's own next-token NLL (``teacher_nll``, the teacher row of the report, measured on the same batch).
    Per-position values in float32 (float64 for float64 inputs), sums in float64."""
    h = hidden.reshape(-1, hidden.shape[-1])
    th = None if teacher_hidden is None else teacher_hidden.reshape(-1, teacher_hidden.shape[-1])
    labels = next_token_labels(input_ids).to(head.weight.device)
    predicted = position_weights(input_ids, None, shift=True).to(head.weight.device) > 0
    size = chunk_positions(chunk, head.vocab, head.weight.device.type)
    names = ("nll", "kl", "agree", "teacher_nll")
    out = {k: torch.zeros((), dtype=torch.float64, device=head.weight.device) for k in names}
    for start in range(0, h.shape[0], size):
        end = min(start + size, h.shape[0])
        logits = head(h[start:end])
        log_ps = F.log_softmax(logits.to(_compute_dtype(logits)), dim=-1)
        nll = -log_ps.gather(-1, labels[start:end, None]).squeeze(-1)
        out["nll"] += nll[predicted[start:end]].sum(dtype=torch.float64)
        if th is not None and teacher_head is not None:
            t_logits = teacher_head(th[start:end]).to(logits.device)
            log_pt = F.log_softmax(t_logits.to(_compute_dtype(t_logits)), dim=-1)
            out["kl"] += (log_pt.exp() * (log_pt - log_ps)).sum(-1).sum(dtype=torch.float64)
            out["agree"] += (t_logits.argmax(-1) == logits.argmax(-1)).sum()
            t_nll = -log_pt.gather(-1, labels[start:end, None]).squeeze(-1)
            out["teacher_nll"] += t_nll[predicted[start:end]].sum(dtype=torch.float64)
    return out
