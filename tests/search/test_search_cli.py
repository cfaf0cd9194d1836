"""A search's bad input is refused at `ablate validate` / `ablate plan` time, exit 2, at the field that
fixes it; a valid one is planned with its candidates, K and each phase's compute."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from ablate.cli import main

from .conftest import SEARCH_SPEC


def run(args: list[str]):
    return CliRunner().invoke(main, args)


def refused(write, text: str, command: str = "validate") -> str:
    result = run([command, str(write(text))])
    assert result.exit_code == 2, result.output
    return result.output


def test_plan_shows_the_search_and_json_has_every_phase(write):
    path = write(SEARCH_SPEC)
    plan = json.loads(run(["plan", str(path), "--json"]).stdout)
    search = plan["search"]
    assert search["count"] == 26 and search["top_k"] == 3 and search["space_size"] == 144
    assert [p["phase"] for p in search["phases"]] == [
        "importance",
        "one-shot scoring",
        "retraining",
        "selection",
    ]
    scoring, retraining = search["phases"][1], search["phases"][2]
    assert scoring["runs"] == 26 and retraining["runs"] == 3 and retraining["tokens_per_run"] == 1000
    params = [c["params"] for c in search["candidates"]]
    teacher = plan["teacher"]["params"]
    # one-shot: every candidate and the teacher (KL) over the eval tokens; retraining: 3 largest, kld
    assert scoring["flops"] == 2.0 * sum(params) * 2000 + 2.0 * teacher * 2000 * 26
    assert retraining["flops"] == sum(6.0 * p * 1000 + 2.0 * teacher * 1000 for p in params[:3])
    assert search["retrain"] == {"tokens": 1000, "loss": "kld", "overrides": {"tokens": 1000, "lr": 5e-4}}
    assert plan["total_flops"] == pytest.approx(
        plan["importance_flops"] + sum(t["flops"] for t in plan["trials"]) + search["total_flops"]
    )
    text = run(["plan", str(path)]).output
    assert "search: 26 candidates with 80.0k to 100.0k parameters, of 144 shapes" in text
    assert "h48-f64-a2-l4" in text and "one-shot scoring" in text


def test_a_spec_without_search_plans_as_before(write):
    plain = SEARCH_SPEC[: SEARCH_SPEC.index("search:")]
    plan = json.loads(run(["plan", str(write(plain)), "--json"]).stdout)
    assert "search" not in plan


def test_no_candidate_meets_the_budget_names_the_nearest(write):
    out = refused(write, SEARCH_SPEC.replace("tolerance: 0.2", "tolerance: 0.001"), "plan")
    assert (
        "spec.yaml:13: search.budget: no shape of the space (144 shapes) has 99,900 to 100,000 parameters"
        in out
    )
    assert "the nearest is h48-f64-a2-l4 with 99,120 parameters (0.9% below the budget)" in out


def test_top_k_above_the_candidate_count(write):
    out = refused(write, SEARCH_SPEC.replace("top_k: 3", "top_k: 50"))
    assert "search.score.top_k: top_k 50 is more than the 26 candidate(s) that meet the budget" in out


def test_budget_at_or_above_the_teacher(write):
    out = refused(write, SEARCH_SPEC.replace("params: 100k", "params: 300k"))
    assert "search.budget.params: the budget (300,000 parameters) is not below the teacher's 205,888" in out


def test_a_space_that_skips_every_axis(write):
    skip = "    skip: [hidden_size, intermediate_size, num_attention_heads, num_hidden_layers]\n"
    text = (
        SEARCH_SPEC.replace("    hidden_size: {divisor: 8}\n", "")
        .replace("    intermediate_size: {divisor: 16}\n", "")
        .replace("    num_hidden_layers: {divisor: 1}\n", skip)
    )
    out = refused(write, text)
    assert "search.space: space.skip names every axis" in out


def test_a_space_with_nothing_left_to_search(write):
    """Model Optimizer's divisors (256, 512) are larger than the tiny teacher's widths."""
    text = (
        SEARCH_SPEC.replace("    hidden_size: {divisor: 8}\n", "")
        .replace("    intermediate_size: {divisor: 16}\n", "")
        .replace("    num_hidden_layers: {divisor: 1}\n", "")
        .replace("0.75", "0.4")
        .replace("0.5\n", "0.2\n")
    )
    out = refused(write, text)
    assert "search.space: no axis has more than one value for this teacher (hidden_size: [64]" in out


@pytest.mark.parametrize(
    "old,new,expected",
    [
        (
            "metric: kl_to_teacher",
            "metric: mmlu/acc",
            "search.score.metric: 'mmlu/acc' names the benchmark 'mmlu', which is not in eval.tasks",
        ),
        ("metric: kl_to_teacher", "metric: accuracy", "search.score.metric: unknown metric 'accuracy'"),
        (
            "retrain: {tokens: 1k, lr: 5e-4}",
            "retrain: {tokens: 100}",
            "search.retrain.tokens: 100 tokens is less than one optimizer step",
        ),
        (
            "retrain: {tokens: 1k, lr: 5e-4}",
            "retrain: {tokens: 1k, micro_batch: 3}",
            "search.retrain: distill with these overrides is invalid: global_batch (8) must be a multiple of micro_batch (3)",
        ),
        (
            "retrain: {tokens: 1k, lr: 5e-4}",
            "retrain: {tokens: 1k, lr: 5e-4, lrr: 1}",
            "search.retrain.lrr: unknown key 'lrr'",
        ),
        (
            "num_hidden_layers: {divisor: 1}",
            "num_hidden_layers: {values: [2, 8]}",
            "search.space.num_hidden_layers.values: 8 is above the teacher's num_hidden_layers (4",
        ),
        (
            "tolerance: 0.2}",
            "tolerance: 0.2, memory_gib: 1}",
            "search.budget: budget.memory_gib needs budget.seq_len",
        ),
        ("params: 100k", "params: lots", "search.budget.params: not a parameter count (got 'lots'"),
    ],
)
def test_field_errors(write, old, new, expected):
    assert old in SEARCH_SPEC
    out = refused(write, SEARCH_SPEC.replace(old, new))
    assert expected in out, out


def test_search_settings_cannot_be_swept(write):
    out = refused(write, SEARCH_SPEC + "sweep:\n  grid:\n    search.score.top_k: [2, 3]\n")
    assert "sweep.grid.search.score.top_k: search path 'search.score.top_k' cannot be swept" in out


def test_a_target_from_the_search_is_planned_after_it_and_needs_a_search(write):
    with_found = SEARCH_SPEC.replace(
        "  width: {hidden_size: 48, intermediate_size: 96}\n",
        "  width: {hidden_size: 48, intermediate_size: 96}\n  found: {from: search}\n",
    )
    plan = json.loads(run(["plan", str(write(with_found)), "--json"]).stdout)
    assert [t["overrides"]["target"] for t in plan["after_search"]] == ["found"]
    assert all(t["overrides"]["target"] == "width" for t in plan["trials"])
    no_search = with_found[: with_found.index("search:")]
    assert "target found is from: search, but the spec has no search section" in refused(write, no_search)
    both = with_found.replace("found: {from: search}", "found: {from: search, hidden_size: 32}")
    assert "a target from the search takes its shape from the winner (drop hidden_size" in refused(write, both)
    build = SEARCH_SPEC[: SEARCH_SPEC.index("search:")] + "build: {trial: search}\n"
    assert "build.trial is 'search' but the spec has no search section" in refused(write, build)
