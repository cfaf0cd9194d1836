"""`ablate report` and `ablate ui` from the command line: files, JSON, exit 2 on bad input with nothing
written, and the MLflow UI serving the experiment's trials (REST API, and a headless Debian chromium on
the printed comparison URL and on the experiment's page, whose screenshots are kept in test-artifacts/)."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner

from ablate.cli import main
from tests.report.known import build_known


def _invoke(args, cwd):
    old = os.getcwd()
    os.chdir(cwd)
    try:
        return CliRunner().invoke(main, args, catch_exceptions=False)
    finally:
        os.chdir(old)


def _small(records, name="small", *, mlflow_uri=None, finish=True):
    """Four trials: target x distill.loss, one seed (so every comparison has too few pairs)."""
    spec = f"name: {name}\ndescription: Small.\nteacher: {{model: 'builtin:tiny-mistral'}}\n"
    if mlflow_uri:
        spec += f"tracking: {{mlflow: '{mlflow_uri}'}}\n"
    records.upsert_experiment(name, spec, "h" + name)
    keys = []
    for i, (target, loss) in enumerate(
        [("width", "kld"), ("width", "ce"), ("depth", "kld"), ("depth", "ce")]
    ):
        key = f"{name[:3]}{i:09d}"
        info = records.upsert_trial(name, key, {"target": target, "distill.loss": loss, "seed": 0})
        keys.append((info.id, key))
        if finish:
            records.set_trial_status(info.id, "running")
            records.log_final_metrics(info.id, {"lm_loss": 3.0 + i * 0.1, "perplexity": 20.0 + i})
            records.set_trial_status(info.id, "completed")
    return keys


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    from ablate.track.db import connect

    folder = tmp_path_factory.mktemp("cli")
    url = f"sqlite:///{folder}/ablate.db"
    records = connect(url)
    build_known(records)
    _small(records)
    _small(records, "unfinished", finish=False)
    records.close()
    return url


def test_report_writes_files_and_prints_a_summary(db, tmp_path):
    result = _invoke(["report", "small", "--db", db], tmp_path)
    assert result.exit_code == 0, result.output
    out = tmp_path / "reports" / "small"
    assert (out / "report.md").is_file() and (out / "loss_vs_tokens.png").is_file()
    assert "target: width vs depth" in result.output and "too few pairs" in result.output
    assert "best trial sma000000000" in result.output and "wrote reports/small/report.md" in result.output


def test_report_json_with_metric_and_out(db, tmp_path):
    args = ["report", "small", "--db", db, "--out", "elsewhere", "--json", "--metric", "perplexity"]
    result = _invoke(args, tmp_path)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["experiment"] == "small" and data["metric"] == "perplexity" and not data["higher_is_better"]
    assert len(data["trials"]) == 4 and [f["title"] for f in data["findings"]] == [
        "target: width vs depth",
        "distill.loss: kld vs ce",
    ]
    f = data["findings"][1]
    assert f["verdict"] == "too few pairs" and f["n"] == 2 and f["mean_diff"] == pytest.approx(-1.0)
    assert f["leader"] == "kld" and f["practice"] == "BP5" and f["agreement"] == "inconclusive"
    assert data["best_trial"]["key"] == "sma000000000" and data["recipe"]["trial"] == "sma000000000"
    assert (
        data["files"][0] == "elsewhere/small/report.md" and (tmp_path / "elsewhere/small/report.md").is_file()
    )
    assert data["mlflow"]["compare_url"] is None  # no MLflow runs recorded for this experiment


@pytest.mark.parametrize(
    "args, message",
    [
        (["report", "nope"], "no experiment named 'nope' in the records (known: known, small, unfinished)"),
        (["report", "unfinished"], "has no finished trials yet (pending 4)"),
        (["report", "small", "--metric", "mmlu"], "no trial of 'small' logged the metric 'mmlu'"),
    ],
)
def test_bad_input_exits_2_with_a_message_and_writes_nothing(db, tmp_path, args, message):
    result = CliRunner().invoke(main, [*args, "--db", db, "--out", str(tmp_path / "r")])
    assert result.exit_code == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "r").exists()


def test_missing_database_exits_2_and_creates_nothing(tmp_path):
    result = _invoke(["report", "quickstart"], tmp_path)
    assert result.exit_code == 2 and "no results database at sqlite:///.ablate/ablate.db" in result.output
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- ablate ui


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, data: bytes | None = None) -> bytes:
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"} if data else {})
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.read()


@pytest.fixture(scope="module")
def ui_server(tmp_path_factory):
    """`ablate ui small` on a real MLflow store (one run per trial, named and with metrics named as a
    submission writes them: ablate.track.mlflow_names), started on a free port, stopped after."""
    from ablate.track.db import connect
    from ablate.track.mlflow import MlflowMirror
    from ablate.track.mlflow_names import eval_metric, mlflow_rows, trial_run_name

    folder = tmp_path_factory.mktemp("ui")
    store = f"sqlite:///{folder}/.ablate/mlflow.db"
    db = f"sqlite:///{folder}/.ablate/ablate.db"
    records = connect(db)
    _small(records, mlflow_uri=store)
    mirror = MlflowMirror(store, "small")
    records.set_experiment_mlflow("small", mirror.experiment_id, mirror.parent_run())
    names = {}
    for trial in records.trials("small"):
        loss = trial.overrides["distill.loss"]
        names[trial.key] = trial_run_name(trial.overrides)
        params = {"distill.loss": loss, "target": trial.overrides["target"], "seed": 0}
        run_id = mirror.child_run(
            trial.key,
            params,
            run_name=names[trial.key],
            first_metrics=[(eval_metric("lm_loss"), 0, math.nan)],
        )
        mirror.log_step_metrics(run_id, mlflow_rows([("loss", 1, 2.0), ("lr", 1, 1e-3)], loss))
        mirror.log_final_metrics(
            run_id, {eval_metric(k): v for k, v in records.final_metrics(trial.id).items()}, step=1
        )
        mirror.set_terminated(run_id, "FINISHED")
        records.set_trial_mlflow_run(trial.id, run_id)
    records.close()
    port = _free_port()
    ablate = str(Path(sys.executable).parent / "ablate")
    proc = subprocess.Popen(
        [ablate, "ui", "small", "--port", str(port)],
        cwd=folder,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        lines = [proc.stdout.readline() for _ in range(3)]
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while True:
            try:
                _get(base + "/health")
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"mlflow server did not start: {lines}") from None
                time.sleep(0.5)
        yield {"lines": lines, "base": base, "names": names, "folder": folder, "port": port}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.mark.slow
def test_ui_serves_the_experiment_and_prints_the_comparison_url(ui_server):
    lines, base = ui_server["lines"], ui_server["base"]
    assert lines[0].startswith(f"MLflow UI on sqlite:///{ui_server['folder']}/.ablate/mlflow.db at {base}")
    assert lines[1].strip() == "4 trials of 'small' in the run-comparison view:"
    url = lines[2].strip()
    assert url.startswith(f"{base}/#/compare-runs?runs=%5B%22") and url.endswith(
        "&experiments=%5B%221%22%5D&workflowType=machine_learning"  # MLflow's model-training view
    )
    assert b"<title>MLflow</title>" in _get(base + "/") or b"MLflow" in _get(base + "/")
    body = json.dumps({"experiment_ids": ["1"], "max_results": 100}).encode()
    runs = json.loads(_get(base + "/ajax-api/2.0/mlflow/runs/search", body))["runs"]
    by_name = {r["info"]["run_name"]: r for r in runs}
    assert set(ui_server["names"].values()) == {"width-kld-s0", "width-ce-s0", "depth-kld-s0", "depth-ce-s0"}
    for name in ui_server["names"].values():
        assert name in by_name and by_name[name]["info"]["run_id"] in url
        metrics = [m["key"] for m in by_name[name]["data"]["metrics"]]
        assert metrics[0] == "eval/lm_loss"  # what the compare view preselects: the first shared metric
        assert "loss" not in metrics and ("train/kl" in metrics) != ("train/ce" in metrics)


@pytest.mark.slow
def test_ui_refuses_a_busy_port_and_an_unknown_experiment(ui_server, tmp_path):
    folder = ui_server["folder"]
    busy = _invoke(["ui", "small", "--port", str(ui_server["port"])], folder)
    assert busy.exit_code == 2 and "is in use" in busy.output
    unknown = _invoke(["ui", "nope"], folder)
    assert unknown.exit_code == 2 and "no experiment named 'nope'" in unknown.output


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Where the screenshots go: one fixed folder that CI keeps (.ci/run prints it), or $ABLATE_TEST_ARTIFACTS.
ARTIFACTS = Path(os.environ.get("ABLATE_TEST_ARTIFACTS") or Path(__file__).parents[2] / "test-artifacts")


@pytest.fixture(scope="module")
def browser() -> str:
    """Debian's chromium. Missing, the browser tests fail under CI ($CI or $ABLATE_REQUIRE_BROWSER, which
    .ci/run sets after installing it) and are skipped elsewhere, saying how to get it; before the MLflow
    server starts (listed before it, this module-scoped fixture is made first)."""
    if CHROMIUM is not None:
        return CHROMIUM
    why = "Debian's chromium is not installed (apt-get install chromium)"
    if os.environ.get("ABLATE_REQUIRE_BROWSER") or os.environ.get("CI"):
        pytest.fail(f"{why}; CI must run the browser test (.ci/run installs it)")
    pytest.skip(why)


def _render(browser: str, url: str, shot: Path, profile: Path) -> str:
    """The page's DOM after its scripts ran (virtual time: no sleeping), and its screenshot in `shot`."""
    shot.parent.mkdir(parents=True, exist_ok=True)
    shot.unlink(missing_ok=True)
    args = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--no-first-run", f"--user-data-dir={profile}", "--window-size=1400,1000",
            "--virtual-time-budget=30000", f"--screenshot={shot}", "--dump-dom", url]  # fmt: skip
    run = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert shot.is_file() and shot.read_bytes()[:4] == b"\x89PNG", run.stderr[-2000:]
    return run.stdout


@pytest.mark.slow
def test_browser_shows_every_trial_by_name_in_the_comparison_view(browser, ui_server, tmp_path):
    url = ui_server["lines"][2].strip()
    dom = _render(browser, url, ARTIFACTS / "ablate_ui_compare_runs.png", tmp_path / "profile")
    for name in ui_server["names"].values():
        assert name in dom, f"run {name} not on the comparison page"
    assert "Comparing 4 Runs from 1 Experiment" in dom and "eval/lm_loss" in dom


@pytest.mark.slow
def test_browser_opens_the_experiment_on_its_runs(browser, ui_server, tmp_path):
    """The experiment's link (`ablate ui` without trials to compare) opens MLflow's runs table (model
    training), not the GenAI overview, which lists no runs and is where MLflow 3.17 opens otherwise."""
    from ablate.track.urls import experiment_url

    url = experiment_url(ui_server["base"], "1")
    dom = _render(browser, url, ARTIFACTS / "ablate_ui_experiment.png", tmp_path / "profile")
    text = " ".join(re.sub(r"<[^>]+>", " ", dom).split())
    # the runs table (the parent run, its four trials nested under it), not the GenAI overview
    assert "Run Name" in text and "5 matching runs" in text and "small" in text, text[-2000:]
    assert "Detect Issues" not in text


def test_ui_target_picks_the_only_experiment_and_a_remote_store_only_prints(tmp_path):
    from ablate.commands.report import ui_target
    from ablate.track.db import connect

    url = f"sqlite:///{tmp_path}/ablate.db"
    records = connect(url)
    _small(records, "remote", mlflow_uri="http://mlflow.example:5000")
    records.set_experiment_mlflow("remote", "12", "parent")
    for trial in records.trials("remote"):
        records.set_trial_mlflow_run(trial.id, f"r{trial.id}")
    target = ui_target(records, None)  # the only experiment
    assert target == {
        "tracking_uri": "http://mlflow.example:5000",
        "experiment_id": "12",
        "run_ids": ["r1", "r2", "r3", "r4"],
        "name": "remote",
    }
    _small(records, "other")
    assert ui_target(records, None)["experiment_id"] is None  # several: the experiment list
    records.close()
    result = _invoke(["ui", "remote", "--db", url], tmp_path)
    assert result.exit_code == 0, result.output
    assert "tracking.mlflow is an MLflow server" in result.output
    assert "http://mlflow.example:5000/#/compare-runs?runs=%5B%22r1%22%2C%22r2%22" in result.output
    assert result.output.strip().endswith("&workflowType=machine_learning")


def test_report_is_attached_to_the_experiments_mlflow_parent_run(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from ablate.track.db import connect
    from ablate.track.mlflow import MlflowMirror
    from tests.report.known import build_known

    monkeypatch.chdir(tmp_path)
    records = connect(f"sqlite:///{tmp_path}/.ablate/ablate.db")
    build_known(records, "attached")
    mirror = MlflowMirror("sqlite:///.ablate/mlflow.db", "attached")
    parent = mirror.parent_run()
    records.set_experiment_mlflow("attached", mirror.experiment_id, parent)
    records.close()
    result = CliRunner().invoke(
        main, ["report", "attached", "--db", "sqlite:///.ablate/ablate.db", "--out", "out"]
    )
    assert result.exit_code == 0, result.output
    client = MlflowClient(mirror.tracking_uri)
    names = sorted(a.path for a in client.list_artifacts(parent, "report"))
    assert "report/report.md" in names and any(n.endswith(".png") for n in names)
