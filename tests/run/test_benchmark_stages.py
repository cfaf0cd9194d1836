"""Benchmark stages in a submission: the teacher's row and every student's, recorded in SQL and MLflow,
never run twice, and a task added later runs alone; the report's table and --metric TASK/METRIC."""

from __future__ import annotations

import shutil
from collections import Counter

import pytest
from click.testing import CliRunner

from ablate.benchmarks.tasks_index import SHIPPED_TASKS
from tests.run.conftest import make_workspace, mlflow_runs, records_of, split_runs, submit_here

pytestmark = pytest.mark.slow

BENCH = "\neval: {tasks: [pydoc_cloze], limit: 4, batch_size: 4}\n"


@pytest.fixture(autouse=True)
def hub_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


def _spec(workspace, tasks_line: str) -> str:
    text = (workspace / "tiny.yaml").read_text().replace("name: tiny", "name: tinybench")
    text = text.replace("    distill.loss: [kld, ce]", "    distill.loss: [kld]")
    (workspace / "bench.yaml").write_text(text + tasks_line)
    return "bench.yaml"


def test_benchmarks_run_once_per_model_and_task(tmp_path, tiny_run):
    workspace = make_workspace(tmp_path / "ws")
    # the tiny spec's artifacts hold these trials' students (its kld trials): only the benchmarks run
    shutil.copytree(tiny_run.workspace / ".ablate" / "artifacts", workspace / ".ablate" / "artifacts")
    spec = _spec(workspace, BENCH)
    first = submit_here(workspace, spec)
    assert first.ok, first.to_dict()
    assert first.stages_run == {"benchmark": 3}, first.to_dict()  # the teacher's and two students'
    with records_of(workspace) as records:
        trials = records.trials("tinybench")
        stages = [s for s in records.stages("tinybench") if s.kind == "benchmark"]
        results = records.benchmark_results(s.hash for s in stages)
        assert len(results) == 3
        assert Counter(s.config["model"] for s in stages) == {"teacher": 1, "student": 2}
        for by_task in results.values():
            row = by_task["pydoc_cloze"]
            assert 0 <= row["acc"] <= 1 and row["acc_stderr"] > 0
        for t in trials:
            final = records.final_metrics(t.id)
            assert {"pydoc_cloze/acc", "pydoc_cloze/acc_norm"} <= set(final)
    _, children = split_runs(mlflow_runs(workspace, "tinybench"))
    for run in children.values():
        assert "eval/pydoc_cloze/acc" in run.data.metrics

    again = submit_here(workspace, spec)
    assert sum(again.stages_run.values()) == 0 and again.stages_reused["benchmark"] == 3

    shutil.copytree(SHIPPED_TASKS / "pydoc_cloze", workspace / "mytask")
    yaml = workspace / "mytask" / "pydoc_cloze.yaml"
    yaml.write_text(yaml.read_text().replace("task: pydoc_cloze", "task: my_cloze"))
    spec = _spec(workspace, BENCH.replace("[pydoc_cloze]", "[pydoc_cloze, ./mytask]"))
    added = submit_here(workspace, spec)
    assert dict(added.stages_run) == {"benchmark": 3}, added.to_dict()

    from ablate.cli import main

    out = tmp_path / "reports"
    runner = CliRunner()
    db = f"sqlite:///{workspace / '.ablate' / 'ablate.db'}"
    result = runner.invoke(main, ["report", "tinybench", "--db", db, "--out", str(out)])
    assert result.exit_code == 0, result.output
    text = (out / "tinybench" / "report.md").read_text()
    table = text.split("## Benchmarks", 1)[1].split("## Findings", 1)[0]
    assert "| teacher `builtin:tiny-mistral` |" in table
    assert "my_cloze acc" in table and "pydoc_cloze acc_norm" in table
    rows = [line for line in table.splitlines() if line.startswith("| ") and "±" in line]
    assert len(rows) == 3 and all(row.count("± ") == 4 for row in rows)  # 2 tasks x 2 metrics, each ± stderr
    result = runner.invoke(
        main, ["report", "tinybench", "--db", db, "--out", str(out), "--metric", "my_cloze/acc"]
    )
    assert result.exit_code == 0, result.output
