"""Importance score files: a round trip keeps everything (accumulators included); bad files are clear errors."""

from __future__ import annotations

import pytest
import torch

from ablate.errors import PruneError
from ablate.prune.activation import estimate_importance
from ablate.prune.scores import ImportanceScores

from .tiny import token_batch

CALIBRATION = token_batch(8, 20, seed=3)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt", ""])
def test_scores_round_trip_through_a_file(model, tmp_path, suffix):
    scores = estimate_importance(model, CALIBRATION, depth_method="contiguous", contiguous_drops=[2])
    path = scores.save(tmp_path / f"scores{suffix}")
    loaded = ImportanceScores.load(path)
    assert (
        loaded.method == "activation" and loaded.settings == scores.settings and loaded.shape == scores.shape
    )
    for name, tensor in scores.tensors().items():
        assert torch.equal(loaded.tensors()[name], tensor), name
    assert loaded.contiguous.keys() == {2}
    # reloaded accumulators still merge and re-aggregate
    assert torch.allclose(loaded.with_batch_agg("var").mlp, scores.with_batch_agg("var").mlp)
    assert loaded.merge(loaded).settings["samples"] == 16
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_unreadable_score_files_are_clear_errors(tmp_path):
    bad = tmp_path / "scores.safetensors"
    bad.write_bytes(b"not a safetensors file at all")
    with pytest.raises(PruneError, match="not a readable ablate importance file"):
        ImportanceScores.load(bad)
    with pytest.raises(PruneError, match="does not exist"):
        ImportanceScores.load(tmp_path / "missing.safetensors")
