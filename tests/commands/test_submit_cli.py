"""`ablate submit`, `ablate status` and `ablate cancel` without Ray: exit codes, what status shows, the
progress lines. The real submissions are in tests/run (test_submit_e2e.py and friends)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from rich.console import Console

from ablate.cli import main
from ablate.commands.submit import LiveProgress

SPECS = Path(__file__).parents[2] / "specs"


@pytest.fixture
def db(tmp_path) -> str:
    """A results database with one experiment: a completed trial and a failed one."""
    from ablate.track.db import connect

    url = f"sqlite:///{tmp_path}/ablate.db"
    with connect(url) as records:
        records.upsert_experiment("exp", "name: exp\n", "h1")
        ok = records.upsert_trial("exp", "k-ok", {"distill.lr": 0.001})
        bad = records.upsert_trial("exp", "k-bad", {"distill.lr": 1e12})
        for t in (ok, bad):
            records.set_trial_status(t.id, "running")
        records.log_final_metrics(ok.id, {"lm_loss": 5.2, "perplexity": 181.3})
        records.set_trial_status(ok.id, "completed")
        error = "distill failed: TrainError: training diverged at step 2 of 4: the loss is nan (lr 1e+12)"
        records.set_trial_status(bad.id, "failed", error=error)
        records.log_event(f"trial k-bad failed: {error}", level="error", experiment="exp", trial_id=bad.id)
    return url


def test_submit_bad_spec_exits_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text((SPECS / "tiny.yaml").read_text().replace("seq_len: 64", "seq_len: -1"))
    res = CliRunner().invoke(main, ["submit", str(bad)])
    assert res.exit_code == 2
    assert "data.seq_len" in res.output


def test_submit_bad_spec_json(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text((SPECS / "tiny.yaml").read_text().replace("lr: 1e-3", "lr: fast"))
    res = CliRunner().invoke(main, ["submit", str(bad), "--json"])
    assert res.exit_code == 2
    out = json.loads(res.stdout)
    assert out["valid"] is False and any("distill.lr" in p for p in out["problems"])


def test_submit_json_prints_a_result_when_the_submission_cannot_start(tmp_path):
    """A submission that stops before it has a result (here: its database refuses connections) still
    prints one JSON object on stdout under --json, with ok false and the reason; exit 2."""
    spec = tmp_path / "unreachable.yaml"
    text = (SPECS / "tiny.yaml").read_text()
    spec.write_text(
        text.replace("db: sqlite:///.ablate/ablate.db", "db: postgresql://nobody@127.0.0.1:9/none")
    )
    res = CliRunner().invoke(main, ["submit", str(spec), "--json"])
    assert res.exit_code == 2, res.output
    out = json.loads(res.stdout)
    assert out["ok"] is False and out["experiment"] == "tiny" and "results database" in out["error"]
    assert "error: cannot open the results database" in res.stderr


def test_status_shows_why_a_trial_failed(db):
    res = CliRunner().invoke(main, ["status", "exp", "--db", db])
    assert res.exit_code == 0, res.output
    assert "completed 1" in res.output and "failed 1" in res.output
    flat = " ".join(res.output.split())
    assert "k-bad failed: distill failed: TrainError: training diverged at step 2 of 4" in flat
    assert "recent warnings and errors" in res.output


def test_status_json(db):
    res = CliRunner().invoke(main, ["status", "exp", "--db", db, "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["counts"]["completed"] == 1 and out["counts"]["failed"] == 1
    trials = {t["key"]: t for t in out["trials"]}
    assert trials["k-ok"]["metrics"]["perplexity"] == pytest.approx(181.3)
    assert "diverged at step 2" in trials["k-bad"]["error"]
    assert [e["level"] for e in out["events"]] == ["error"]


def test_status_lists_experiments(db):
    res = CliRunner().invoke(main, ["status", "--db", db, "--json"])
    assert res.exit_code == 0
    assert [e["name"] for e in json.loads(res.stdout)] == ["exp"]


def test_status_unknown_experiment_exits_2(db):
    res = CliRunner().invoke(main, ["status", "nope", "--db", db])
    assert res.exit_code == 2
    assert "no experiment named 'nope'" in res.output and "exp" in res.output


def test_status_without_a_database_does_not_create_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(main, ["status"])
    assert res.exit_code == 2
    assert "no results database" in res.output and "--db" in res.output
    assert not (tmp_path / ".ablate").exists()


def test_cancel_sets_the_flag_of_a_running_submission(db):
    """A trial held by a live submission (this process's lease) is something to cancel."""
    from ablate.track.db import connect
    from ablate.track.leases import Leases

    with connect(db) as records:
        running = records.upsert_trial("exp", "k-run", {"distill.lr": 0.002})
        records.set_trial_status(running.id, "running")
        leases = Leases(records)
        assert leases.claim_trial(running.id).state == "claimed"
        res = CliRunner().invoke(main, ["cancel", "exp", "--db", db])
        assert res.exit_code == 0 and "cancel requested for 'exp'" in res.output
        assert records.cancel_requested("exp")
        res = CliRunner().invoke(main, ["cancel", "exp", "--db", db, "--json"])
        assert res.exit_code == 0 and json.loads(res.stdout) == {
            "experiment": "exp",
            "cancel_requested": True,
            "submissions": 1,
        }
        leases.release_all()


def test_cancel_with_nothing_running_says_so_and_exits_2(db):
    from ablate.track.db import connect

    res = CliRunner().invoke(main, ["cancel", "exp", "--db", db])
    assert res.exit_code == 2
    assert "nothing to cancel: no submission of 'exp' is running" in res.stderr
    res = CliRunner().invoke(main, ["cancel", "exp", "--db", db, "--json"])
    out = json.loads(res.stdout)
    assert res.exit_code == 2 and out["ok"] is False and out["exit_code"] == 2
    assert "nothing to cancel" in out["error"]
    with connect(db) as records:
        assert not records.cancel_requested("exp")


def test_errors_under_json_are_json(db):
    """A command's own error (unknown experiment) and click's (a bad option value) both print one JSON
    object on stdout under --json, with exit 2; without --json they stay plain text."""
    res = CliRunner().invoke(main, ["status", "nope", "--db", db, "--json"])
    assert res.exit_code == 2
    assert "no experiment named 'nope'" in json.loads(res.stdout)["error"]
    res = CliRunner().invoke(main, ["ui", "--port", "0", "--json", "--db", db])
    assert res.exit_code == 2
    out = json.loads(res.stdout)
    assert out["ok"] is False and "--port" in out["error"]
    res = CliRunner().invoke(main, ["status", "nope", "--db", db])
    assert res.exit_code == 2 and res.stdout == "" and "error: no experiment named 'nope'" in res.stderr


def test_status_shows_a_running_trials_progress(db):
    """What the submission recorded of a running trial (its per-step metrics) is where status says it is:
    step of steps (from the trial's budget), loss, tokens/s, ETA."""
    from ablate.track.db import connect

    config = {"distill": {"tokens": 8000, "global_batch": 8}, "data": {"seq_len": 125}}  # 8 steps of 1000
    with connect(db) as records:
        t = records.upsert_trial("exp", "k-run", {"distill.lr": 0.002}, config=config)
        records.set_trial_status(t.id, "running")
        rows = [(name, step, value) for step in (1, 2) for name, value in
                (("loss", 4.0 / step), ("tokens", 1000.0 * step), ("tokens_per_s", 500.0))]  # fmt: skip
        records.log_metrics(t.id, rows)
    res = CliRunner().invoke(main, ["status", "exp", "--db", db, "--json"])
    progress = {t["key"]: t for t in json.loads(res.stdout)["trials"]}["k-run"]["progress"]
    assert progress == {
        "stage": "distill",
        "step": 2,
        "steps": 8,
        "loss": 2.0,
        "tokens": 2000.0,
        "tokens_per_s": 500.0,
        "eta_s": 12.0,  # 6 steps x 1000 tokens / 500 tokens/s
    }
    res = CliRunner().invoke(main, ["status", "exp", "--db", db])
    assert "k-run running: distill step 2/8, loss 2, 500 tok/s, ETA 12s" in " ".join(res.output.split())


def test_live_progress_lines_without_a_terminal():
    buf = io.StringIO()
    console = Console(file=buf, width=120, force_terminal=False)
    with LiveProgress(console, trials=2) as progress:
        progress("stage_start", {"kind": "teacher", "hash": "teacher-1"})
        progress("stage_done", {"kind": "teacher", "hash": "teacher-1", "facts": {"seconds": 1.25}})
        progress("trial_start", {"key": "k1"})
        progress("trial_step", {"key": "k1", "step": 1, "steps": 4, "loss": 2.5})
        progress("trial_step", {"key": "unknown", "step": 1, "steps": 4, "loss": None})
        progress("trial_done", {"key": "k1", "metrics": {"perplexity": 181.25}, "resumed_from_step": 20})
        progress("trial_done", {"key": "k2", "metrics": {}, "reused": True})  # recorded from artifacts
        progress("trial_failed", {"key": "k3", "error": "TrainError: diverged"})
    out = buf.getvalue()
    assert "teacher-1 done in 1.2s" in out
    assert "k1 done" in out and "ppl 181.2" in out and "resumed from step 20" in out
    assert "k2 done" in out and "existing artifacts" in out
    assert "k3 failed: TrainError: diverged" in out
