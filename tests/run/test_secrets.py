"""Secrets never leave the process (issue 12): a spec whose tracking.db and tracking.mlflow carry a
PostgreSQL password goes through `ablate submit` (one trial fails, so the `details:` path runs, in text
and `--json`), `status`, `report`, `build` and `ui --host 0.0.0.0`; then every file under the working
folder, Ray's session logs, every output, every row of both PostgreSQL schemas (but the spec the records
keep for resume) and the command lines of the MLflow server's processes are searched for the password.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
import uuid
from contextlib import chdir
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.run.conftest import ABLATE, SPECS, clean_env

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

NAME = "leaky"


def with_password(url: str, password: str) -> str:
    assert url.startswith("postgresql://postgres@"), url
    return url.replace("postgresql://postgres@", f"postgresql://postgres:{password}@", 1)


def leaky_spec(folder: Path, db: str, mlflow: str, password: str) -> Path:
    """specs/tiny.yaml cut to two trials (lr 2e-3 completes, lr 1e12 diverges), the password in both
    tracking URLs and in a URL of the description."""
    text = (SPECS / "tiny.yaml").read_text()
    swaps = {
        "name: tiny": f"name: {NAME}",
        "description: Width vs depth, kld vs ce, on a tiny random Mistral.": (
            f"description: 'Leak check; corpus mirror at https://bob:{password}@mirror.invalid/pydoc'"
        ),
        "    target: [width, depth]\n    distill.loss: [kld, ce]": (
            "    target: [width]\n    distill.loss: [ce]\n    distill.lr: [2e-3, 1e12]"
        ),
        "db: sqlite:///.ablate/ablate.db": f"db: '{db}'",
        "mlflow: sqlite:///.ablate/mlflow.db": f"mlflow: '{mlflow}'",
        "build: {trial: best, tokens: 4k, formats: [hf]}": "build: {trial: best, formats: [hf]}",
    }
    for old, new in swaps.items():
        assert old in text, old
        text = text.replace(old, new)
    path = folder / "leaky.yaml"
    path.write_text(text)
    return path


def alive(read):
    """`read()` of a psutil process, or None once it has exited (a zombie: a short-lived helper of the
    MLflow server that ended between listing and reading it, which has no command line or environment)."""
    import psutil

    try:
        return read()
    except (psutil.ZombieProcess, psutil.NoSuchProcess):
        return None


def invoke(folder: Path, args: list[str]):
    from ablate.cli import main

    with chdir(folder):
        return CliRunner().invoke(main, args, catch_exceptions=False)


def files_with(roots: list[Path], needle: bytes) -> list[str]:
    hits = []
    for root in roots:
        for path in root.rglob("*"):
            try:
                if path.is_file() and not path.is_symlink() and needle in path.read_bytes():
                    hits.append(str(path))
            except OSError:
                continue
    return hits


def rows_with(url: str, needle: str) -> list[str]:
    """table.column of every text row in the URL's schema holding `needle` (the records' spec aside)."""
    import psycopg

    from tests.track.conftest import _psycopg_conninfo

    hits = []
    with psycopg.connect(_psycopg_conninfo(url)) as conn:
        schema = conn.execute("SELECT current_schema()").fetchone()[0]
        columns = conn.execute(
            "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = %s "
            "AND data_type IN ('text', 'character varying', 'json', 'jsonb', 'bytea')",
            (schema,),
        ).fetchall()
        for table, column in columns:
            if (table, column) == ("experiments", "spec_text") and conn.execute(
                "SELECT 1 FROM information_schema.columns WHERE table_schema = %s AND table_name = "
                "'experiments' AND column_name = 'spec_hash'",
                (schema,),
            ).fetchone():
                continue  # ablate's records keep the spec as written: the user's own store, read on resume
            found = conn.execute(
                f'SELECT count(*) FROM "{table}" WHERE CAST("{column}" AS text) LIKE %s', (f"%{needle}%",)
            ).fetchone()[0]
            if found:
                hits.append(f"{table}.{column}")
    return hits


def start_ui(folder: Path, db: str, port: int) -> subprocess.Popen:
    return subprocess.Popen(
        [*ABLATE, "ui", NAME, "--port", str(port), "--host", "0.0.0.0", "--allow-remote"],
        cwd=folder,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(ABLATE_DB=db),  # never --db: the password would be in this process's argv
        start_new_session=True,
    )


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_planted_password_is_found_nowhere(ray_local, pg_url_factory, tmp_path, capfd):
    import psutil
    import ray

    password = f"PLANTED-{uuid.uuid4().hex[:12]}"
    folder = tmp_path / "work"
    folder.mkdir()
    outputs: dict[str, str] = {}
    with pg_url_factory() as db_base, pg_url_factory() as mlflow_base:
        db, mlflow = with_password(db_base, password), with_password(mlflow_base, password)
        leaky_spec(folder, db, mlflow, password)

        first = invoke(folder, ["submit", "leaky.yaml"])
        outputs["submit"] = first.output
        assert first.exit_code == 1, first.output
        flat = " ".join(first.output.split())
        assert "details: ablate status leaky --db 'postgresql://postgres:***@" in flat, first.output
        again = invoke(folder, ["submit", "leaky.yaml", "--json"])  # the failed trial runs (and fails) again
        outputs["submit --json"] = again.output
        assert again.exit_code == 1 and not json.loads(again.stdout)["ok"]
        for args in (["status", NAME, "--db", db], ["status", NAME, "--db", db, "--json"]):
            res = invoke(folder, args)
            outputs[" ".join(args)] = res.output
            assert res.exit_code == 0, res.output
        for args in (["report", NAME, "--db", db], ["report", NAME, "--db", db, "--json"]):
            res = invoke(folder, args)
            outputs[" ".join(args)] = res.output
            assert res.exit_code == 0, res.output
        res = invoke(folder, ["build", "leaky.yaml", "--no-throughput", "--out", "builds/leaky"])
        outputs["build"] = res.output
        assert res.exit_code == 0, res.output
        card = (folder / "builds" / "leaky" / "model" / "README.md").read_text()
        assert "postgresql://postgres:***@" in card and "https://bob:***@mirror.invalid" in card

        refused = invoke(folder, ["ui", NAME, "--db", db, "--host", "0.0.0.0"])
        outputs["ui refused"] = refused.output
        assert refused.exit_code == 2 and "--allow-remote" in refused.output

        port = free_port()
        proc = start_ui(folder, db, port)
        try:
            lines = [proc.stdout.readline() for _ in range(3)]
            base = lines[0].split(" at ")[-1].split(" ")[0]
            assert not base.startswith("http://127.") and base.endswith(f":{port}"), lines
            deadline = time.monotonic() + 120
            while True:
                try:
                    with urllib.request.urlopen(base + "/health", timeout=5) as r:
                        assert r.status == 200
                    break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise AssertionError(f"mlflow server did not start at {base}: {lines}") from None
                    time.sleep(1)
            ui = psutil.Process(proc.pid)
            server = [ui, *ui.children(recursive=True)]
            argv = {p.pid: " ".join(cmd) for p in server if (cmd := alive(p.cmdline)) is not None}
            mlflow_env = [env for p in server[1:] if (env := alive(p.environ)) is not None]
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                out, err = proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                out, err = proc.communicate()
        outputs["ui"] = "".join(lines) + out + err
        assert "without authentication" in err
        assert any(password in env.get("MLFLOW_BACKEND_STORE_URI", "") for env in mlflow_env)  # env, not argv
        leaked_argv = {pid: cmd for pid, cmd in argv.items() if password in cmd}

        leaked_rows = rows_with(db_base, password) + rows_with(mlflow_base, password)
    captured = capfd.readouterr()
    outputs["stdout/stderr"] = captured.out + captured.err
    session = Path(ray._private.worker._global_node.get_session_dir_path())
    spec = folder / "leaky.yaml"  # the input: the only file that may hold the password
    leaked_files = [f for f in files_with([tmp_path, session / "logs"], password.encode()) if f != str(spec)]
    leaked_outputs = [name for name, text in outputs.items() if password in text]
    assert not (leaked_files or leaked_outputs or leaked_argv or leaked_rows), {
        "files": leaked_files,
        "outputs": leaked_outputs,
        "argv": leaked_argv,
        "rows": leaked_rows,
    }
    assert (folder / "reports" / NAME / "report.md").is_file()
    assert (folder / "builds" / "leaky" / "model" / "model.safetensors").is_file()
