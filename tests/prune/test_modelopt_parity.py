"""Parity with NVIDIA Model Optimizer's Minitron importance (mcore_minitron; the hooks live in
modelopt/torch/nas/plugins/megatron.py), axis by axis, against an independent implementation of its
published formulas written here with forward hooks (Megatron's [seq, batch, C] is [batch, seq, C] here):

- MLP neurons: at the input of linear_fc2 (down_proj), mean |x| over the sequence per channel, squares
  summed over every sample of every batch, square root at the end (L2 over the samples);
- attention heads: the same per channel of the input of linear_proj (o_proj), then L2 over each head's
  kv_channels (head_dim);
- hidden channels: the same per channel of the output of every layer's input_layernorm and
  pre_mlp_layernorm (post_attention_layernorm), square-rooted per norm, summed over the norms;
- depth (Block Importance): per batch 1 - mean cos(layer input, layer output) over its tokens, summed
  over batches (ablate divides by the tokens seen: equal batches make that the sum / number of batches).

ablate with batch_agg l2, seq_agg mean, mlp_site down_proj_input and head_aggregation channel_l2 must
give the same numbers to 1e-6 (relative); the deliberately wrong formulas at the end must not.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ablate.prune.activation import estimate_importance

from .tiny import tiny_model, token_batch

BATCHES = [token_batch(4, 24, seed=11), token_batch(4, 24, seed=12)]  # two equal calibration batches
RTOL = 1e-6


def mean_abs_over_seq(x: torch.Tensor) -> torch.Tensor:
    """Megatron's `input.abs().mean(dim=0)` on [seq, batch, C], here on [batch, seq, C]: [batch, C]."""
    return x.float().abs().mean(dim=1)


def token_cosine(x_in: torch.Tensor, x_out: torch.Tensor) -> torch.Tensor:
    """Megatron's `F.cosine_similarity(hidden_states, output, dim=2).mean()`: per token, then the mean."""
    return F.cosine_similarity(x_in, x_out, dim=-1).mean()


def modelopt_scores(
    model, batches, seq_reduce=mean_abs_over_seq, head_norm_first=False, cosine=token_cosine
) -> dict:
    """Model Optimizer's four importances (the module docstring), from hooks on `model`.

    `seq_reduce`, `head_norm_first` and `cosine` are there only to break the formula on purpose."""
    cfg = model.config
    hd = cfg.head_dim
    layers = model.model.layers
    sq = {"mlp": {}, "heads": {}, "hidden": {}}  # site -> accumulated sum over samples of (per-sample)^2
    block_sum = torch.zeros(len(layers), dtype=torch.float64)

    def accumulate(kind, key, x):
        act = seq_reduce(x).pow(2).sum(dim=0)  # [C], summed over the batch
        sq[kind][key] = sq[kind].get(key, 0) + act.double()

    def on_heads(i, x):
        if head_norm_first:  # ablate's token_l2 order: L2 over each head's channels per token first
            x = torch.linalg.vector_norm(x.float().unflatten(-1, (-1, hd)), dim=-1)
        accumulate("heads", i, x)

    handles = []
    for i, layer in enumerate(layers):
        handles += [
            layer.mlp.down_proj.register_forward_pre_hook(lambda m, a, i=i: accumulate("mlp", i, a[0])),
            layer.self_attn.o_proj.register_forward_pre_hook(lambda m, a, i=i: on_heads(i, a[0])),
            layer.input_layernorm.register_forward_hook(lambda m, a, o, i=i: accumulate("hidden", 2 * i, o)),
            layer.post_attention_layernorm.register_forward_hook(
                lambda m, a, o, i=i: accumulate("hidden", 2 * i + 1, o)
            ),
        ]

        def block(m, args, kwargs, out, i=i):
            x_in = (args[0] if args else kwargs["hidden_states"]).float()
            x_out = (out[0] if isinstance(out, tuple) else out).float()
            block_sum[i] += float(1 - cosine(x_in, x_out))

        handles.append(layer.register_forward_hook(block, with_kwargs=True))
    try:
        with torch.no_grad():
            for batch in batches:
                model(input_ids=batch, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    n = len(layers)
    head_channels = torch.stack([sq["heads"][i].sqrt() for i in range(n)])
    if not head_norm_first:
        head_channels = torch.linalg.vector_norm(head_channels.unflatten(1, (-1, hd)), dim=-1)
    return {
        "mlp": torch.stack([sq["mlp"][i].sqrt() for i in range(n)]),
        "heads": head_channels,
        "hidden": torch.stack([v.sqrt() for v in sq["hidden"].values()]).sum(0),
        "depth": block_sum / len(batches),  # ModelOpt sums over batches; ablate's mean is sum / batches
    }


def ablate_scores(model, head_aggregation="channel_l2"):
    return estimate_importance(
        model,
        torch.cat(BATCHES),
        batch_agg="l2",
        seq_agg="mean",
        mlp_site="down_proj_input",
        head_aggregation=head_aggregation,
        batch_size=BATCHES[0].shape[0],
    )


@pytest.fixture(scope="module")
def gqa_model():
    """Llama layout, GQA (6 query / 2 KV heads), head_dim 12 decoupled from hidden 48 / 6 heads."""
    return tiny_model("llama", tied=False, seed=5)


@pytest.fixture(scope="module")
def both(gqa_model):
    return modelopt_scores(gqa_model, BATCHES), ablate_scores(gqa_model)


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.allclose(a.double(), b.double(), rtol=RTOL, atol=0)


@pytest.mark.parametrize("axis", ["heads", "mlp", "hidden", "depth"])
def test_ablate_equals_modelopt_formula(both, axis):
    reference, ours = both
    got = getattr(ours, axis)
    assert got.shape == reference[axis].shape
    rel = ((got.double() - reference[axis]).abs() / reference[axis].abs()).max()
    assert rel < RTOL, f"{axis}: largest relative difference {float(rel):.2e}"


def test_depth_ranking_is_the_same(both):
    reference, ours = both
    assert torch.equal(torch.argsort(ours.depth, stable=True), torch.argsort(reference["depth"], stable=True))


def test_heads_kept_per_kv_group_are_the_same(gqa_model, both):
    """GQA: the same number of query heads kept in each KV group, and the same heads (top by score)."""
    from ablate.prune.apply import select

    reference, ours = both
    keep = select(gqa_model, ours, {"num_attention_heads": 4})
    kv, group = gqa_model.config.num_key_value_heads, 3
    for i in keep.layers:
        expected = torch.cat(
            [
                torch.sort(reference["heads"][i].view(kv, group)[g], descending=True)
                .indices[:2]
                .sort()
                .values
                + g * group
                for g in range(kv)
            ]
        )
        assert torch.equal(keep.heads[i], expected)


def test_token_l2_is_ablates_own_order_not_modelopts(gqa_model, both):
    """The default head order (token_l2) matches its own formula, and is not ModelOpt's."""
    reference, _ = both
    token = ablate_scores(gqa_model, "token_l2").heads
    assert close(token, modelopt_scores(gqa_model, BATCHES, head_norm_first=True)["heads"])
    assert not close(token, reference["heads"])


BROKEN = {  # a plausible mistake in each step of the formula: the comparison must catch every one
    "l2 over the sequence": dict(seq_reduce=lambda x: torch.linalg.vector_norm(x.float(), dim=1)),
    "mean without abs": dict(seq_reduce=lambda x: x.float().mean(dim=1)),
    "max over the sequence": dict(seq_reduce=lambda x: x.float().abs().amax(dim=1)),
    "head norm before the sequence": dict(head_norm_first=True),
    "block cosine per sequence": dict(
        cosine=lambda a, b: F.cosine_similarity(a.flatten(1), b.flatten(1)).mean()
    ),
}


@pytest.mark.parametrize("broken", sorted(BROKEN))
def test_a_broken_formula_is_caught(gqa_model, both, broken):
    _, ours = both
    wrong = modelopt_scores(gqa_model, BATCHES, **BROKEN[broken])
    axes = (
        ["heads"]
        if broken.startswith("head")
        else ["depth"]
        if broken.startswith("block")
        else ["heads", "mlp", "hidden"]
    )
    for axis in axes:
        assert not close(getattr(ours, axis), wrong[axis]), f"{broken} went unnoticed on {axis}"
