"""Fixtures for the executor's integration tests: real Ray, real MLflow, SQLite and PostgreSQL.

What keeps the whole set to a few minutes on two cores:

- one local Ray for every in-process submission (`ray_local`, session scope): a Ray start and the
  workers' imports (torch, transformers) are paid once, not per test;
- `tiny_run`: specs/tiny.yaml submitted once per session into its own workspace (a temp folder holding
  the spec and the test specs, with the spec's relative tracking paths under it). Later tests add
  experiments to that workspace, or copy its shared-stage artifacts, so they run only what they test;
- processes a test starts (a submission it kills, a Ray cluster) run in their own session and are
  stopped by session id, so no other Ray on the machine (another test run, another user) is touched.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import chdir
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).parents[2]
SPECS = ROOT / "specs"
TEST_SPECS = Path(__file__).parent / "specs"
SQLITE_DB = "sqlite:///.ablate/ablate.db"
SQLITE_MLFLOW = "sqlite:///.ablate/mlflow.db"


# ------------------------------------------------------------------------------------------- workspaces
def make_workspace(folder: Path, *, db_url: str | None = None, artifacts_from: Path | None = None) -> Path:
    """`folder` with specs/tiny.yaml and tests/run/specs/*.yaml; `db_url` replaces tracking.db;
    `artifacts_from` copies another workspace's shared-stage artifacts (tokenize, teacher, importance,
    prune, and tiny.yaml's reference evals)."""
    folder.mkdir(parents=True, exist_ok=True)
    tiny = (SPECS / "tiny.yaml").read_text()
    if db_url is not None:
        assert f"db: {SQLITE_DB}" in tiny
        tiny = tiny.replace(f"db: {SQLITE_DB}", f"db: '{db_url}'")
    (folder / "tiny.yaml").write_text(tiny)
    for spec in TEST_SPECS.glob("*.yaml"):
        shutil.copy(spec, folder / spec.name)
    if artifacts_from is not None:
        src, dst = artifacts_from / ".ablate" / "artifacts", folder / ".ablate" / "artifacts"
        dst.mkdir(parents=True, exist_ok=True)
        references = reference_evals(folder / "tiny.yaml")
        for artifact in src.iterdir():
            if artifact.name.split("-")[0] in ("tokenize", "teacher", "importance", "prune") or (
                artifact.name in references
            ):
                shutil.copytree(artifact, dst / artifact.name)
    return folder


def reference_evals(spec: Path) -> set[str]:
    """The hashes of a spec's pruned-eval and teacher-eval stages."""
    from ablate.plan.graph import build_graph
    from ablate.plan.stages import is_reference_eval
    from ablate.spec.validate import load_spec

    graph = build_graph(load_spec(spec).trials)
    return {h for h, stage in graph.stages.items() if is_reference_eval(stage)}


def submit_here(workspace: Path, spec: str, progress: Callable | None = None):
    """`ablate submit SPEC` in-process from `workspace` (on the session's local Ray)."""
    from ablate.run.executor import submit
    from ablate.spec.validate import load_spec

    with chdir(workspace):
        return submit(load_spec(spec), None, progress)


def records_of(workspace: Path, url: str = SQLITE_DB):
    from ablate.track.db import connect

    if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        url = f"sqlite:///{workspace / url[len('sqlite:///') :]}"
    return connect(url)


def mlflow_runs(workspace: Path, experiment: str) -> list[Any]:
    """Every MLflow run of `experiment` in the workspace's MLflow store (deleted ones included)."""
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{workspace / '.ablate' / 'mlflow.db'}")
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    return client.search_runs([exp.experiment_id], run_view_type=ViewType.ALL, max_results=1000)


def mlflow_client(workspace: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(f"sqlite:///{workspace / '.ablate' / 'mlflow.db'}")


def split_runs(runs: list[Any]) -> tuple[list[Any], dict[str, Any]]:
    """(parent runs, trial key -> child run)."""
    parents = [r for r in runs if r.data.tags.get("ablate.role") == "parent"]
    children = [r for r in runs if r.data.tags.get("ablate.role") == "trial"]
    by_key = {r.data.tags["ablate.trial_key"]: r for r in children}
    assert len(by_key) == len(children), "two MLflow runs for one trial"
    return parents, by_key


# ------------------------------------------------------------------------------------------- Ray
def clean_env(**extra: str) -> dict[str, str]:
    """The environment for an `ablate` or `ray` subprocess: no inherited cluster address."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS",)}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


ABLATE = [sys.executable, "-c", "import sys; from ablate.cli import main; sys.exit(main())"]
RAY = str(Path(sys.executable).parent / "ray")


def session_processes(sid: int) -> list[int]:
    """Live (non-zombie) processes of session `sid`: everything a process started with
    `start_new_session=True` spawned, Ray's raylet, GCS and workers included."""
    import psutil

    found = []
    for p in psutil.process_iter(["pid", "status"]):
        try:
            if p.info["status"] != psutil.STATUS_ZOMBIE and os.getsid(p.pid) == sid:
                found.append(p.pid)
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return found


def kill_session(sid: int, sig: int = signal.SIGKILL) -> None:
    for pid in session_processes(sid):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def wait_until(condition: Callable[[], Any], timeout: float, interval: float = 0.5, what: str = "") -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what or condition}")


def submit_then_kill(
    workspace: Path, spec: str, ready: Callable[[], Any], log_path: Path, timeout: float, *args: str
) -> Any:
    """`ablate submit SPEC` in its own session from `workspace`; once `ready()` returns something true, the
    whole session is SIGKILLed (Ray's processes share it) and none may outlive it. Returns what `ready`
    returned; a submission that ends on its own first fails the test with its log."""
    log = log_path.open("w")
    proc = subprocess.Popen(
        [*ABLATE, "submit", spec, *args],
        cwd=workspace,
        env=clean_env(),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    sid = proc.pid
    try:

        def running_and_ready() -> Any:
            assert proc.poll() is None, f"the submission ended early: {log_path.read_text()}"
            return ready()

        seen = wait_until(running_and_ready, timeout=timeout, interval=0.3, what=f"{spec} to be killed")
        os.killpg(sid, signal.SIGKILL)
        proc.wait(timeout=30)
        wait_until(lambda: not session_processes(sid), timeout=30, what="the killed submission's processes")
    finally:
        kill_session(sid)
        log.close()
    return seen


@dataclass
class TinyRun:
    workspace: Path
    result: Any
    wall_s: float


@pytest.fixture(scope="session")
def tiny_run(ray_local, tmp_path_factory) -> TinyRun:
    """specs/tiny.yaml submitted once, on SQLite, in a workspace later tests build on."""
    workspace = make_workspace(tmp_path_factory.mktemp("tiny"))
    started = time.perf_counter()
    result = submit_here(workspace, "tiny.yaml")
    return TinyRun(workspace, result, time.perf_counter() - started)


@pytest.fixture(scope="session")
def pg_url_factory():
    """``with pg_url_factory() as url:`` a PostgreSQL URL on a fresh schema (dropped afterwards); the
    same isolation as the records tests (tests/track/conftest.py), skipped when the server is down."""
    from tests.track.conftest import PG_URL, _psycopg_conninfo, pg_schema

    try:
        import psycopg

        with psycopg.connect(_psycopg_conninfo(PG_URL), connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"PostgreSQL unreachable ({type(e).__name__}: {str(e).strip()[:120]})")
    return lambda: pg_schema(PG_URL)
