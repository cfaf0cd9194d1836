"""Cluster mode: a Ray head and a second worker node started with `ray start` on this machine,
`ablate submit --address`, trials run on the cluster's nodes and land in the same records.

The cluster is this test's alone: its own port, temp dir and auth token, both `ray start` processes in
their own sessions, stopped by session id at the end (never `ray stop`, which would stop every Ray of
this user, other test runs and other people's work included).
"""

from __future__ import annotations

import json
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.run.conftest import (
    ABLATE,
    RAY,
    clean_env,
    kill_session,
    mlflow_runs,
    records_of,
    session_processes,
    split_runs,
    wait_until,
)

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Cluster:
    address: str
    token: str
    temp_dir: Path


def _started(log: Path) -> bool:
    return log.exists() and "Ray runtime started" in log.read_text()


@pytest.fixture
def ray_cluster(tmp_path) -> Iterator[Cluster]:
    token = secrets.token_hex(32)
    # Token authentication on, with a token of our own (never ~/.ray/auth_token); a short temp dir:
    # Ray's socket paths must stay under the 107-character limit of Unix sockets.
    env = clean_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    temp_dir = Path(tempfile.mkdtemp(prefix="ablt-", dir="/tmp"))
    port = _free_port()
    address = f"127.0.0.1:{port}"
    common = ["--num-cpus=1", "--disable-usage-stats", "--block"]
    started: list[subprocess.Popen] = []
    try:
        head_log = tmp_path / "head.log"
        started.append(
            subprocess.Popen(
                [
                    RAY,
                    "start",
                    "--head",
                    f"--port={port}",
                    "--include-dashboard=false",
                    f"--temp-dir={temp_dir}",
                    *common,
                ],
                env=env,
                stdout=head_log.open("w"),
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
        wait_until(lambda: _started(head_log), timeout=120, what=f"the Ray head ({head_log})")
        worker_log = tmp_path / "worker.log"
        started.append(
            subprocess.Popen(
                [RAY, "start", f"--address={address}", *common],
                env=env,
                stdout=worker_log.open("w"),
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
        wait_until(lambda: _started(worker_log), timeout=120, what=f"the Ray worker node ({worker_log})")
        yield Cluster(address, token, temp_dir)
    finally:
        for proc in started:
            kill_session(proc.pid, signal.SIGKILL)
        for proc in started:
            proc.wait(timeout=30)
        for proc in started:
            wait_until(
                lambda pid=proc.pid: not session_processes(pid), timeout=30, what="the cluster's processes"
            )
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_submit_to_a_two_node_cluster(tiny_run, ray_cluster, tmp_path):
    import ray

    workspace = tiny_run.workspace  # the same records, MLflow and artifacts as the local submissions
    # No RAY_AUTH_MODE for the submission: ablate sends the token to a cluster named by --address.
    res = subprocess.run(
        [*ABLATE, "submit", "cluster.yaml", "--address", ray_cluster.address, "--json"],
        cwd=workspace,
        env=clean_env(RAY_AUTH_TOKEN=ray_cluster.token),
        capture_output=True,
        text=True,
        timeout=420,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    out = json.loads(res.stdout)
    assert out["stages"]["run"] == {"distill": 4, "eval": 4}
    assert out["stages"]["reused"] == {"tokenize": 1, "teacher": 1, "importance": 1, "prune": 2, "eval": 3}

    with records_of(workspace) as records:
        trials = records.trials("tiny-cluster")
        assert len(trials) == 4 and {t.status for t in trials} == {"completed"}
        assert all(records.final_metrics(t.id).get("perplexity", 0) > 0 for t in trials)
        nodes = {
            e.message.split(" on node ")[1].split()[0]
            for e in records.events("tiny-cluster")
            if " started on node " in e.message
        }
        assert {e.experiment for e in records.events("tiny-cluster")} == {"tiny-cluster"}
        assert {x.name for x in records.list_experiments()} >= {"tiny", "tiny-cluster"}
    # Two nodes with one CPU each ran two trials at a time: both nodes took trials, and none of them
    # is this process's local Ray.
    assert len(nodes) == 2, nodes
    if ray.is_initialized():
        assert ray.get_runtime_context().get_node_id()[:16] not in nodes
    parents, children = split_runs(mlflow_runs(workspace, "tiny-cluster"))
    assert len(parents) == 1 and len(children) == 4
    assert {r.data.tags["ablate.node"][:16] for r in children.values()} == nodes
