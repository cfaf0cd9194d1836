"""Importance of every prunable unit: `compute_importance` picks the method; this module also holds the
data-free baselines and the check that scores are finite.

- activation (ablate.prune.activation): one calibration pass with hooks, the Minitron scores;
- magnitude: weight norms; random: seeded uniform scores (the baselines an ablation compares against).

The scores themselves, their merging and files are ablate.prune.scores'.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor
from transformers import PreTrainedModel

from ablate.errors import PruneError
from ablate.models.arch import check_model, decoder_layers, head_dim, shape_of
from ablate.prune.activation import estimate_importance
from ablate.prune.scores import ImportanceScores

METHODS = ("activation", "magnitude", "random")


def baseline_importance(model: PreTrainedModel, method: str, seed: int = 0) -> ImportanceScores:
    """Data-free baselines: `random` (seeded uniform scores) or `magnitude` (L2 norm of each unit's weights).

    Magnitude: a head is scored by its q_proj rows and o_proj columns, an MLP neuron by its gate/up rows
    and down_proj column, a hidden channel by every embedding/projection weight that reads or writes it,
    a layer by the norm of its output projections (o_proj, down_proj).
    """
    check_model(model)
    config = model.config
    n_layers, heads, ffn, hidden = (
        config.num_hidden_layers,
        config.num_attention_heads,
        config.intermediate_size,
        config.hidden_size,
    )
    settings = {"seed": seed} if method == "random" else {}
    if method == "random":
        gen = torch.Generator().manual_seed(seed)
        return ImportanceScores(
            method="random",
            heads=torch.rand(n_layers, heads, generator=gen),
            mlp=torch.rand(n_layers, ffn, generator=gen),
            hidden=torch.rand(hidden, generator=gen),
            depth=torch.rand(n_layers, generator=gen),
            settings=settings,
            shape=shape_of(config),
        )
    if method != "magnitude":
        raise PruneError(f"unknown baseline importance '{method}' (expected random or magnitude)")
    hd = head_dim(config)
    head_sq = torch.zeros(n_layers, heads, dtype=torch.float64)
    mlp_sq = torch.zeros(n_layers, ffn, dtype=torch.float64)
    hidden_sq = torch.zeros(hidden, dtype=torch.float64)
    depth_sq = torch.zeros(n_layers, dtype=torch.float64)

    def sq(w: Tensor, dim: int) -> Tensor:
        return w.detach().double().square().sum(dim).cpu()

    with torch.no_grad():
        base = model.model
        hidden_sq += sq(base.embed_tokens.weight, 0)
        if model.lm_head.weight.data_ptr() != base.embed_tokens.weight.data_ptr():
            hidden_sq += sq(model.lm_head.weight, 0)
        for i, layer in enumerate(decoder_layers(model)):
            attn, mlp = layer.self_attn, layer.mlp
            q = attn.q_proj.weight
            o = attn.o_proj.weight
            head_sq[i] += sq(q, 1).view(heads, hd).sum(1) + sq(o, 0).view(heads, hd).sum(1)
            mlp_sq[i] += sq(mlp.gate_proj.weight, 1) + sq(mlp.up_proj.weight, 1) + sq(mlp.down_proj.weight, 0)
            for lin in (attn.q_proj, attn.k_proj, attn.v_proj, mlp.gate_proj, mlp.up_proj):
                hidden_sq += sq(lin.weight, 0)
            for lin in (attn.o_proj, mlp.down_proj):
                hidden_sq += sq(lin.weight, 1)
            depth_sq[i] = sq(o, 0).sum() + sq(mlp.down_proj.weight, 0).sum()
    return ImportanceScores(
        method="magnitude",
        heads=head_sq.sqrt().float(),
        mlp=mlp_sq.sqrt().float(),
        hidden=hidden_sq.sqrt().float(),
        depth=depth_sq.sqrt().float(),
        settings=settings,
        shape=shape_of(config),
    )


def compute_importance(
    model: PreTrainedModel,
    method: str = "activation",
    batches: Iterable[Tensor] | Tensor | None = None,
    seed: int = 0,
    **activation_options,
) -> ImportanceScores:
    """Dispatch on method: activation (needs calibration batches), magnitude or random."""
    if method not in METHODS:
        raise PruneError(f"unknown importance method '{method}' (expected one of {', '.join(METHODS)})")
    if method == "activation":
        if batches is None:
            raise PruneError("activation importance needs calibration batches")
        return estimate_importance(model, batches, **activation_options)
    return baseline_importance(model, method, seed)


def finite_or_raise(scores: ImportanceScores) -> ImportanceScores:
    """Refuse scores with NaN/inf (a broken model or fp16 overflow) rather than prune on garbage."""
    for name, tensor in scores.tensors().items():
        if name.startswith("state."):
            continue
        if not torch.isfinite(tensor).all():
            raise PruneError(f"importance '{name}' has non-finite values; the model's activations overflowed")
    return scores


# ImportanceScores and estimate_importance are used above; callers that want the whole toolbox import it here.
__all__ = [
    "METHODS",
    "ImportanceScores",
    "baseline_importance",
    "compute_importance",
    "estimate_importance",
    "finite_or_raise",
]
