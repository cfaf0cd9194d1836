"""Two `ablate submit` at the same moment, as two real processes (each with its own local Ray).

Against each backend (SQLite; PostgreSQL for the records and for MLflow, skipped when the server is down),
on a fresh store (no database, no MLflow store yet), and on PostgreSQL then on the store the first pair
left: every stage
runs once (its record completed with one attempt, and the two results together run each stage once), one
MLflow parent run and one child per trial, each metric point once in MLflow, both processes exit 0 with a
`--json` result that says so. Then two different specs sharing one store (and one distillation), and a
cancelled trial whose stages must not stay `running`.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from ablate.track.mlflow_names import OBJECTIVE_METRIC
from tests.run.conftest import (
    ABLATE,
    SQLITE_DB,
    SQLITE_MLFLOW,
    clean_env,
    kill_session,
    make_workspace,
    records_of,
    submit_here,
)

pytestmark = pytest.mark.slow

PAIR_TIMEOUT_S = 420
SHARED = ("teacher", "importance", "prune")


# ------------------------------------------------------------------------------------------ helpers
def submit_together(workspace: Path, specs: list[str]) -> list[dict[str, Any]]:
    """Start `ablate submit SPEC --json` for every spec at once; each one's exit code and parsed stdout."""
    procs, logs = [], []
    for i, spec in enumerate(specs):
        out, err = workspace / f"submit-{i}.out", workspace / f"submit-{i}.err"
        logs.append((out, err))
        procs.append(
            subprocess.Popen(
                [*ABLATE, "submit", spec, "--json"],
                cwd=workspace,
                env=clean_env(),
                stdout=out.open("w"),
                stderr=err.open("w"),
                start_new_session=True,
            )
        )
    try:
        deadline = time.monotonic() + PAIR_TIMEOUT_S
        for p in procs:
            p.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        for p in procs:
            kill_session(p.pid)  # nothing of a submission (its Ray) outlives the test
    results = []
    for p, (out, err) in zip(procs, logs, strict=True):
        text = out.read_text()
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError:
            raise AssertionError(
                f"rc {p.returncode}, stdout is not one JSON object: {text[-2000:]!r}\n{err.read_text()[-3000:]}"
            ) from None
        results.append({"rc": p.returncode, "out": parsed, "stderr": err.read_text()})
    return results


def mlflow_client(uri: str):
    from mlflow.tracking import MlflowClient

    from ablate.track.mlflow import _prepare_tracking_uri

    return MlflowClient(_prepare_tracking_uri(uri))


def check_once(workspace: Path, db: str, mlflow_uri: str, results: list[dict[str, Any]], name: str) -> None:
    """Both submissions succeeded and, together, ran every stage of `name` exactly once."""
    for r in results:
        assert r["rc"] == 0 and r["out"]["ok"], (r["out"], r["stderr"][-3000:])
        assert all(t["status"] == "completed" for t in r["out"]["trials"]), r["out"]
    with records_of(workspace, db) as records:
        stages = records.stages(name)
        assert {s.status for s in stages} == {"completed"}, [(s.hash, s.status) for s in stages]
        assert all(s.attempts == 1 for s in stages), [(s.hash, s.attempts) for s in stages]
        assert all(s.host is not None for s in stages)
        trials = records.trials(name)
        assert {t.status for t in trials} == {"completed"} and all(t.attempts == 1 for t in trials)
        experiment = records.get_experiment(name)
        runs_of = {t.key: t.mlflow_run_id for t in trials}
        steps = {t.key: [s for s, _ in records.metric_series(t.id, "loss")] for t in trials}
    # each submission accounts for every stage once, as run or reused (waited for counts as reused)
    for r in results:
        assert Counter(r["out"]["stages"]["run"]) + Counter(r["out"]["stages"]["reused"]) == Counter(
            s.kind for s in stages
        ), r["out"]["stages"]

    client = mlflow_client(mlflow_uri)
    from mlflow.entities import ViewType

    exp = client.get_experiment_by_name(name)
    runs = client.search_runs([exp.experiment_id], run_view_type=ViewType.ALL, max_results=1000)
    parents = [r for r in runs if r.data.tags.get("ablate.role") == "parent"]
    children = [r for r in runs if r.data.tags.get("ablate.role") == "trial"]
    assert len(parents) == 1, [r.info.run_id for r in parents]
    assert parents[0].info.run_id == experiment.mlflow_run_id
    assert parents[0].info.status == "FINISHED"
    assert sorted(r.data.tags["ablate.trial_key"] for r in children) == sorted(runs_of)  # one per trial
    for run in children:
        key = run.data.tags["ablate.trial_key"]
        assert run.info.run_id == runs_of[key] and run.info.status == "FINISHED"
        assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        objective = OBJECTIVE_METRIC[run.data.params["distill.loss"]]  # MLflow's name of the trial's loss
        history = sorted(m.step for m in client.get_metric_history(run.info.run_id, objective))
        assert history == steps[key] == list(range(1, len(history) + 1)), (key, history)  # no point twice


def pg_mlflow(tiny: Path, url: str) -> None:
    text = tiny.read_text()
    assert f"mlflow: {SQLITE_MLFLOW}" in text
    tiny.write_text(text.replace(f"mlflow: {SQLITE_MLFLOW}", f"mlflow: '{url}'"))


def same_spec_twice(workspace: Path, db: str, mlflow_uri: str, then_on_that_store: bool) -> None:
    """The pair on a fresh store; with `then_on_that_store`, a second pair that adds two trials to it."""
    fresh = submit_together(workspace, ["concurrent.yaml", "concurrent.yaml"])
    check_once(workspace, db, mlflow_uri, fresh, "concurrent")
    ran = Counter()
    for r in fresh:
        ran.update(r["out"]["stages"]["run"])
    # once, by either; eval: the two trials' and the reference evals of the pruned student and the teacher
    assert ran == {"tokenize": 1, "teacher": 1, "importance": 1, "prune": 1, "distill": 2, "eval": 4}
    if not then_on_that_store:
        return
    existing = submit_together(workspace, ["concurrent_more.yaml", "concurrent_more.yaml"])
    check_once(workspace, db, mlflow_uri, existing, "concurrent")
    ran = Counter()
    for r in existing:
        ran.update(r["out"]["stages"]["run"])
    assert ran == {"distill": 2, "eval": 2}  # only the two new trials' stages, once each


# ------------------------------------------------------------------------------------------ tests
@pytest.mark.timeout(PAIR_TIMEOUT_S + 60)
def test_same_spec_twice_at_once_sqlite(tmp_path):
    # The pair on an existing store runs on PostgreSQL only, whose transactions interleave (SQLite's
    # writers take turns): the fresh pair already races every insert here.
    workspace = make_workspace(tmp_path / "ws")
    same_spec_twice(workspace, SQLITE_DB, f"sqlite:///{workspace / '.ablate' / 'mlflow.db'}", False)


@pytest.mark.postgres
@pytest.mark.timeout(2 * PAIR_TIMEOUT_S + 60)
def test_same_spec_twice_at_once_postgres(pg_url_factory, tmp_path):
    with pg_url_factory() as db, pg_url_factory() as mlflow_url:  # MLflow's tables in a schema of their own
        workspace = make_workspace(tmp_path / "ws", db_url=db)
        pg_mlflow(workspace / "tiny.yaml", mlflow_url)
        same_spec_twice(workspace, db, mlflow_url, True)
        with records_of(workspace, db) as records:
            assert records.dialect == "postgresql"


@pytest.mark.timeout(PAIR_TIMEOUT_S + 60)
def test_two_specs_side_by_side_share_stages(tmp_path):
    """side-a and side-b at once on a fresh store: the shared stages and the distillation both have
    (width, kld, seed 2) run once, by one of them; the other waits and records it from the artifacts."""
    workspace = make_workspace(tmp_path / "ws")
    results = submit_together(workspace, ["side_a.yaml", "side_b.yaml"])
    for r in results:
        assert r["rc"] == 0 and r["out"]["ok"], (r["out"], r["stderr"][-3000:])
    with records_of(workspace) as records:
        stages = {s.hash: s for name in ("side-a", "side-b") for s in records.stages(name)}
        assert {s.status for s in stages.values()} == {"completed"}
        assert all(s.attempts == 1 for s in stages.values()), [(s.hash, s.attempts) for s in stages.values()]
        by_kind = Counter(s.kind for s in stages.values())
        assert by_kind == {"tokenize": 1, "teacher": 1, "importance": 1, "prune": 1, "distill": 3, "eval": 5}
        for name in ("side-a", "side-b"):
            assert {t.status for t in records.trials(name)} == {"completed"}
    ran = Counter()
    for r in results:
        ran.update(r["out"]["stages"]["run"])
    assert ran == by_kind  # each stage run by exactly one of the two


@pytest.mark.timeout(300)
def test_cancelled_trial_leaves_no_stage_running(ray_local, tmp_path):
    """`ablate cancel` while a distillation runs: the trial is cancelled and so are its distill and eval
    stages (not left `running`, which would read as held); submitting again runs them."""
    workspace = make_workspace(tmp_path / "ws")
    asked: list[bool] = []

    def progress(event: str, data: dict[str, Any]) -> None:
        if event == "trial_step" and not asked:
            asked.append(True)
            with records_of(workspace) as records:
                records.request_cancel("tiny-cancel")

    result = submit_here(workspace, "cancel.yaml", progress)
    assert asked and not result.ok
    assert [t["status"] for t in result.trials] == ["cancelled"]
    with records_of(workspace) as records:
        every = records.stages("tiny-cancel")
        references = [s for s in every if s.kind == "eval" and "model" in s.config]  # shared: done
        stages = {s.kind: s for s in every if s not in references}
        assert {stages[k].status for k in SHARED} | {s.status for s in references} == {"completed"}
        assert stages["distill"].status == "cancelled" and stages["eval"].status == "cancelled"
        assert "cancel" in (stages["distill"].error or "")
        # nobody holds anything once the submission is over
        from sqlalchemy import text

        with records.engine.connect() as conn:
            held = conn.execute(
                text("SELECT count(*) FROM stages WHERE lease_owner IS NOT NULL OR status = 'running'")
            ).scalar()
            held += conn.execute(text("SELECT count(*) FROM trials WHERE lease_owner IS NOT NULL")).scalar()
        assert held == 0
