"""MlflowMirror against a real MLflow store (SQLite file and PostgreSQL): one parent per experiment, one
nested child per trial, both found again on re-runs; metrics through log_batch only."""

from __future__ import annotations

import logging
import uuid

import pytest

from ablate.track.mlflow import MlflowMirror, _prepare_tracking_uri, mlflow_status

# MLflow 3.17's own store uses an SQLAlchemy option deprecated in SQLAlchemy 2.1: not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy:DeprecationWarning")


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def tracking(request, tmp_path_factory):
    """(tracking URI, artifact folder) of an MLflow store shared by this module's tests (creating one
    costs seconds); every test uses its own experiment name."""
    root = tmp_path_factory.mktemp("mlflow")
    if request.param == "sqlite":
        yield f"sqlite:///{root}/mlflow.db", None
    else:
        with request.getfixturevalue("make_pg_schema")() as url:
            yield url, (root / "artifacts").as_uri()


def _mirror(tracking, name):
    uri, artifacts = tracking
    return MlflowMirror(uri, name, artifact_location=artifacts)


def _name():
    return f"exp-{uuid.uuid4().hex[:8]}"


def _all_runs(m):
    return m.client.search_runs([m.experiment_id], max_results=1000)


def test_parent_and_children_created_once_and_reused(tracking):
    name = _name()
    m = _mirror(tracking, name)
    parent = m.parent_run()
    assert m.parent_run() == parent
    c1 = m.child_run("key-a", {"distill.loss": "kld", "sweep.seed": 0}, {"ablate.stage.prune": "p1"})
    c2 = m.child_run("key-b", {"distill.loss": "ce", "sweep.seed": 0})
    assert c1 != c2 and m.child_run("key-a") == c1

    # a later submission: a new mirror (new process) finds the same runs instead of creating new ones
    again = _mirror(tracking, name)
    assert again.parent_run() == parent
    assert again.child_run("key-a", {"distill.loss": "kld", "sweep.seed": 0}) == c1
    assert again.child_run("key-b") == c2
    assert again.children() == {"key-a": c1, "key-b": c2}

    runs = _all_runs(again)
    assert len(runs) == 3
    by_id = {r.info.run_id: r for r in runs}
    assert (
        by_id[parent].data.tags["ablate.role"] == "parent"
        and "mlflow.parentRunId" not in by_id[parent].data.tags
    )
    for key, rid in (("key-a", c1), ("key-b", c2)):
        run = by_id[rid]
        assert run.info.run_name == key
        assert run.data.tags["mlflow.parentRunId"] == parent
        assert run.data.tags["ablate.trial_key"] == key
    assert by_id[c1].data.params == {"distill.loss": "kld", "sweep.seed": "0"}
    assert by_id[c1].data.tags["ablate.stage.prune"] == "p1"


def test_same_trial_key_in_two_experiments_gets_two_runs(tracking):
    a, b = _mirror(tracking, _name()), _mirror(tracking, _name())
    assert a.child_run("k") != b.child_run("k")
    assert a.parent_run() != b.parent_run()


def test_metrics_go_through_log_batch_in_chunks(tracking, monkeypatch):
    m = _mirror(tracking, _name())
    run = m.child_run("k", {f"p{i}": i for i in range(150)})  # 150 params: two batches
    calls = []
    real = m.client.log_batch

    def spy(run_id, metrics=(), params=(), tags=(), synchronous=None):
        calls.append((len(metrics), len(params), len(tags)))
        return real(run_id, metrics=metrics, params=params, tags=tags, synchronous=synchronous)

    monkeypatch.setattr(m.client, "log_batch", spy)

    def no_single(*a, **k):
        raise AssertionError("per-key MLflow call")

    monkeypatch.setattr(m.client, "log_metric", no_single)
    monkeypatch.setattr(m.client, "log_param", no_single)

    rows = [("train/loss", s, 10.0 / (s + 1)) for s in range(2300)]
    rows += [{"name": "train/tokens", "step": s, "value": 512 * s} for s in range(5)]
    assert m.log_step_metrics(run, rows) == 2305
    assert [c[0] for c in calls] == [1000, 1000, 305]
    assert m.log_final_metrics(run, {"eval/ppl": 12.5, "eval/loss": float("nan")}) == 2
    m.set_tags(run, {f"ablate.stage.{i}": "h" for i in range(120)})
    assert calls[-2:] == [(0, 0, 100), (0, 0, 20)]

    hist = m.client.get_metric_history(run, "train/loss")
    assert len(hist) == 2300 and sorted(h.step for h in hist) == list(range(2300))
    data = m.client.get_run(run).data
    assert data.metrics["eval/ppl"] == 12.5 and len(data.params) == 150
    assert data.metrics["train/tokens"] == 512 * 4


def test_status_artifacts_and_param_conflicts(tracking, tmp_path, caplog):
    m = _mirror(tracking, _name())
    run = m.child_run("k", {"lr": 0.001})
    m.set_terminated(run, "failed")
    assert m.client.get_run(run).info.status == "FAILED"
    m.set_status(run, "running")  # retried
    assert m.client.get_run(run).info.status == "RUNNING"
    m.set_terminated(run, "completed")
    assert m.client.get_run(run).info.status == "FINISHED"
    m.set_terminated(m.parent_run(), "FINISHED")

    with caplog.at_level(logging.WARNING, logger="ablate.track.mlflow"):
        assert m.child_run("k", {"lr": 0.01, "new": 1}) == run  # params are immutable in MLflow: kept
    assert "param lr" in caplog.text
    assert m.client.get_run(run).data.params == {"lr": "0.001", "new": "1"}

    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "report.md").write_text("# report")
    (tmp_path / "note.txt").write_text("hi")
    m.log_artifact(m.parent_run(), tmp_path / "report", "report")
    m.log_artifact(run, tmp_path / "note.txt")
    assert [a.path for a in m.client.list_artifacts(m.parent_run(), "report")] == ["report/report.md"]
    assert [a.path for a in m.client.list_artifacts(run)] == ["note.txt"]


def test_readable_run_names_unique_under_the_parent_and_first_metrics_first(tracking):
    """A trial's run is named as given; a second trial with the same name (the spec changed, its values
    did not) gets a piece of its key; the first metrics come first in the run's metrics, which is the
    order MLflow's compare view picks its default metric from."""
    m = _mirror(tracking, _name())
    first = [("eval/lm_loss", 0, float("nan")), ("student/params", 0, 1234.0)]
    a = m.child_run("aaaaaa111111", {"p": 1}, run_name="width-kld-s0", first_metrics=first)
    m.log_step_metrics(a, [("train/kl", 1, 2.0), ("train/lr", 1, 0.1), ("eval/lm_loss", 1, 3.5)])
    b = m.child_run("bbbbbb222222", run_name="width-kld-s0", first_metrics=first)
    assert (
        m.child_run("aaaaaa111111", run_name="other", first_metrics=[("x", 0, 1.0)]) == a
    )  # found, not renamed
    again = _mirror(tracking, m.experiment_name)  # a later submission finds both by key
    assert again.child_run("bbbbbb222222", run_name="width-kld-s0") == b
    runs = {r.info.run_id: r for r in _all_runs(m)}
    assert runs[a].info.run_name == "width-kld-s0" and runs[b].info.run_name == "width-kld-s0-bbbbbb"
    assert runs[m.parent_run()].info.run_name == m.experiment_name
    data = m.client.get_run(a).data
    assert list(data.metrics)[:2] == ["eval/lm_loss", "student/params"] and "x" not in data.metrics
    assert data.metrics["eval/lm_loss"] == 3.5  # the latest point, not the placeholder at step 0


def test_experiment_opens_in_the_model_training_view(tracking):
    """MLflow 3 opens an experiment on its GenAI overview unless mlflow.experimentKind says otherwise:
    set on a new experiment and on one made before ablate set it; a kind chosen in the UI is kept."""
    m = _mirror(tracking, _name())
    assert (
        m.client.get_experiment(m.experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
    )
    uri, artifacts = tracking
    from mlflow.tracking import MlflowClient

    client = MlflowClient(_prepare_tracking_uri(uri))
    old, chosen = _name(), _name()
    old_id = client.create_experiment(old, artifact_location=artifacts)
    chosen_id = client.create_experiment(
        chosen, artifact_location=artifacts, tags={"mlflow.experimentKind": "genai_development"}
    )
    _mirror(tracking, old).parent_run()
    _mirror(tracking, chosen).parent_run()
    assert client.get_experiment(old_id).tags["mlflow.experimentKind"] == "custom_model_development"
    assert client.get_experiment(chosen_id).tags["mlflow.experimentKind"] == "genai_development"


def test_build_run_is_nested_and_found_again_by_its_recipe(tracking):
    m = _mirror(tracking, _name())
    trial = m.child_run("cccccc333333", run_name="width-kld-s0")
    run = m.build_run("recipe1", "build-width-kld-s0-4k", {"tokens": 4000}, {"ablate.checkpoint": "/a"})
    again = _mirror(tracking, m.experiment_name)
    assert again.build_run("recipe1", "ignored", {"tokens": 4000}, {"ablate.checkpoint": "/b"}) == run
    assert again.children() == {"cccccc333333": trial}  # a build run is not a trial
    got = m.client.get_run(run)
    assert got.info.run_name == "build-width-kld-s0-4k" and got.data.tags["ablate.role"] == "build"
    assert (
        got.data.tags["mlflow.parentRunId"] == m.parent_run() and got.data.tags["ablate.recipe"] == "recipe1"
    )
    assert got.data.tags["ablate.checkpoint"] == "/b" and got.data.params == {"tokens": "4000"}
    assert m.build_run("recipe2", "build-width-kld-s0-4k") != run


def test_deleted_experiment_is_restored(tracking):
    name = _name()
    m = _mirror(tracking, name)
    parent = m.parent_run()
    m.client.delete_experiment(m.experiment_id)
    again = _mirror(tracking, name)
    assert again.parent_run() == parent


def test_status_names_and_uris(tmp_path, monkeypatch):
    assert mlflow_status("completed") == "FINISHED" and mlflow_status("cancelled") == "KILLED"
    assert mlflow_status("FAILED") == "FAILED"
    with pytest.raises(ValueError):
        mlflow_status("exploded")
    monkeypatch.chdir(tmp_path)
    assert _prepare_tracking_uri("sqlite:///.ablate/mlflow.db") == f"sqlite:///{tmp_path}/.ablate/mlflow.db"
    assert (tmp_path / ".ablate").is_dir()
    assert _prepare_tracking_uri("postgresql://u@h/d") == "postgresql+psycopg://u@h/d"
    assert _prepare_tracking_uri("http://mlflow:5000") == "http://mlflow:5000"


def _open_and_log(uri, name, rows, barrier, queue):
    """One process: a mirror of its own (fresh store: MLflow's schema), the parent, one child, rows."""
    try:
        barrier.wait()
        m = MlflowMirror(uri, name)
        run = m.child_run("k1", params={"p": 1})
        m.log_step_metrics(run, rows)
        queue.put(("ok", m.parent_run(), run))
    except BaseException as e:  # report, never hang the parent
        queue.put(("error", f"{type(e).__name__}: {e}"))


@pytest.mark.timeout(300)
def test_processes_opening_a_fresh_store_at_once(tmp_path):
    """Three processes open a store that does not exist yet and log the same points to one trial: MLflow's
    schema is created once (no process fails), one parent, one child, and every point once; a later
    mirror (a new submission after the records were lost) logging the curve again adds nothing."""
    import multiprocessing as mp

    uri, name, n = f"sqlite:///{tmp_path}/fresh/mlflow.db", "exp-fresh", 3
    rows = [("loss", s, 1.0 / s) for s in range(1, 6)]
    ctx = mp.get_context("spawn")
    barrier, queue = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_open_and_log, args=(uri, name, rows, barrier, queue)) for _ in range(n)]
    for p in procs:
        p.start()
    got = [queue.get(timeout=240) for _ in procs]
    for p in procs:
        p.join(30)
    assert all(g[0] == "ok" for g in got), got
    assert len({g[1] for g in got}) == 1 and len({g[2] for g in got}) == 1, got
    again = MlflowMirror(uri, name)
    run = again.child_run("k1")
    assert again.log_step_metrics(run, rows + [("loss", 6, 0.1)]) == 1
    assert sorted(m.step for m in again.client.get_metric_history(run, "loss")) == [1, 2, 3, 4, 5, 6]
    assert len(_all_runs(again)) == 2
