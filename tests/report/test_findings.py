"""Paired comparisons and best-practice verdicts on records with known effects (tests/report/known.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ablate.report.findings import MIN_PAIRS, compare, findings_for
from ablate.report.metrics import higher_is_better
from ablate.report.model import AGREES, CLEAR, FEW, INCONCLUSIVE, NO_DIFF, Pair, ReportError, TrialRow
from ablate.report.records import build_report
from ablate.report.stats import kendall_tau

HEAVY = "heavy depth pruning (≥25% of layers removed)"
LIGHT = "little or no depth pruning (<25% of layers removed)"
WIDTH_SCOPE = "targets that prune width"

# (axis, A, B, scope) -> (verdict, winner, practice, agreement)
EXPECTED = {
    ("target", "width", "depth", "all pairs"): (CLEAR, "width", "BP4", AGREES),
    ("distill.loss", "kld", "ce", "all pairs"): (CLEAR, "kld", "BP5", AGREES),
    ("distill.loss", "kld", "kld+intermediate", "all pairs"): (CLEAR, "kld+intermediate", None, None),
    ("distill.loss", "kld", "kld+intermediate", HEAVY): (CLEAR, "kld+intermediate", "BP6", AGREES),
    ("distill.loss", "kld", "kld+intermediate", LIGHT): (NO_DIFF, None, "BP7", AGREES),
    ("distill.loss", "kld", "scratch", "all pairs"): (CLEAR, "kld", "40x", AGREES),
    ("distill.loss", "ce", "kld+intermediate", "all pairs"): (CLEAR, "kld+intermediate", None, None),
    ("distill.loss", "ce", "scratch", "all pairs"): (CLEAR, "ce", None, None),
    ("distill.loss", "kld+intermediate", "scratch", "all pairs"): (CLEAR, "kld+intermediate", "40x", AGREES),
    ("importance.width.batch_agg", "l2", "mean", "all pairs"): (NO_DIFF, None, None, None),
    ("importance.width.batch_agg", "l2", "mean", WIDTH_SCOPE): (NO_DIFF, None, "BP2", INCONCLUSIVE),
    ("distill.tokens", 2000, 8000, "all pairs"): (FEW, None, "BP9", INCONCLUSIVE),
}


@pytest.fixture(scope="module")
def report(known_sqlite):
    _, records, _ = known_sqlite
    return build_report(records, "known")


def _by_id(report):
    return {(f.axis, f.a, f.b, f.scope): f for f in report.findings}


def test_every_comparison_found_with_the_right_verdict_winner_and_paper_agreement(report):
    found = _by_id(report)
    assert set(found) == set(EXPECTED)
    for ident, (verdict, winner, practice, agreement) in EXPECTED.items():
        f = found[ident]
        assert (f.verdict, f.winner, f.practice, f.agreement) == (verdict, winner, practice, agreement), ident


def test_signs_follow_the_constructed_effects(report, known_sqlite):
    *_, known = known_sqlite
    for f in report.findings:
        constructed = float(np.mean([known.truth[p.key_a] - known.truth[p.key_b] for p in f.pairs]))
        if abs(constructed) > 0.02:  # a real effect: the observed mean has its sign, the leader is right
            assert math.copysign(1, f.mean_diff) == math.copysign(1, constructed), f.title
            assert f.leader == (f.a if constructed < 0 else f.b), f.title  # lm_loss: lower is better
        assert f.n == len(f.pairs) == f.wins_a + f.wins_b + f.ties


def test_interval_covers_the_constructed_difference(report, known_sqlite):
    *_, known = known_sqlite
    for f in report.findings:
        constructed = float(np.mean([known.truth[p.key_a] - known.truth[p.key_b] for p in f.pairs]))
        if f.n >= MIN_PAIRS:
            assert f.ci[0] <= constructed <= f.ci[1], (f.title, f.ci, constructed)
            assert f.ci[0] <= f.mean_diff <= f.ci[1]
        else:  # no interval where it would mean nothing
            assert math.isnan(f.ci[0]) and math.isnan(f.ci[1]) and math.isnan(f.p_value)


def test_pairs_are_equal_in_everything_else_and_seeds_pair_up(report, known_sqlite):
    *_, known = known_sqlite
    by_key = {t.key: t for t in report.trials}
    f = _by_id(report)[("target", "width", "depth", "all pairs")]
    assert f.n == 4 * 2 * 3  # losses x aggregations x seeds, at 2000 tokens (no depth trial at 8000 finished)
    for p in f.pairs:
        a, b = by_key[p.key_a].overrides, by_key[p.key_b].overrides
        assert (a["target"], b["target"]) == ("width", "depth")
        assert {k: v for k, v in a.items() if k != "target"} == {k: v for k, v in b.items() if k != "target"}
    tokens = _by_id(report)[("distill.tokens", 2000, 8000, "all pairs")]
    assert tokens.n == 2  # the failed and the pending trial of the third seed take no part
    assert known.failed_key not in {k for p in tokens.pairs for k in (p.key_a, p.key_b)}
    assert tokens.leader == 8000 and tokens.mean_diff > 0


def test_higher_is_better_metric_flips_signs_not_winners(known_sqlite):
    _, records, _ = known_sqlite
    top1 = build_report(records, "known", metric="top1_agreement")
    assert top1.higher_is_better and higher_is_better("top1_agreement") and not higher_is_better("lm_loss")
    f = _by_id(top1)[("target", "width", "depth", "all pairs")]
    assert f.mean_diff > 0 and f.winner == "width" and f.agreement == AGREES
    ppl = _by_id(build_report(records, "known", metric="perplexity"))
    assert ppl[("distill.loss", "kld", "ce", "all pairs")].winner == "kld"


def test_best_trial_and_recipe(report, known_sqlite):
    *_, known = known_sqlite
    b = report.best_trial
    # width + kld + 8000 tokens has the lowest constructed loss (2.95); the l2/mean variants differ by noise
    assert b.overrides["target"] == "width" and b.overrides["distill.loss"] == "kld"
    assert b.overrides["distill.tokens"] == 8000 and b.seeds == 2
    assert b.config is not None and b.config["target"] == {"hidden_size": 48, "intermediate_size": 64}
    assert b.key == known.keys[("width", "kld", "l2", 8000, b.overrides["seed"])]
    assert report.recipe["trial"] == b.key and report.recipe["distill"]["tokens"] == 16000  # build.tokens
    assert report.recipe["formats"] == ["hf"] and report.recipe["target"] == b.config["target"]


def test_trial_rows_have_params_tokens_and_status(report, known_sqlite):
    *_, known = known_sqlite
    rows = {t.key: t for t in report.trials}
    assert len(rows) == 52 and len(report.finished) == 50
    assert rows[known.failed_key].status == "failed" and "nan" in rows[known.failed_key].error
    assert rows[known.pending_key].status == "pending"
    width = rows[known.keys[("width", "kld", "l2", 2000, 0)]]
    depth = rows[known.keys[("depth", "kld", "l2", 2000, 0)]]
    assert (width.params, depth.params) == (117552, 119616)  # exact counts from the teacher's config
    assert width.tokens == 1536 and rows[known.keys[("width", "kld", "l2", 8000, 0)]].tokens == 7680
    assert report.teacher == {"model": "builtin:tiny-mistral", "params": 205888, "layers": 4}
    assert report.untested == ["BP1", "BP3", "BP8", "BP10"]


def test_bad_input_is_a_report_error(known_sqlite, tmp_path):
    from ablate.track.db import connect

    _, records, _ = known_sqlite
    with pytest.raises(ReportError, match="no experiment named 'nope'.*known: known"):
        build_report(records, "nope")
    with pytest.raises(ReportError, match="nobody|no trial of 'known' logged the metric 'mmlu'.*lm_loss"):
        build_report(records, "known", metric="mmlu")
    fresh = connect(f"sqlite:///{tmp_path}/a.db")
    fresh.upsert_experiment("empty", "name: empty\n", "h")
    t = fresh.upsert_trial("empty", "k1", {"target": "width", "seed": 0})
    fresh.set_trial_status(t.id, "failed", error="boom")
    with pytest.raises(ReportError, match="no finished trials yet .*failed 1"):
        build_report(fresh, "empty")
    fresh.close()


# ---------------------------------------------------------------- rules on plain trial rows


def _row(i, overrides, value, *, config=None, shape=None, params=None, metric="lm_loss"):
    return TrialRow(
        id=i,
        key=f"k{i:03d}",
        status="completed",
        overrides=overrides,
        config=config,
        metrics={metric: value},
        error=None,
        duration_s=1.0,
        mlflow_run_id=None,
        params=params,
        tokens=None,
        shape=shape,
    )


def test_teacher_correction_and_token_budget_rankings():
    rows = []
    i = 0
    for t_i, target in enumerate(("a", "b", "c")):
        for tokens in (1000, 4000):
            for corr in (None, {"tokens": 5000}):
                for seed in (0, 1, 2):
                    loss = 3.0 + 0.1 * t_i - (0.2 if tokens == 4000 else 0) - (0.05 if corr else 0)
                    loss += 0.001 * ((seed * 7 + i) % 5)
                    over = {
                        "target": target,
                        "distill.tokens": tokens,
                        "teacher.correction": corr,
                        "seed": seed,
                    }
                    rows.append(_row(i, over, loss))
                    i += 1
    found = {(f.axis, f.scope): f for f in findings_for(rows, "lm_loss")}
    tc = found[("teacher.correction", "all pairs")]
    assert (tc.a, tc.b) == (None, {"tokens": 5000})
    assert tc.practice == "TC" and tc.winner == {"tokens": 5000} and tc.agreement == AGREES
    bp9 = found[("distill.tokens", "all pairs")]
    assert bp9.practice == "BP9" and bp9.winner == 4000
    ranking = bp9.extra["ranking"]
    assert ranking["configurations"] == 6 and ranking["same_best"] and bp9.agreement == AGREES
    assert ranking["kendall_tau"] == pytest.approx(1.0)
    assert ranking["shortfall"] == 0 and ranking["shortfall_ci"][1] < bp9.margin


def test_width_vs_depth_of_unequal_size_is_not_best_practice_4():
    rows = []
    for seed in range(3):
        rows.append(_row(seed, {"target": "w", "seed": seed}, 3.0, shape={"hidden_size": 8}, params=100))
        rows.append(
            _row(10 + seed, {"target": "d", "seed": seed}, 3.5, shape={"num_hidden_layers": 1}, params=150)
        )
    (f,) = findings_for(rows, "lm_loss")
    assert f.verdict == CLEAR and f.winner == "w" and f.practice is None and "differ in size by 33%" in f.note


def test_statistics_helpers():
    assert kendall_tau([1, 2, 3], [3, 2, 1]) == -1.0 and math.isnan(kendall_tau([1], [1]))
    pairs = [Pair("a", "b", 1.0, 1.0 + d, {"seed": s}) for s, d in enumerate([0.1, 0.12, 0.09, 0.11])]
    f = compare("x", "p", "q", pairs, "lm_loss")
    assert (f.verdict, f.winner, f.wins_a, f.wins_b) == (CLEAR, "p", 4, 0)
    few = compare("x", "p", "q", pairs[:2], "lm_loss")
    assert few.verdict == FEW and math.isnan(few.ci[0]) and math.isnan(few.p_value)
    tie = [Pair("a", "b", 2.0, 2.0, {"seed": s}) for s in range(4)]
    t = compare("x", "p", "q", tie, "lm_loss")
    assert (t.verdict, t.ties, t.leader) == (NO_DIFF, 4, None)


def test_metric_direction_is_declared_never_guessed():
    from ablate.report.metrics import metric_info

    assert not metric_info("lm_loss").higher_is_better and metric_info("top1_agreement").higher_is_better
    for unknown in ("my_score", "accumulated_loss"):  # 'acc' inside a name no longer means 'higher'
        with pytest.raises(
            ReportError, match=f"direction of metric '{unknown}' is unknown.*higher_is_better"
        ):
            metric_info(unknown)
    assert metric_info("my_score", True).higher_is_better and metric_info("my_score", True).margin == 0.0
    assert metric_info("lm_loss", margin=0.05).margin == 0.05


def test_a_declared_metric_from_the_spec_or_the_caller(known_sqlite, report):
    _, records, _ = known_sqlite
    assert report.margin == 0.02  # the known spec's report.margin
    rows = report.trials
    with pytest.raises(ReportError, match="direction of metric 'custom' is unknown"):
        findings_for(rows, "custom")
    custom = [
        TrialRow(**{**r.__dict__, "metrics": {**r.metrics, "custom": -r.metrics["lm_loss"]}})
        for r in rows
        if "lm_loss" in r.metrics
    ]
    f = next(f for f in findings_for(custom, "custom", higher=True) if f.axis == "target")
    assert f.winner == "width" and f.higher_is_better


def test_best_practice_5_names_its_metric_and_what_the_other_says():
    rows = []
    for i, (target, seed) in enumerate((t, s) for t in ("a", "b", "c") for s in (0, 1)):
        for j, loss in enumerate(("kld", "ce")):
            lm = 3.0 + 0.01 * i + (-0.1 if loss == "ce" else 0.0) + 0.003 * (i % 2)
            kl = 1.0 + 0.01 * i + (0.2 if loss == "ce" else 0.0) - 0.004 * (i % 3)
            r = _row(2 * i + j, {"target": target, "distill.loss": loss, "seed": seed}, lm)
            rows.append(TrialRow(**{**r.__dict__, "metrics": {"lm_loss": lm, "kl_to_teacher": kl}}))
    (f,) = [f for f in findings_for(rows, "lm_loss") if f.axis == "distill.loss"]
    assert f.practice == "BP5" and f.winner == "ce" and f.agreement == "disagrees"
    assert "Judged on lm_loss" in f.explanation and "On kl_to_teacher" in f.explanation
    assert f.extra["other"]["winner"] == "kld"
    # the metrics disagree: the finding says who leads on which and what each measures
    assert f.extra["by_metric"] == {"lm_loss": "ce", "kl_to_teacher": "kld"}
    said = f.extra["disagreement"]
    assert "ce on lm_loss" in said and "kld on kl_to_teacher" in said
    assert "lm_loss measures how well the student predicts" in said and "kl_to_teacher measures" in said


def test_best_practice_9_needs_three_configurations_and_seed_noise():
    def rows_for(targets, seeds):
        out = []
        for t_i, target in enumerate(targets):
            for tokens in (1000, 4000):
                for seed in seeds:
                    v = 3.0 + 0.1 * t_i - (0.2 if tokens == 4000 else 0) + 0.001 * seed
                    out.append(_row(len(out), {"target": target, "distill.tokens": tokens, "seed": seed}, v))
        return out

    def bp9_of(rows):
        return next(f for f in findings_for(rows, "lm_loss") if f.axis == "distill.tokens")

    two = bp9_of(rows_for(("a", "b"), (0, 1)))
    assert two.agreement == INCONCLUSIVE and "needs at least 3" in two.explanation
    no_seeds = bp9_of(rows_for(("a", "b", "c"), (0,)))
    assert no_seeds.agreement == INCONCLUSIVE and "cannot be told from noise" in no_seeds.explanation
    ok = bp9_of(rows_for(("a", "b", "c"), (0, 1)))
    assert ok.agreement == AGREES and ok.extra["ranking"]["same_best"]
