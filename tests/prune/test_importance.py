"""Method dispatch and the data-free baselines (seeded random, weight magnitude)."""

from __future__ import annotations

import pytest
import torch

from ablate.errors import PruneError
from ablate.prune.importance import baseline_importance, compute_importance


def test_random_baseline_is_seeded(model):
    a, b, c = (baseline_importance(model, "random", seed) for seed in (0, 0, 1))
    assert torch.equal(a.mlp, b.mlp) and not torch.equal(a.mlp, c.mlp)
    assert a.heads.shape == (4, 6) and a.hidden.shape == (48,) and a.depth.shape == (4,)


def test_magnitude_baseline_scores_weight_norms(model):
    scores = baseline_importance(model, "magnitude")
    layer = model.model.layers[1]
    gate, up, down = layer.mlp.gate_proj.weight, layer.mlp.up_proj.weight, layer.mlp.down_proj.weight
    neuron = (gate[5].square().sum() + up[5].square().sum() + down[:, 5].square().sum()).sqrt()
    assert scores.mlp[1, 5].item() == pytest.approx(neuron.item(), rel=1e-5)
    q, o = layer.self_attn.q_proj.weight, layer.self_attn.o_proj.weight
    head = (q[24:36].square().sum() + o[:, 24:36].square().sum()).sqrt()
    assert scores.heads[1, 2].item() == pytest.approx(head.item(), rel=1e-5)
    with pytest.raises(PruneError, match="merged"):
        scores.merge(scores)


def test_unknown_methods_and_missing_calibration_are_refused(model):
    with pytest.raises(PruneError, match="needs calibration"):
        compute_importance(model, "activation")
    with pytest.raises(PruneError, match="unknown importance"):
        compute_importance(model, "taylor")
