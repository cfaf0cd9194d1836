"""Which shared stages run beside the trials (ablate.run.shared_stages.beside_trials): the reference evals
and the teacher's benchmarks, which no trial and no other stage reads; never a stage a trial reads."""

from __future__ import annotations

from pathlib import Path

from ablate.plan.graph import build_graph
from ablate.plan.stages import PRUNED_EVAL, TEACHER_BENCHMARK, TEACHER_EVAL, trial_kinds
from ablate.run.shared_stages import beside_trials, shared_of
from ablate.spec.validate import load_spec

SPECS = Path(__file__).resolve().parents[2] / "specs"


def test_only_the_stages_no_trial_reads_run_beside_the_trials(tmp_path):
    spec = tmp_path / "bench.yaml"
    spec.write_text((SPECS / "tiny.yaml").read_text() + "\neval: {tasks: [pydoc_cloze], limit: 4}\n")
    graph = build_graph(load_spec(spec).trials, str(tmp_path))
    shared = shared_of(graph)
    beside = beside_trials(graph, shared)
    expected = {
        h
        for stages in graph.trial_stages.values()
        for key, h in stages.items()
        if key in (PRUNED_EVAL, TEACHER_EVAL) or key.startswith(TEACHER_BENCHMARK)
    }
    assert beside == expected and len(beside) == 4  # two pruned students' evals, the teacher's, its benchmark
    # Every stage a trial runs or starts from is outside: its parents (tokenize .. prune) and its own stages.
    read = {p for h in graph.stages for p in graph.stages[h].parents}
    assert not beside & read
    for stages in graph.trial_stages.values():
        assert not beside & {stages[k] for k in trial_kinds(stages)}
    assert {graph.stages[h].kind for h in beside} == {"eval", "benchmark"}
