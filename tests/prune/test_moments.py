"""Streaming moments: merging two halves is exact for every aggregation."""

from __future__ import annotations

import torch

from ablate.prune.moments import AGGREGATIONS, Moments


def test_moments_merge_is_exact_for_every_aggregation():
    data = torch.randn(11, 3, 5, dtype=torch.float64) * 3 + 1
    whole, left, right = Moments((3, 5)), Moments((3, 5)), Moments((3, 5))
    for chunk in data.split(4):
        whole.update(chunk)
    left.update(data[:2])
    for chunk in data[2:].split(3):
        right.update(chunk)
    merged = left.merge(right)
    expected = {"mean": data.abs().mean(0), "l2": data.norm(dim=0), "var": data.var(0, unbiased=False)}
    for agg in AGGREGATIONS:
        assert torch.allclose(merged.finalize(agg).double(), expected[agg].float().double(), rtol=1e-6)
        assert torch.allclose(whole.finalize(agg), merged.finalize(agg), rtol=1e-6)
