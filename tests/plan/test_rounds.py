"""Iterative compression in the stage graph (targets `from: TARGET`, `chain`): each link an ordinary
stage, shared prefixes hashed alike, keys that tell the lineages apart, and the bad inputs refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from ablate.cli import main
from ablate.plan.graph import build_graph
from ablate.plan.stages import DISTILL_TEACHER
from ablate.spec.validate import load_spec

SPEC = Path(__file__).parents[1] / "run" / "specs" / "rounds.yaml"


@pytest.fixture(scope="module")
def graph():
    loaded = load_spec(SPEC)
    trials = {t.target: t for t in loaded.trials}
    return build_graph(loaded.trials), {name: t.key for name, t in trials.items()}


def test_a_round_prunes_the_last_links_distilled_student(graph):
    g, key = graph
    mid, small, rounds, chain = (
        g.trial_stages[key[n]] for n in ("mid", "small", "small-rounds", "small-chain")
    )
    importance = g.stages[rounds["importance"]]
    assert importance.parents == (mid["distill"],)  # scored on mid's student, not on the teacher
    assert rounds["round0:distill"] == mid["distill"] and rounds["round0:prune"] == mid["prune"]
    assert g.stages[rounds["prune"]].parents == (rounds["importance"],)
    assert g.stages[rounds["prune"]].config == g.stages[small["prune"]].config  # the same target shape
    assert rounds["prune"] != small["prune"]  # ... from another model
    # rounds: distilled from the spec's teacher; chain: from mid's student; both evaluated against the teacher
    assert g.stages[rounds["distill"]].parents == (rounds["prune"], rounds["teacher"])
    assert g.stages[chain["distill"]].parents == (chain["prune"], mid["distill"])
    assert chain[DISTILL_TEACHER] == mid["distill"] and DISTILL_TEACHER not in rounds
    assert g.stages[chain["eval"]].parents == (chain["distill"], chain["teacher"])
    # the rounds and the chain share everything up to the second prune
    assert rounds["importance"] == chain["importance"] and rounds["prune"] == chain["prune"]
    assert g.counts() == {"tokenize": 1, "teacher": 1, "importance": 2, "prune": 3, "distill": 4, "eval": 8}


def test_keys_tell_the_lineages_apart_and_leave_others_unchanged(graph, write):
    _, key = graph
    assert len(set(key.values())) == 4
    alone = (
        SPEC.read_text().split("  small-rounds:")[0]
        + SPEC.read_text().split(
            "small-chain: {hidden_size: 32, intermediate_size: 64, from: mid, chain: true}\n"
        )[1]
    )
    alone = alone.replace("[mid, small, small-rounds, small-chain]", "[mid, small]")
    keys = {t.target: t.key for t in load_spec(write(alone)).trials}
    assert keys == {"mid": key["mid"], "small": key["small"]}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("from: mid, chain: true", "from: nowhere, chain: true"), "from 'nowhere' names no target"),
        (("mid: {hidden_size: 48, intermediate_size: 96}", "mid: {hidden_size: 48, intermediate_size: 96, from: small-chain}"),
         "are pruned from each other in a cycle"),
        (("small-rounds: {hidden_size: 32,", "small-rounds: {hidden_size: 56,"), "hidden_size=56 is larger than target mid's 48"),
        (("small: {hidden_size: 32, intermediate_size: 64}", "small: {hidden_size: 32, intermediate_size: 64, chain: true}"),
         "chain needs from: TARGET"),
        (("loss: kld", "loss: kld+intermediate"), "kld+intermediate matches hidden states"),
    ],
)  # fmt: skip
def test_bad_lineages_are_refused_at_validate(write, change, message):
    old, new = change
    text = SPEC.read_text()
    assert old in text
    result = CliRunner().invoke(main, ["validate", str(write(text.replace(old, new, 1)))])
    assert result.exit_code == 2 and message in result.output, result.output
