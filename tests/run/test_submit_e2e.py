"""`ablate submit` end to end on real Ray, MLflow, SQLite and PostgreSQL (docs/architecture.md).

One flow per backend: specs/tiny.yaml from scratch, the same spec again (nothing runs, no MLflow run is
created), then one more value on a sweep axis (only the new trials run). Then a grid cell that diverges.
"""

from __future__ import annotations

import json
from collections import Counter
from contextlib import chdir

import pytest
from click.testing import CliRunner

from tests.run.conftest import (
    SQLITE_DB,
    make_workspace,
    mlflow_client,
    mlflow_runs,
    records_of,
    split_runs,
    submit_here,
)

pytestmark = pytest.mark.slow

# eval: the four trials', and the reference evals of the two pruned students and of the teacher
TINY_STAGES = {"tokenize": 1, "teacher": 1, "importance": 1, "prune": 2, "distill": 4, "eval": 7}
TRIAL_STAGES = {"tokenize": 1, "teacher": 1, "importance": 1, "prune": 1, "distill": 1, "eval": 3}
FINAL = {"lm_loss", "perplexity", "kl_to_teacher", "top1_agreement"}


def check_tiny(workspace, result, db_url: str) -> dict[str, str]:
    """The first submission: every stage once, every trial recorded; returns trial key -> MLflow run."""
    assert result.ok, result.to_dict()
    assert result.stages_run == TINY_STAGES
    assert sum(result.stages_reused.values()) == 0 and not result.stages_failed
    with records_of(workspace, db_url) as records:
        stages = records.stages("tiny")
        assert Counter(s.kind for s in stages) == TINY_STAGES
        assert {s.status for s in stages} == {"completed"}
        assert all(s.artifact_uri for s in stages)
        trials = records.trials("tiny")
        assert len(trials) == 4 and {t.status for t in trials} == {"completed"}
        for t in trials:
            assert Counter(k.kind for k in records.trial_stages(t.id)) == TRIAL_STAGES
            assert [step for step, _ in records.metric_series(t.id, "loss")] == [1, 2, 3, 4]
            assert FINAL <= set(records.final_metrics(t.id))
            assert t.mlflow_run_id and t.attempts == 1
        keys = {t.key: t.mlflow_run_id for t in trials}
        finals = {t.key: records.final_metrics(t.id) for t in trials}
        prunes = {
            t.key: next(s.hash for s in records.trial_stages(t.id) if s.kind == "prune") for t in trials
        }
        experiment = records.get_experiment("tiny")
    parents, children = split_runs(mlflow_runs(workspace, "tiny"))
    assert len(parents) == 1 and experiment.mlflow_run_id == parents[0].info.run_id
    assert parents[0].info.run_name == "tiny"
    assert set(children) == set(keys)
    client = mlflow_client(workspace)
    exp = client.get_experiment(experiment.mlflow_experiment_id)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"  # opens on the runs table
    names = {}
    for key, run in children.items():
        params, metrics = run.data.params, run.data.metrics
        assert run.info.run_id == keys[key] and run.info.status == "FINISHED"
        names[run.info.run_name] = key
        assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert run.data.tags["ablate.stage.prune"].startswith("prune-")
        # size, shape and importance settings: MLflow can plot quality against size
        shape = (
            {"hidden_size": "48", "intermediate_size": "96"}
            if params["target"] == "width"
            else {"num_hidden_layers": "2"}
        )
        assert {k: params[f"student.{k}"] for k in shape} == shape
        size = json.loads((workspace / ".ablate/artifacts" / prunes[key] / "prune.json").read_text())[
            "params"
        ]
        assert params["student.params"] == str(size) and metrics["student/params"] == size
        assert (
            params["importance.width.batch_agg"] == "l2"
            and params["importance.depth.method"] == "block_importance"
        )
        # one objective per name: a kld trial's loss is train/kl, a ce trial's train/ce; no mixed "loss"
        objective, other = (
            ("train/kl", "train/ce") if params["distill.loss"] == "kld" else ("train/ce", "train/kl")
        )
        assert [m.step for m in client.get_metric_history(run.info.run_id, objective)] == [1, 2, 3, 4]
        assert other not in metrics and "loss" not in metrics and "train/lr" in metrics
        assert {f"eval/{k}" for k in FINAL} <= set(metrics)
        # the report's metric comes first: MLflow's compare view preselects the first shared metric
        assert list(metrics)[0] == "eval/lm_loss"
        assert metrics["eval/lm_loss"] == finals[key]["lm_loss"]
    assert sorted(names) == ["depth-ce-s0", "depth-kld-s0", "width-ce-s0", "width-kld-s0"]
    return keys


def check_rerun_and_new_value(workspace, db_url: str, runs: dict[str, str]) -> None:
    again = submit_here(workspace, "tiny.yaml")
    assert again.ok and again.stages_run == {} and not again.stages_failed
    assert again.stages_reused == TINY_STAGES
    assert len(mlflow_runs(workspace, "tiny")) == 1 + 4  # no MLflow run created

    # distill.loss: [kld, ce] -> [kld, ce, scratch], through the CLI with its human output this time
    from ablate.cli import main

    with chdir(workspace):
        more = CliRunner().invoke(main, ["submit", "more_losses.yaml"])
    assert more.exit_code == 0, more.output
    assert (
        "stages run 4 (distill 2, eval 2); "
        "reused 16 (tokenize 1, teacher 1, importance 1, prune 2, eval 7, distill 4)"
        in (" ".join(more.stdout.split()))
    )
    with records_of(workspace, db_url) as records:
        trials = records.trials("tiny")
        assert len(trials) == 6 and {t.status for t in trials} == {"completed"}
        new = [t for t in trials if t.key not in runs]
        assert sorted(t.overrides["distill.loss"] for t in new) == ["scratch", "scratch"]
        assert all(t.attempts == 1 for t in trials)  # the four old trials did not run again
    parents, children = split_runs(mlflow_runs(workspace, "tiny"))
    assert len(parents) == 1 and len(children) == 6
    assert all(children[k].info.run_id == run_id for k, run_id in runs.items())


def test_tiny_end_to_end_sqlite(tiny_run):
    runs = check_tiny(tiny_run.workspace, tiny_run.result, SQLITE_DB)
    check_rerun_and_new_value(tiny_run.workspace, SQLITE_DB, runs)


@pytest.mark.postgres
def test_tiny_end_to_end_postgres(ray_local, pg_url_factory, tmp_path):
    with pg_url_factory() as url:
        workspace = make_workspace(tmp_path, db_url=url)
        result = submit_here(workspace, "tiny.yaml")
        runs = check_tiny(workspace, result, url)
        check_rerun_and_new_value(workspace, url, runs)
        with records_of(workspace, url) as records:
            assert records.dialect == "postgresql"


def test_diverging_trial_is_recorded_failed(tiny_run):
    """distill.lr: [2e-3, 1e12]: the second cell's loss is NaN at step 2. It is recorded failed with
    its error (one line), not retried although max_failures allows it, the other cell completes, the exit
    code is 1 and `ablate status` says why."""
    from ablate.cli import main

    workspace = tiny_run.workspace
    with chdir(workspace):
        res = CliRunner().invoke(main, ["submit", "lr_fail.yaml", "--json"])
    assert res.exit_code == 1, res.output
    out = json.loads(res.stdout)
    assert not out["ok"]
    assert out["stages"]["run"] == {"distill": 1, "eval": 1}
    assert out["stages"]["failed"] == {"distill": 1}
    assert out["stages"]["reused"] == {"tokenize": 1, "teacher": 1, "importance": 1, "prune": 1, "eval": 2}
    by_lr = {float(t["overrides"]["distill.lr"]): t for t in out["trials"]}
    good, bad = by_lr[2e-3], by_lr[1e12]
    assert good["status"] == "completed" and good["metrics"]["perplexity"] > 0
    assert bad["status"] == "failed"
    assert "diverged at step 2" in bad["error"] and "TrainError" in bad["error"]
    assert "\n" not in bad["error"]

    with records_of(workspace) as records:
        trial = records.get_trial("tiny-lr", bad["key"])
        assert trial.status == "failed" and trial.attempts == 1  # deterministic: no retry
        distill = next(s for s in records.trial_stages(trial.id) if s.kind == "distill")
        assert distill.status == "failed" and "diverged at step 2" in distill.error
        assert any("failed" in e.message and e.level == "error" for e in records.events("tiny-lr"))
    parents, children = split_runs(mlflow_runs(workspace, "tiny-lr"))
    assert len(parents) == 1 and parents[0].info.status == "FAILED"
    assert children[bad["key"]].info.status == "FAILED"
    assert children[good["key"]].info.status == "FINISHED"

    status = CliRunner().invoke(
        main, ["status", "tiny-lr", "--db", f"sqlite:///{workspace}/.ablate/ablate.db"]
    )
    assert status.exit_code == 0, status.output
    assert "failed 1" in status.output and "completed 1" in status.output
    flat = " ".join(status.output.split())
    assert "diverged at step 2" in flat
    as_json = CliRunner().invoke(
        main, ["status", "tiny-lr", "--json", "--db", f"sqlite:///{workspace}/.ablate/ablate.db"]
    )
    errors = {t["key"]: t["error"] for t in json.loads(as_json.stdout)["trials"]}
    assert errors[good["key"]] is None and errors[bad["key"]] == bad["error"]
