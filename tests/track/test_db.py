"""Records: schema, migrations, and every operation the executor and the CLI use (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
import math

import pytest
from sqlalchemy import text

from ablate.errors import RunError
from ablate.track.db import (
    FINAL_STEP,
    STATUSES,
    Base,
    UnknownExperiment,
    connect,
    migrations_dir,
    normalize_url,
    redact_url,
)


def _setup(records, name="exp", n_trials=2):
    records.upsert_experiment(name, f"name: {name}\n", "spec-1")
    records.upsert_stage("t0", "teacher", {"model": "builtin:tiny-mistral"})
    records.upsert_stage("i0", "importance", {"samples": 8}, parents=["t0"])
    records.upsert_stage("p0", "prune", {"target": "width"}, parents=["i0"])
    trials = []
    for k in range(n_trials):
        records.upsert_stage(f"d{k}", "distill", {"loss": "kld", "seed": k}, parents=["p0"])
        records.upsert_stage(f"e{k}", "eval", {}, parents=[f"d{k}"])
        trials.append(
            records.upsert_trial(
                name,
                f"key{k}",
                {"sweep.seed": k, "distill.loss": "kld"},
                config={"seed": k},
                stages=["t0", "i0", "p0", f"d{k}", f"e{k}"],
            )
        )
    return trials


# ---------------------------------------------------------------------- URLs


def test_urls_and_redaction(tmp_path):
    u = normalize_url("postgresql://bob:s3cret@db.example:5432/ablate")
    assert u.drivername == "postgresql+psycopg"
    assert normalize_url("postgres://bob@h/d").drivername == "postgresql+psycopg"
    assert normalize_url("postgresql+psycopg2://h/d").drivername == "postgresql+psycopg2"
    assert redact_url(u) == "postgresql+psycopg://bob:***@db.example:5432/ablate"
    assert "s3cret" not in redact_url("postgresql://bob:s3cret@h/d")
    assert "s3cret" not in redact_url("postgresql://h/d?password=s3cret&x=1")
    assert "s3cret" not in redact_url("not a url://bob:s3cret@h")

    f = normalize_url(f"sqlite:///{tmp_path}/a/b/c.db")
    assert f.database == f"{tmp_path}/a/b/c.db" and (tmp_path / "a" / "b").is_dir()
    assert normalize_url(str(tmp_path / "plain.db")).database == str(tmp_path / "plain.db")
    with pytest.raises(RunError, match="unsupported database"):
        normalize_url("mysql://u:pw@h/d")


def test_unreachable_server_error_names_fix_without_password():
    with pytest.raises(RunError) as e:
        connect("postgresql://bob:s3cret@127.0.0.1:1/nothing")
    msg = str(e.value)
    assert "s3cret" not in msg and "bob:***@" in msg and "tracking.db" in msg


def test_memory_sqlite_works():
    with connect("sqlite://") as r:
        _setup(r)
        assert [e.name for e in r.list_experiments()] == ["exp"]


# ---------------------------------------------------------------------- schema


def test_connect_migrates_once_and_schema_matches_models(db_url):
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    r1 = connect(db_url)
    r2 = connect(db_url)
    try:
        assert r1.migrated and not r2.migrated
        with r1.engine.connect() as conn:
            assert conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all() == ["0006"]
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        assert diff == [], f"models and migrations disagree: {diff}"
    finally:
        r1.close()
        r2.close()


def test_migrations_ship_inside_the_package():
    """Everything Alembic needs to upgrade is a module of a regular package under ablate/, so a
    non-editable install (wheel) carries it without package-data."""
    import importlib.resources

    d = migrations_dir()
    assert d.parent.name == "track" and d.parent.parent.name == "ablate"
    for rel in [
        "__init__.py",
        "env.py",
        "versions/__init__.py",
        "versions/0001_initial_schema.py",
        "versions/0002_leases.py",
        "versions/0003_benchmarks.py",
        "versions/0004_tokenize_stage.py",
        "versions/0005_search_candidates.py",
        "versions/0006_align_stage.py",
        "stage_kinds.py",
    ]:
        assert (d / rel).is_file(), rel
    assert importlib.resources.files("ablate.track.migrations").joinpath("env.py").is_file()
    from alembic.script import ScriptDirectory

    from ablate.track.engine import _alembic_config

    assert ScriptDirectory.from_config(_alembic_config()).get_current_head() == "0006"


def test_database_newer_than_code_is_refused(records, db_url):
    with records.engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = 'ffffffff'"))
    with pytest.raises(RunError, match="newer ablate"):
        connect(db_url)


def test_sqlite_pragmas(tmp_path):
    with connect(f"sqlite:///{tmp_path}/x.db", busy_timeout_s=7) as r, r.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 7000
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1


# ---------------------------------------------------------------------- experiments, stages, trials


def test_experiments(records):
    e = records.upsert_experiment("exp", "name: exp\n", "h1")
    assert e.name == "exp" and e.spec_hash == "h1" and e.counts == dict.fromkeys(STATUSES, 0)
    assert e.created_at.tzinfo is not None
    records.request_cancel("exp")
    assert records.cancel_requested("exp")
    e2 = records.upsert_experiment("exp", "name: exp\nx: 1\n", "h2")  # re-submission with a changed spec
    assert e2.id == e.id and e2.spec_hash == "h2" and e2.created_at == e.created_at
    assert not records.cancel_requested("exp")
    records.upsert_experiment("other", "name: other\n", "h3")
    assert [x.name for x in records.list_experiments()] == ["other", "exp"]
    records.set_experiment_mlflow("exp", "7", "run123")
    got = records.get_experiment("exp")
    assert (got.mlflow_experiment_id, got.mlflow_run_id) == ("7", "run123")
    assert records.get_experiment("nope") is None
    with pytest.raises(UnknownExperiment, match="known: exp, other"):
        records.experiment_summary("nope")


def test_stage_lifecycle(records):
    assert records.stage_status("t0") is None
    s = records.upsert_stage("t0", "teacher", {"model": "m"})
    assert (s.status, s.attempts, s.config) == ("pending", 0, {"model": "m"})
    assert records.upsert_stage("t0", "teacher", {"model": "changed?"}).config == {"model": "m"}
    s = records.mark_stage_running("t0", host="node-1")
    assert (s.status, s.attempts, s.host) == ("running", 1, "node-1") and s.started_at is not None
    s = records.mark_stage_failed("t0", "OOM")
    assert (s.status, s.error) == ("failed", "OOM") and s.finished_at is not None
    s = records.mark_stage_running("t0")
    assert (s.status, s.attempts, s.error, s.finished_at) == ("running", 2, None, None)
    s = records.mark_stage_completed("t0", "/store/t0")
    assert (s.status, s.artifact_uri) == ("completed", "/store/t0")
    assert records.stage_status("t0") == "completed"
    assert records.reset_stage("t0").status == "pending"
    with pytest.raises(ValueError):
        records.upsert_stage("x", "bake", {})
    with pytest.raises(RunError, match="upsert_stage"):
        records.mark_stage_running("unknown")


def test_trials_and_links(records):
    t0, t1 = _setup(records)
    assert (t0.status, t0.key, t0.overrides, t0.config) == (
        "pending",
        "key0",
        {"sweep.seed": 0, "distill.loss": "kld"},
        {"seed": 0},
    )
    again = records.upsert_trial("exp", "key0", {"sweep.seed": 0, "distill.loss": "kld"}, stages=["t0"])
    assert again.id == t0.id
    assert [s.kind for s in records.trial_stages(t0.id)] == [
        "teacher",
        "importance",
        "prune",
        "distill",
        "eval",
    ]
    assert {s.hash for s in records.stages("exp")} == {"t0", "i0", "p0", "d0", "e0", "d1", "e1"}

    t = records.set_trial_status(t0.id, "running", mlflow_run_id="r0")
    assert (t.status, t.attempts, t.mlflow_run_id) == ("running", 1, "r0")
    t = records.set_trial_status(t0.id, "failed", error="loss is NaN at step 3")
    assert t.error == "loss is NaN at step 3" and t.duration_s is not None and t.duration_s >= 0
    t = records.set_trial_status(t0.id, "running")
    assert (t.attempts, t.error, t.finished_at) == (2, None, None)
    assert records.set_trial_status(t0.id, "completed").status == "completed"
    # re-registering a finished trial keeps its status (a re-submission never redoes it)
    assert records.upsert_trial("exp", "key0", {"sweep.seed": 0}).status == "completed"
    assert [t.key for t in records.trials("exp", status="pending")] == ["key1"]
    assert records.get_trial("exp", "key1").id == t1.id and records.get_trial("exp", "zzz") is None
    with pytest.raises(ValueError):
        records.set_trial_status(t1.id, "exploded")
    with pytest.raises(RunError, match="not registered"):
        records.upsert_trial("exp", "key9", {}, stages=["missing"])
    with pytest.raises(UnknownExperiment):
        records.upsert_trial("nope", "k", {})


def test_same_key_in_two_experiments(records):
    records.upsert_experiment("a", "", "h")
    records.upsert_experiment("b", "", "h")
    ta = records.upsert_trial("a", "k", {})
    tb = records.upsert_trial("b", "k", {})
    assert ta.id != tb.id


def test_recover_interrupted_and_cancel(records):
    t0, t1 = _setup(records)
    records.mark_stage_running("t0")
    records.mark_stage_completed("t0", "/s/t0")
    records.mark_stage_running("d0")
    records.set_trial_status(t0.id, "running")
    assert records.recover_interrupted("exp") == {"trials": 1, "stages": 1}
    assert records.stage_status("d0") == "pending" and records.stage_status("t0") == "completed"
    t = records.get_trial("exp", "key0")
    assert t.status == "pending" and "interrupted" in t.error and t.attempts == 1
    assert records.request_cancel("exp").cancel_requested


# ---------------------------------------------------------------------- metrics


def test_metrics_batches_upsert_and_nan(records):
    (t0,) = _setup(records, n_trials=1)
    rows = [("train/loss", s, 10.0 / (s + 1)) for s in range(1234)]
    rows += [{"name": "train/tokens", "step": s, "value": s * 512} for s in range(10)]
    assert records.log_metrics(t0.id, rows, batch_size=100) == 1244
    # a resume re-logs steps: the new value replaces the old, no duplicate rows
    records.log_metrics(
        t0.id, [("train/loss", 5, 0.5), ("train/loss", 6, float("nan")), ("train/loss", 7, math.inf)]
    )
    series = records.metric_series(t0.id, "train/loss")
    assert (
        len(series) == 1234
        and series[5] == (5, 0.5)
        and math.isnan(series[6][1])
        and series[7][1] == math.inf
    )
    assert [s for s, _ in series] == list(range(1234))
    records.log_final_metrics(t0.id, {"eval/loss": 2.5, "eval/ppl": 12.2})
    records.log_final_metrics(t0.id, {"eval/ppl": 12.1})
    assert records.final_metrics(t0.id) == {"eval/loss": 2.5, "eval/ppl": 12.1}
    finals = records.trial_metrics(t0.id, final=True)
    assert all(r.final and r.step is None for r in finals)
    assert len(records.trial_metrics(t0.id)) == 1244 + 2
    with pytest.raises(ValueError, match="log_final_metrics"):
        records.log_metrics(t0.id, [("x", FINAL_STEP, 1.0)])
    with pytest.raises(RunError):
        records.log_metrics(999999, [("x", 0, 1.0)])


# ---------------------------------------------------------------------- summary and events


def test_experiment_summary(records):
    t0, t1 = _setup(records)
    records.upsert_trial("exp", "key2", {"sweep.seed": 2})
    records.mark_stage_running("t0")
    records.mark_stage_completed("t0", "/s")
    records.set_trial_status(t0.id, "running")
    records.log_final_metrics(t0.id, {"eval/ppl": 11.0, "eval/loss": float("nan")})
    records.set_trial_status(t0.id, "completed")
    records.set_trial_status(t1.id, "failed", error="non-finite loss at step 2 (lr=10)")
    s = records.experiment_summary("exp")
    assert s.counts == {"pending": 1, "running": 0, "completed": 1, "failed": 1, "cancelled": 0}
    assert s.experiment.counts == s.counts and not s.done
    by_key = {t.key: t for t in s.trials}
    assert by_key["key0"].final_metrics["eval/ppl"] == 11.0 and math.isnan(
        by_key["key0"].final_metrics["eval/loss"]
    )
    assert by_key["key1"].error.startswith("non-finite") and by_key["key1"].final_metrics == {}
    assert s.stages["teacher"] == {"completed": 1} and s.stages["distill"] == {"pending": 2}
    assert list(s.stages) == ["teacher", "importance", "prune", "distill", "eval"]
    d = s.to_dict()
    json.dumps(d, allow_nan=False)  # machine-readable output for --json
    assert d["trials"][0]["final_metrics"]["eval/loss"] is None
    assert [x.counts for x in records.list_experiments()] == [s.counts]


def test_events(records):
    (t0,) = _setup(records, n_trials=1)
    records.upsert_experiment("other", "", "h")
    records.log_event("submission started", experiment="exp")
    records.log_event("stage t0 done", experiment="exp", stage_hash="t0", level="debug")
    records.log_event("trial failed: NaN", trial_id=t0.id, level="error")
    records.log_event("elsewhere", experiment="other")
    ev = records.events("exp")
    assert [e.message for e in ev] == ["submission started", "stage t0 done", "trial failed: NaN"]
    assert ev[2].experiment == "exp" and ev[2].trial_key == "key0" and ev[1].stage_hash == "t0"
    assert [e.message for e in records.events("exp", min_level="warning")] == ["trial failed: NaN"]
    assert [e.message for e in records.events("exp", after_id=ev[1].id)] == ["trial failed: NaN"]
    assert [e.message for e in records.events("exp", limit=1)] == ["trial failed: NaN"]
    assert [e.message for e in records.events("exp", after_id=ev[0].id, limit=1)] == ["stage t0 done"]
    assert [e.message for e in records.events(trial_id=t0.id)] == ["trial failed: NaN"]
    assert len(records.events()) == 4
    with pytest.raises(ValueError):
        records.log_event("x", level="fatal")


def test_upgrade_from_0002_keeps_every_link_between_trials_and_stages(tmp_path):
    """0003 rebuilds the stages table (SQLite cannot alter its CHECK in place); with foreign keys on,
    dropping the old table would cascade into trial_stages. Every row must survive the upgrade."""
    from alembic import command
    from sqlalchemy import text

    from ablate.track.db import connect
    from ablate.track.engine import _alembic_config, make_engine

    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = make_engine(url)
    with engine.begin() as conn:
        command.upgrade(_alembic_config(conn), "0002")
        conn.execute(text("INSERT INTO experiments (id, name, spec_text, spec_hash, created_at, updated_at"
                          ") VALUES (1, 'e', '', 'h', '2026-01-01', '2026-01-01')"))  # fmt: skip
        for i, kind in enumerate(("teacher", "importance", "prune", "distill", "eval"), start=1):
            conn.execute(text(f"INSERT INTO stages (id, hash, kind, config, parents, status, attempts, created_at, "
                              f"updated_at) VALUES ({i}, '{kind}-{i}', '{kind}', '{{}}', '[]', 'completed', 1, "
                              "'2026-01-01', '2026-01-01')"))  # fmt: skip
        conn.execute(text("INSERT INTO trials (id, experiment_id, key, overrides, config, status, attempts, "
                          "created_at, updated_at) VALUES (1, 1, 'k', '{}', '{}', 'completed', 1, '2026-01-01', "
                          "'2026-01-01')"))  # fmt: skip
        conn.execute(text("INSERT INTO trial_stages (trial_id, stage_id) VALUES (1,1),(1,2),(1,3),(1,4),(1,5)"))
    engine.dispose()
    with connect(url) as records:
        assert [s.kind for s in records.trial_stages(1)] == ["teacher", "importance", "prune", "distill", "eval"]
        assert len(records.stages("e")) == 5
        records.upsert_stage("benchmark-x", "benchmark", {"model": "teacher"}, ["teacher-1"])
        records.upsert_stage("tokenize-x", "tokenize", {"source": "builtin:pydoc"}, [])  # kind added by 0004
        with records.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
