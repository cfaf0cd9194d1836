"""The importance choices added after specs were run: head_aggregation and depth.contiguous_metric.

Each is honoured by the scoring pass and its files, and leaves every trial key and stage hash where it
was while at its default."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ablate.errors import PruneError
from ablate.models.arch import skip_layers
from ablate.prune.activation import estimate_importance
from ablate.prune.apply import prune_model
from ablate.prune.scores import ImportanceScores

from .tiny import token_batch

CALIBRATION = token_batch(6, 16, seed=5)
SPECS = Path(__file__).parents[2] / "specs"


def full_logits(model, ids):
    with torch.inference_mode():
        return model(input_ids=ids, use_cache=False).logits.float()


def test_contiguous_kl_is_the_kl_to_the_full_model_of_skipping_each_block(model):
    scores = estimate_importance(
        model,
        CALIBRATION,
        depth_method="contiguous",
        contiguous_drops=[1, 2],
        contiguous_metric="kl_to_teacher",
        batch_size=4,
    )
    assert scores.settings["contiguous_metric"] == "kl_to_teacher"
    log_pt = F.log_softmax(full_logits(model, CALIBRATION), -1)
    n = model.config.num_hidden_layers
    for k in (1, 2):
        assert scores.contiguous[k].shape == (n - k + 1,)
        for s in range(n - k + 1):
            with skip_layers(model, range(s, s + k)):
                log_ps = F.log_softmax(full_logits(model, CALIBRATION), -1)
            kl = (log_pt.exp() * (log_pt - log_ps)).sum(-1).mean()  # over every position
            assert scores.contiguous[k][s].item() == pytest.approx(kl.item(), rel=1e-4, abs=1e-6)
    best = int(torch.argmin(scores.contiguous[2]))
    kept = prune_model(model, scores, {"num_hidden_layers": n - 2}).ablate_kept.layers
    assert kept == [i for i in range(n) if not best <= i < best + 2]


def test_contiguous_lm_loss_stays_the_default(model):
    scores = estimate_importance(model, CALIBRATION, depth_method="contiguous", contiguous_drops=[1])
    assert scores.settings["contiguous_metric"] == "lm_loss"
    assert "contig_1_loss_sum" in scores.state and "contig_1_kl_sum" not in scores.state


def test_channel_l2_heads_reaggregate_merge_and_round_trip(model, tmp_path):
    whole = estimate_importance(model, CALIBRATION, head_aggregation="channel_l2", batch_size=4)
    assert whole.heads.shape == (model.config.num_hidden_layers, model.config.num_attention_heads)
    halves = estimate_importance(model, CALIBRATION[:2], head_aggregation="channel_l2").merge(
        estimate_importance(model, CALIBRATION[2:], head_aggregation="channel_l2")
    )
    for agg in ("mean", "l2", "var"):
        assert torch.allclose(halves.with_batch_agg(agg).heads, whole.with_batch_agg(agg).heads, rtol=1e-5)
    loaded = ImportanceScores.load(whole.save(tmp_path / "s.safetensors"))
    assert torch.equal(loaded.heads, whole.heads) and loaded.settings["head_aggregation"] == "channel_l2"
    token = estimate_importance(model, CALIBRATION[:2])
    with pytest.raises(PruneError, match="head_aggregation"):
        token.merge(estimate_importance(model, CALIBRATION[2:], head_aggregation="channel_l2"))


def test_scores_written_before_head_aggregation_read_as_token_l2(model):
    from ablate.prune.scores import scores_from_state

    scores = estimate_importance(model, CALIBRATION[:3])
    old_settings = {k: v for k, v in scores.settings.items() if k != "head_aggregation"}
    old = scores_from_state(scores.state, old_settings, scores.shape)
    assert torch.equal(old.heads, scores.heads)
    merged = old.merge(estimate_importance(model, CALIBRATION[3:]))  # no "different settings" refusal
    assert torch.allclose(
        merged.heads, estimate_importance(model, CALIBRATION, batch_size=3).heads, rtol=1e-5
    )


def test_bad_choices_are_refused(model):
    with pytest.raises(PruneError, match="head_aggregation"):
        estimate_importance(model, CALIBRATION, head_aggregation="max")
    with pytest.raises(PruneError, match="contiguous_metric"):
        estimate_importance(model, CALIBRATION, contiguous_metric="accuracy")


# --- the spec --------------------------------------------------------------------------------------


def keys(tmp_path, importance: str):
    from ablate.plan.stages import trial_stages
    from ablate.spec.validate import load_spec

    text = (SPECS / "mistral-nemo-minitron-8b.yaml").read_text()
    text = text.replace("configs/mistral-nemo-12b.json", str(SPECS / "configs/mistral-nemo-12b.json"))
    old = (
        "  width: {method: activation, batch_agg: l2, seq_agg: mean, mlp_site: down_proj_input}\n"
        "  depth: {method: block_importance}\n"
    )
    assert old in text
    spec = tmp_path / "s.yaml"
    spec.write_text(text.replace(old, importance))
    (trial,) = load_spec(spec).trials
    return trial.key, {k: s.hash for k, s in trial_stages(trial).items()}


def test_new_fields_leave_keys_alone_at_their_defaults(tmp_path):
    key, hashes = keys(tmp_path, "  width: {method: activation}\n  depth: {method: block_importance}\n")
    assert key == "71a7c42969fa"  # pinned in tests/plan/test_plan.py too
    explicit = keys(
        tmp_path,
        "  width: {method: activation, head_aggregation: token_l2}\n"
        "  depth: {method: block_importance, contiguous_metric: lm_loss}\n",
    )
    assert explicit == (key, hashes)
    on_key, on = keys(
        tmp_path, "  width: {head_aggregation: channel_l2}\n  depth: {method: block_importance}\n"
    )
    assert on_key != key and on["importance"] != hashes["importance"] and on["teacher"] == hashes["teacher"]


def test_contiguous_metric_needs_the_contiguous_method(tmp_path):
    from ablate.spec.validate import SpecError

    with pytest.raises(SpecError, match="contiguous_metric"):
        keys(tmp_path, "  depth: {method: block_importance, contiguous_metric: kl_to_teacher}\n")
    lm, _ = keys(tmp_path, "  depth: {method: contiguous}\n")
    kl, _ = keys(tmp_path, "  depth: {method: contiguous, contiguous_metric: kl_to_teacher}\n")
    assert kl != lm
