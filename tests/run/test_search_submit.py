"""`ablate submit` of a spec with a search (ablate/run/search.py), on real Ray, SQLite and MLflow:
every candidate scored one-shot, the top_k retrained as trials, the winner recorded and built; a
re-submit runs nothing and a larger top_k runs only the new candidates' trials."""

from __future__ import annotations

import math

import pytest

from tests.run.conftest import make_workspace, mlflow_runs, records_of, split_runs, submit_here

pytestmark = pytest.mark.slow

CANDIDATES = 9  # tests/run/specs/search.yaml's window
TEACHER_SHAPE = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_hidden_layers": 4,
}


@pytest.fixture(scope="module")
def searched(ray_local, tmp_path_factory):
    workspace = make_workspace(tmp_path_factory.mktemp("search"))
    return workspace, submit_here(workspace, "search.yaml")


def test_candidates_are_scored_ranked_and_the_top_k_retrained(searched):
    from ablate.run.artifacts import ArtifactStore
    from ablate.run.stage_runners import read_eval_metrics

    workspace, result = searched
    assert result.ok, result.to_dict()
    # every candidate's prune and pruned-eval, plus the grid trial's; the 3 trials' distill and eval
    assert result.stages_run["prune"] == CANDIDATES + 1 and result.stages_run["distill"] == 3
    assert not result.stages_reused, "what scoring ran is not counted again as reused"
    store = ArtifactStore(str(workspace / ".ablate" / "artifacts"))
    with records_of(workspace) as records:
        rows = records.search_candidates("search")
        trials = {t.key: t for t in records.trials("search")}
        finals = {k: records.final_metrics(t.id) for k, t in trials.items()}
    assert len(rows) == CANDIDATES and [r.rank for r in rows] == list(range(1, CANDIDATES + 1))
    for row in rows:  # the score is the pruned model's KL to the teacher, as its eval stage measured it
        assert row.score == pytest.approx(read_eval_metrics(store, row.eval_hash)["kl_to_teacher"], rel=1e-12)
    assert [r.score for r in rows] == sorted(r.score for r in rows)  # lower KL ranks first
    top, rest = rows[:2], rows[2:]
    assert all(len(r.trial_keys) == 1 for r in top) and not any(r.trial_keys for r in rest)
    for row in top:
        trial = trials[row.trial_keys[0]]
        assert trial.status == "completed" and trial.overrides["target"] == row.name
        config = trial.config
        assert {**TEACHER_SHAPE, **config["target"]} == row.shape  # the target holds the pruned axes
        assert config["distill"]["tokens"] == 1000 and config["distill"]["lr"] == 5e-4
    # the winner: the retrained candidate with the lowest final KL (select = score's metric)
    won = min(top, key=lambda r: finals[r.trial_keys[0]]["kl_to_teacher"])
    assert [r.name for r in rows if r.winner] == [won.name]
    assert result.search["winner"] == won.name and result.search["top_k"] == [r.name for r in top]
    assert len(trials) == 3  # the grid's width trial and the two retrained candidates, nothing else
    parents, children = split_runs(mlflow_runs(workspace, "search"))
    assert len(parents) == 1 and set(children) == set(trials)


def test_resubmit_runs_nothing_and_a_larger_top_k_only_the_new_candidates(searched):
    workspace, first = searched
    again = submit_here(workspace, "search.yaml")
    assert again.ok and not again.stages_run and again.search["winner"] == first.search["winner"]
    spec = workspace / "search.yaml"
    spec.write_text(spec.read_text().replace("top_k: 2", "top_k: 3"))
    more = submit_here(workspace, "search.yaml")
    assert more.ok and more.stages_run == {"distill": 1, "eval": 1}, more.to_dict()
    with records_of(workspace) as records:
        rows = records.search_candidates("search")
        assert [bool(r.trial_keys) for r in rows] == [True] * 3 + [False] * (CANDIDATES - 3)
        assert len(records.trials("search")) == 4


def test_build_and_report_take_the_search_winner(searched):
    from contextlib import chdir

    from ablate.build.recipe import open_source, resolve
    from ablate.report import build_report
    from ablate.report.markdown import render_markdown

    workspace, _ = searched
    with records_of(workspace) as records:
        (winner,) = [r.name for r in records.search_candidates("search") if r.winner]
        report = build_report(records, "search", "kl_to_teacher")
    with chdir(workspace):
        recipe = resolve(open_source("search.yaml"), dry_run=True)
    assert recipe.trial.target == winner and "search's winner" in recipe.chosen_by
    search = report.search
    assert search["winner"] == winner and len(search["candidates"]) == CANDIDATES
    retrained = [c for c in search["candidates"] if c["retrained"] is not None]
    assert len(retrained) >= 2 and all(not math.isnan(c["retrained"]) for c in retrained)
    text = render_markdown(report)
    assert "## Search" in text and f"**{winner}** (winner)" in text


def test_a_target_from_the_search_runs_on_the_winners_shape_after_it(searched):
    workspace, _ = searched
    spec = workspace / "search.yaml"
    text = spec.read_text().replace("  width: {hidden_size: 48, intermediate_size: 96}\n",
                                    "  width: {hidden_size: 48, intermediate_size: 96}\n  found: {from: search}\n")
    spec.write_text(text.replace("grid: {target: [width]}", "grid: {target: [width, found]}"))  # fmt: skip
    result = submit_here(workspace, "search.yaml")
    assert result.ok and result.stages_run == {"distill": 1, "eval": 1}, result.to_dict()
    with records_of(workspace) as records:
        (winner,) = [r for r in records.search_candidates("search") if r.winner]
        (found,) = [t for t in records.trials("search") if t.overrides["target"] == "found"]
    assert found.status == "completed" and {**TEACHER_SHAPE, **found.config["target"]} == winner.shape
    assert found.config["distill"]["tokens"] == 2000  # the spec's distillation, not the search's retraining
    again = submit_here(workspace, "search.yaml")
    assert again.ok and not again.stages_run
