"""Pairing when a `target` axis is pooled with an axis over one target's field (`targets.width.hidden_size`),
checked against a construction with known per-pair differences."""

from __future__ import annotations

import pytest
import yaml

from ablate.report.findings import findings_for
from ablate.report.model import Pair, ReportError, TrialRow
from ablate.report.pairing import Axis
from ablate.spec.schema import Spec
from ablate.spec.sweep import expand

SPEC = """\
name: pairing
teacher: {model: "builtin:tiny-mistral"}
data: {corpus: "builtin:pydoc", seq_len: 64, eval_tokens: 2k}
targets:
  width: {hidden_size: 48, intermediate_size: 64}
  depth: {num_hidden_layers: 2}
distill: {loss: kld, tokens: 2k, global_batch: 8, micro_batch: 4}
sweep:
  grid:
    target: [width, depth]
    targets.width.hidden_size: [32, 48]
    distill.loss: [kld, ce]
  seeds: [0, 1, 2]
"""

# the construction: lm_loss = 3 + these effects + a per-seed offset shared by every trial of that seed
NARROW = 0.1  # hidden 32 vs 48
DEPTH = 0.3  # depth vs width at hidden 48
CE = 0.05  # ce vs kld


def _truth(over: dict) -> float:
    v = 3.0 + 0.01 * over["seed"] + (CE if over["distill.loss"] == "ce" else 0.0)
    if over["target"] == "depth":
        return v + DEPTH
    return v + (NARROW if over["targets.width.hidden_size"] == 32 else 0.0)


@pytest.fixture(scope="module")
def rows() -> list[TrialRow]:
    raw = yaml.safe_load(SPEC)
    out = []
    for i, t in enumerate(expand(raw, Spec.model_validate(raw))):
        config = t.resolved()
        out.append(
            TrialRow(
                id=i,
                key=t.key,
                status="completed",
                overrides=t.overrides,
                config=config,
                metrics={"lm_loss": _truth(t.overrides)},
                error=None,
                duration_s=None,
                mlflow_run_id=None,
                params=None,
                tokens=None,
                shape=config["target"],
            )
        )
    return out


def _by_title(findings):
    return {f.title: f for f in findings}


def test_the_sweep_has_twelve_width_and_six_depth_trials(rows):
    targets = [r.overrides["target"] for r in rows]
    assert targets.count("width") == 12 and targets.count("depth") == 6  # depth does not depend on hidden


def test_a_target_field_axis_pairs_only_within_its_target_and_drops_only_that_field(rows):
    f = _by_title(findings_for(rows, "lm_loss"))["targets.width.hidden_size: 32 vs 48"]
    assert f.n == 6  # 2 losses x 3 seeds, width trials only
    by_key = {r.key: r for r in rows}
    for p in f.pairs:
        a, b = by_key[p.key_a], by_key[p.key_b]
        assert a.overrides["target"] == b.overrides["target"] == "width"
        assert (a.shape["hidden_size"], b.shape["hidden_size"]) == (32, 48)
        assert a.shape["intermediate_size"] == b.shape["intermediate_size"] == 64
        assert (a.overrides["distill.loss"], a.overrides["seed"]) == (
            b.overrides["distill.loss"],
            b.overrides["seed"],
        )
        assert p.diff == pytest.approx(NARROW)
    assert f.mean_diff == pytest.approx(NARROW) and f.settings == ["distill.loss"]


def test_each_shape_of_a_target_is_its_own_value_of_the_target_axis(rows):
    found = _by_title(findings_for(rows, "lm_loss"))
    narrow = found["target: width[hidden_size=32] vs depth"]
    wide = found["target: width[hidden_size=48] vs depth"]
    assert narrow.n == wide.n == 6
    assert all(p.diff == pytest.approx(NARROW - DEPTH) for p in narrow.pairs)
    assert all(p.diff == pytest.approx(-DEPTH) for p in wide.pairs)
    # the two width shapes are compared on their own axis, not again as values of `target`
    assert not any(t.startswith("target: width[hidden_size=32] vs width") for t in found)
    loss = found["distill.loss: kld vs ce"]
    assert loss.n == 9 and all(p.diff == pytest.approx(-CE) for p in loss.pairs)
    assert set(loss.settings) == {"target"}  # pairs over three shapes, not seed replicates


def test_a_duplicate_context_is_an_error_not_a_silent_pick(rows):
    twin = rows[0]
    clone = TrialRow(**{**twin.__dict__, "key": "clone0000000", "metrics": {"lm_loss": 9.0}})
    with pytest.raises(ReportError, match="ambiguous"):
        Axis([*rows, clone], "distill.loss").pairs([*rows, clone], "kld", "ce", "lm_loss")


def test_pair_difference_is_a_minus_b():
    assert Pair("a", "b", 3.5, 3.0, {}).diff == pytest.approx(0.5)


def _chain_rows(grid) -> list[TrialRow]:
    raw = yaml.safe_load(SPEC.replace("  depth: {num_hidden_layers: 2}\n",
                                      "  chained: {hidden_size: 32, from: width, chain: true}\n"
                                      "  direct: {hidden_size: 32, intermediate_size: 64}\n"))  # fmt: skip
    raw["sweep"] = {"grid": grid, "seeds": [0, 1, 2]}
    rows = []
    for i, t in enumerate(expand(raw, Spec.model_validate(raw))):
        config = t.resolved()
        loss = 3.0 + 0.01 * t.seed + (0.2 if t.target == "direct" else 0.0)
        rows.append(TrialRow(i, t.key, "completed", t.overrides, config, {"lm_loss": loss}, None, None, None,
                             None, None, config["target"]))  # fmt: skip
    return rows


def test_a_chain_pairs_with_the_direct_compression_at_the_same_total_tokens():
    """Targets pruned through another (rounds, chains) carry a `lineage` in their config: part of the
    target, so it leaves the context, and the chain (2 links of 2k tokens) pairs seed by seed with the
    direct prune given the same 4k tokens in all, not with one given a link's 2k."""
    rows = _chain_rows([{"target": ["chained"]}, {"target": ["direct"], "distill.tokens": ["4k"]}])
    assert "lineage" in rows[0].config and "lineage" not in rows[-1].config
    pairs = Axis(rows, "target").pairs(rows, "chained", "direct", "lm_loss")
    assert len(pairs) == 3 and all(p.diff == pytest.approx(-0.2) for p in pairs)
    same_link = _chain_rows({"target": ["chained", "direct"]})  # direct at 2k: half the chain's tokens
    assert Axis(same_link, "target").pairs(same_link, "chained", "direct", "lm_loss") == []
