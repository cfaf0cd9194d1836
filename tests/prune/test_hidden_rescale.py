"""Hidden-size pruning, checked on the logits rather than on indices: a model whose hidden channels were
removed computes exactly what its teacher computes with those channels zeroed in every weight that
writes the residual stream (embedding columns, o_proj / down_proj rows and biases) and every RMSNorm
over the hidden size rescaled, weight x sqrt(D'/D) and eps x D'/D.

Why the rescale: an RMSNorm over the D' kept channels divides by sqrt(S/D' + eps) where the zeroed
teacher's divides by sqrt(S/D + eps) (S: the sum of squares, the same in both), and
sqrt(S/D' + eps) = sqrt(D/D') sqrt(S/D + eps D'/D). Qwen3's q_norm / k_norm normalise over head_dim,
not the hidden size, and are left alone. The reference is built here from the teacher alone; FFN
neurons and query heads the student lost are zeroed at the input of down_proj / o_proj (the columns).
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

from ablate.prune.apply import prune_model
from ablate.prune.importance import baseline_importance

from .tiny import FAMILIES, logits, tiny_model, token_batch

HIDDEN_NORMS = ("input_layernorm", "post_attention_layernorm")  # per layer; plus model.norm
TARGETS = {
    "hidden": {"hidden_size": 36},
    "hidden+ffn": {"hidden_size": 36, "intermediate_size": 40},
    "hidden+ffn+heads": {"hidden_size": 36, "intermediate_size": 40, "num_attention_heads": 4},
}
EPS = 0.05  # an eps large enough against the activations that leaving it unscaled shows in the logits
IDS = token_batch(3, 20, seed=7)


def dropped(n: int, kept: torch.Tensor) -> torch.Tensor:
    mask = torch.ones(n, dtype=torch.bool)
    mask[kept] = False
    return mask.nonzero().flatten()


def zeroed_reference(teacher, keep, rescale_weight: bool = True, rescale_eps: bool = True):
    """The teacher with everything the student lost zeroed, and its hidden-size RMSNorms rescaled."""
    ref = copy.deepcopy(teacher)
    d = teacher.config.hidden_size
    d_kept = len(keep.hidden)
    gone = dropped(d, keep.hidden)
    hd = keep.head_dim
    with torch.no_grad():
        ref.model.embed_tokens.weight[:, gone] = 0  # tied: the head's columns too (they read zeros anyway)
        norms = [ref.model.norm]
        for i, layer in enumerate(ref.model.layers):
            attn, mlp = layer.self_attn, layer.mlp
            for writer in (attn.o_proj, mlp.down_proj):
                writer.weight[gone, :] = 0
                if writer.bias is not None:
                    writer.bias[gone] = 0
            mlp.down_proj.weight[:, dropped(mlp.down_proj.in_features, keep.mlp[i])] = 0
            heads_gone = dropped(attn.o_proj.in_features // hd, keep.heads[i])
            for h in heads_gone.tolist():
                attn.o_proj.weight[:, h * hd : (h + 1) * hd] = 0
            norms += [getattr(layer, name) for name in HIDDEN_NORMS]
        for norm in norms:  # not q_norm / k_norm: those are over head_dim
            assert norm.weight.numel() == d
            if rescale_weight:
                norm.weight.mul_(math.sqrt(d_kept / d))
            if rescale_eps:
                norm.variance_epsilon *= d_kept / d
    return ref


CASES = [(f, tied, t) for f in FAMILIES for tied in (False, True) for t in TARGETS]


@pytest.mark.parametrize(("family", "tied", "target"), CASES)
def test_hidden_pruned_model_is_the_zeroed_rescaled_teacher(family, tied, target):
    teacher = tiny_model(family, tied, seed=3, rms_norm_eps=EPS)
    scores = baseline_importance(teacher, "random", seed=4)
    student = prune_model(teacher, scores, TARGETS[target])
    keep = student.ablate_kept
    assert 0 < len(keep.hidden) < teacher.config.hidden_size
    got = logits(student, IDS)
    torch.testing.assert_close(got, logits(zeroed_reference(teacher, keep), IDS), rtol=1e-5, atol=1e-5)
    # Without the rescale, or with only half of it, the same comparison fails: the test can fail.
    for broken in (dict(rescale_weight=False, rescale_eps=False), dict(rescale_eps=False)):
        wrong = logits(zeroed_reference(teacher, keep, **broken), IDS)
        assert (got - wrong).abs().max() > 1e-3, f"{broken} was not noticed"


def test_qwen3_head_norms_are_not_over_the_hidden_size():
    """q_norm / k_norm keep their weights untouched (head_dim is kept); rescaling them would break parity."""
    teacher = tiny_model("qwen3", False, seed=3, rms_norm_eps=EPS)
    student = prune_model(teacher, baseline_importance(teacher, "random", seed=4), TARGETS["hidden"])
    for t_layer, s_layer in zip(teacher.model.layers, student.model.layers, strict=True):
        for name in ("q_norm", "k_norm"):
            assert torch.equal(
                getattr(t_layer.self_attn, name).weight, getattr(s_layer.self_attn, name).weight
            )
    keep = student.ablate_kept
    ref = zeroed_reference(teacher, keep)
    with torch.no_grad():
        for layer in ref.model.layers:
            layer.self_attn.q_norm.weight.mul_(math.sqrt(len(keep.hidden) / teacher.config.hidden_size))
    assert (logits(student, IDS) - logits(ref, IDS)).abs().max() > 1e-3
