"""The activation pass: scores checked against a naive computation of the definitions, exact streaming,
depth by LM loss, and a model left as it was."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from ablate.errors import PruneError
from ablate.models.arch import skip_layers
from ablate.prune.activation import estimate_importance
from ablate.prune.moments import AGGREGATIONS

from .tiny import token_batch

CALIBRATION = token_batch(8, 20, seed=3)


def capture(model, ids: torch.Tensor) -> dict[str, list[torch.Tensor]]:
    """Full activations of every scored site (what the streaming pass must never store)."""
    seen: dict[str, list[torch.Tensor]] = {
        "o_in": [],
        "down_in": [],
        "gate_out": [],
        "norms": [],
        "blocks": [],
    }
    handles = []
    for layer in model.model.layers:
        handles += [
            layer.self_attn.o_proj.register_forward_pre_hook(lambda m, a: seen["o_in"].append(a[0].clone())),
            layer.mlp.down_proj.register_forward_pre_hook(lambda m, a: seen["down_in"].append(a[0].clone())),
            layer.mlp.gate_proj.register_forward_hook(lambda m, a, o: seen["gate_out"].append(o.clone())),
            layer.input_layernorm.register_forward_hook(lambda m, a, o: seen["norms"].append(o.clone())),
            layer.post_attention_layernorm.register_forward_hook(
                lambda m, a, o: seen["norms"].append(o.clone())
            ),
            layer.register_forward_hook(
                lambda m, a, k, o: seen["blocks"].append((a[0].clone(), o.clone())), with_kwargs=True
            ),
        ]
    with torch.inference_mode():
        model(input_ids=ids, use_cache=False)
    for h in handles:
        h.remove()
    return seen


def naive(x: torch.Tensor, seq_agg: str, batch_agg: str) -> torch.Tensor:
    """Aggregate [N, S, ...] first over S then over N, straight from the definitions."""
    x = x.double()
    per_sample = {"mean": x.abs().mean(1), "l2": x.norm(dim=1), "var": x.var(1, unbiased=False)}[seq_agg]
    return {
        "mean": per_sample.abs().mean(0),
        "l2": per_sample.norm(dim=0),
        "var": per_sample.var(0, unbiased=False),
    }[batch_agg].float()


@pytest.mark.parametrize("seq_agg,batch_agg", list(itertools.product(AGGREGATIONS, AGGREGATIONS)))
def test_scores_match_the_definitions(model, seq_agg, batch_agg):
    scores = estimate_importance(model, CALIBRATION, batch_agg=batch_agg, seq_agg=seq_agg, batch_size=3)
    seen = capture(model, CALIBRATION)
    n_layers = 4
    for i in range(n_layers):
        heads = seen["o_in"][i].unflatten(-1, (6, 12)).norm(dim=-1)  # per head: L2 over head_dim
        assert torch.allclose(scores.heads[i], naive(heads, seq_agg, batch_agg), rtol=1e-4, atol=1e-6)
        assert torch.allclose(
            scores.mlp[i], naive(seen["down_in"][i], seq_agg, batch_agg), rtol=1e-4, atol=1e-6
        )
    hidden = sum(naive(out, seq_agg, batch_agg) for out in seen["norms"])
    assert len(seen["norms"]) == 2 * n_layers
    assert torch.allclose(scores.hidden, hidden, rtol=1e-4, atol=1e-6)
    bi = torch.stack([1 - F.cosine_similarity(x, y, dim=-1).mean() for x, y in seen["blocks"]])
    assert torch.allclose(scores.depth, bi, rtol=1e-4, atol=1e-6)
    assert scores.settings["samples"] == 8 and scores.settings["tokens"] == 160


def test_gate_up_site_scores_the_preactivation(model):
    scores = estimate_importance(model, CALIBRATION, mlp_site="gate_up")
    seen = capture(model, CALIBRATION)
    for i in range(4):
        assert torch.allclose(scores.mlp[i], naive(seen["gate_out"][i], "mean", "l2"), rtol=1e-4)


@pytest.mark.parametrize("seq_agg", AGGREGATIONS)
def test_two_halves_merged_equal_one_pass(model, seq_agg):
    whole = estimate_importance(model, CALIBRATION, seq_agg=seq_agg, depth_method="lm_loss", batch_size=4)
    first = estimate_importance(model, CALIBRATION[:3], seq_agg=seq_agg, depth_method="lm_loss", batch_size=2)
    second = estimate_importance(
        model, CALIBRATION[3:], seq_agg=seq_agg, depth_method="lm_loss", batch_size=5
    )
    merged = first.merge(second)
    assert merged.settings["samples"] == whole.settings["samples"] == 8
    for batch_agg in AGGREGATIONS:
        a, b = merged.with_batch_agg(batch_agg), whole.with_batch_agg(batch_agg)
        for name in ("heads", "mlp", "hidden", "depth"):
            atol = 1e-5 if name == "depth" else 1e-7  # a difference of two losses: float32 forward noise
            assert torch.allclose(getattr(a, name), getattr(b, name), rtol=1e-5, atol=atol), (batch_agg, name)
        assert torch.allclose(
            a.depth_scores["block_importance"], b.depth_scores["block_importance"], rtol=1e-5
        )


def test_memory_does_not_grow_with_samples(model):
    small = estimate_importance(model, CALIBRATION[:2])
    large = estimate_importance(model, torch.cat([CALIBRATION] * 4))
    assert {k: v.shape for k, v in small.state.items()} == {k: v.shape for k, v in large.state.items()}


def test_lm_loss_depth_is_the_loss_increase_of_dropping_each_layer(model):
    scores = estimate_importance(model, CALIBRATION, depth_method="lm_loss", batch_size=3)

    def loss() -> float:
        with torch.inference_mode():
            out = model(input_ids=CALIBRATION, use_cache=False).logits
        return F.cross_entropy(out[:, :-1].flatten(0, 1), CALIBRATION[:, 1:].flatten()).item()

    base = loss()
    for i in range(4):
        with skip_layers(model, [i]):
            assert scores.depth[i].item() == pytest.approx(loss() - base, abs=1e-5)
    assert torch.equal(scores.depth, scores.depth_scores["lm_loss"])


def test_importance_leaves_the_model_as_it_was(model):
    ids = token_batch(2, 10)
    with torch.inference_mode():
        before = model(input_ids=ids).logits
    model.train()
    estimate_importance(model, CALIBRATION, depth_method="contiguous", contiguous_drops=[1, 2])
    assert model.training
    model.eval()
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    with torch.inference_mode():
        assert torch.equal(model(input_ids=ids).logits, before)


def test_bad_options_are_refused(model):
    with pytest.raises(PruneError, match="batch_agg"):
        estimate_importance(model, CALIBRATION, batch_agg="max")
    with pytest.raises(PruneError, match="mlp_site"):
        estimate_importance(model, CALIBRATION, mlp_site="up_proj")
    with pytest.raises(PruneError, match="no calibration"):
        estimate_importance(model, [])
