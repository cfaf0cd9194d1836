"""`ablate report` (reports/<name>/report.md with findings and plots) and `ablate ui` (the MLflow UI on the
experiment's tracking store, opened on the run-comparison view of its trials)."""

from __future__ import annotations

import ipaddress
import json
import math
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import click

from ablate.commands import db_option
from ablate.errors import AblateError
from ablate.report.model import ReportError, compare_runs_url
from ablate.secrets import redact_text, redact_url
from ablate.track.urls import DEFAULT_MLFLOW, experiment_url, model_training_view


def open_records(db: str) -> Any:
    """The records at ``db``, read as they are: a SQLite file that does not exist is an error here (a
    report must not create an empty database where the user mistyped a path)."""
    from sqlalchemy.engine import make_url

    from ablate.track.db import connect

    raw = db.strip()
    path: str | None = None
    if "://" not in raw:
        path = raw
    elif raw.startswith("sqlite"):
        try:
            path = make_url(raw).database
        except Exception:
            path = None
    if path and path != ":memory:" and not path.startswith("file:"):
        if not Path(path).expanduser().is_file():
            raise ReportError(
                f"no results database at {redact_url(db)} (looked for {Path(path).expanduser().resolve()}); "
                "run `ablate submit` in this folder first, or pass --db with the spec's tracking.db"
            )
    return connect(db)


@click.command("report")
@click.argument("name")
@click.option(
    "--metric",
    default=None,
    help="Final metric to compare on (lm_loss, perplexity, kl_to_teacher, top1_agreement, ...); "
    "default: the spec's report.metric, else lm_loss.",
)
@click.option(
    "--higher-is-better/--lower-is-better",
    "higher",
    default=None,
    help="Direction of a metric the table of known metrics does not have (or to override it).",
)
@db_option
@click.option(
    "--out",
    default="reports",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Folder for reports; the report goes to OUT/NAME/.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report's data as JSON.")
def report_command(
    name: str, metric: str | None, higher: bool | None, db: str, out: str, as_json: bool
) -> None:
    """Write OUT/NAME/report.md: trial table, paired comparisons with best-practice verdicts, plots, the
    best trial and the recipe `ablate build` will use. Same records, same files.

    Exit 2 (and nothing written) for an unknown experiment, no finished trials or an unknown metric.
    """
    from ablate.report.records import build_report
    from ablate.report.write import write_report

    records = open_records(db)
    try:
        report = build_report(records, name, metric, higher=higher)
        paths = write_report(report, Path(out) / name)
        _attach_to_mlflow(records, name, Path(out) / name)
    finally:
        records.close()
    if as_json:
        data = report.to_dict()
        data["files"] = [str(p) for p in paths]
        click.echo(json.dumps(data, indent=2, sort_keys=True))
        return
    _print_summary(report, paths)


def _attach_to_mlflow(records: Any, name: str, folder: Path) -> None:
    """Log the report folder on the experiment's MLflow parent run (docs/architecture.md: the report is an artifact
    there). Only when a submission recorded that run; a store that cannot be reached costs a warning,
    never the report."""
    exp = records.get_experiment(name)
    if exp is None or not exp.mlflow_run_id:
        return
    from ablate.report.records import _get
    from ablate.spec.load import recorded_mapping

    uri = str(_get(recorded_mapping(exp.spec_text), "tracking.mlflow") or DEFAULT_MLFLOW)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        return  # the store is not here (records copied elsewhere): never create an empty one
    try:
        from ablate.track.mlflow import MlflowMirror

        MlflowMirror(uri, name).log_artifact(exp.mlflow_run_id, folder, "report")
    except Exception as exc:  # noqa: BLE001 - the report on disk is what matters
        click.echo(
            f"warning: report not attached to MLflow run {exp.mlflow_run_id}: {redact_text(str(exc))}",
            err=True,
        )


def _print_summary(report: Any, paths: list[Path]) -> None:
    from ablate.report.model import fmt_value
    from ablate.report.practices import PRACTICES

    better = "higher" if report.higher_is_better else "lower"
    click.echo(
        f"{report.experiment}: {len(report.finished)} of {len(report.trials)} trials finished; "
        f"paired comparisons on {report.metric} ({better} is better), A - B, 95% t interval, "
        f"Holm-adjusted over {report.family_size} tests:"
    )
    for i, f in enumerate(report.findings, 1):
        verdict = f.verdict + (f" ({fmt_value(f.winner)})" if f.winner is not None else "")
        paper = f"; {PRACTICES[f.practice].title}: {f.agreement or 'for reference'}" if f.practice else ""
        stats = (
            f" [{f.ci[0]:+.4g}, {f.ci[1]:+.4g}], Holm p {f.p_adjusted:.2g}"
            if math.isfinite(f.ci[0])  # no interval below the minimum pair count
            else ""
        )
        click.echo(f"  {i:2d}. {f.title}: {f.n} pairs, mean {f.mean_diff:+.4g}{stats}, {verdict}{paper}")
    b = report.best_trial
    click.echo(
        f"best trial {b.key} ({', '.join(f'{k}={fmt_value(v)}' for k, v in b.overrides.items())}): "
        f"{report.metric} {b.value:.4g}"
    )
    click.echo(f"wrote {paths[0]} and {len(paths) - 1} figures")


# ====================================================================== ui


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _is_loopback(host: str) -> bool:
    """True for an address only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        try:
            return all(ipaddress.ip_address(a[4][0]).is_loopback for a in socket.getaddrinfo(host, None))
        except (OSError, ValueError):
            return False


def _reachable_host(host: str) -> str:
    """The address other machines use to reach a server bound to ``host``: for a wildcard (0.0.0.0, ::)
    this machine's address on its default route (no packet is sent), else its host name."""
    if host not in ("0.0.0.0", "::", ""):
        return host
    family, probe = (socket.AF_INET6, "2001:db8::1") if host == "::" else (socket.AF_INET, "192.0.2.1")
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.connect((probe, 9))
            address = s.getsockname()[0]
        if not ipaddress.ip_address(address).is_loopback:
            return address
    except OSError:
        pass
    name = socket.getfqdn()
    return socket.gethostname() if name.startswith("localhost") else name


def _server_uri(uri: str) -> str:
    """A tracking URI as `mlflow server --backend-store-uri` wants it (absolute SQLite path, psycopg)."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(uri[len("sqlite:///") :]).expanduser().resolve())
    if uri.startswith(("postgres://", "postgresql://")):
        return "postgresql+psycopg://" + uri.split("://", 1)[1]
    if "://" not in uri:
        return Path(uri).expanduser().resolve().as_uri()
    return uri


def ui_target(records: Any | None, name: str | None) -> dict[str, Any]:
    """Which tracking store to serve and what to open: {tracking_uri, experiment_id, run_ids, name}."""
    from ablate.report.records import _get
    from ablate.spec.load import recorded_mapping

    if records is None:
        return {"tracking_uri": DEFAULT_MLFLOW, "experiment_id": None, "run_ids": [], "name": None}
    if name is None:
        exps = records.list_experiments()
        if len(exps) != 1:
            return {"tracking_uri": DEFAULT_MLFLOW, "experiment_id": None, "run_ids": [], "name": None}
        name = exps[0].name
    exp = records.get_experiment(name)
    if exp is None:
        records.experiment_summary(name)  # raises UnknownExperiment naming the known experiments
        raise ReportError(f"no experiment named {name!r} in the records")
    uri = str(_get(recorded_mapping(exp.spec_text), "tracking.mlflow") or DEFAULT_MLFLOW)
    runs = [t.mlflow_run_id for t in records.trials(name) if t.mlflow_run_id]
    return {"tracking_uri": uri, "experiment_id": exp.mlflow_experiment_id, "run_ids": runs, "name": name}


@click.command("ui")
@click.argument("name", required=False)
@db_option
@click.option("--port", default=5000, show_default=True, type=click.IntRange(1, 65535))
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Interface to bind; the default keeps the UI on this machine.",
)
@click.option(
    "--allow-remote",
    is_flag=True,
    help="Allow a --host other machines can reach: MLflow then serves the runs to them without authentication.",
)
@click.option(
    "--tracking-uri",
    default=None,
    envvar="ABLATE_TRACKING_URI",
    help="Serve this MLflow store instead of the spec's tracking.mlflow (or $ABLATE_TRACKING_URI).",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print {url, what, server} as one JSON line (then serve as usual).",
)
def ui_command(
    name: str | None,
    db: str,
    port: int,
    host: str,
    allow_remote: bool,
    tracking_uri: str | None,
    as_json: bool = False,
) -> None:
    """Start the MLflow UI on NAME's tracking store and print the URL of the run-comparison view with
    NAME's trials selected (without NAME: the only experiment in the records, else the experiment list).

    Runs until interrupted (Ctrl-C). When tracking.mlflow is an MLflow server, only prints its URL.
    A --host that other machines can reach needs --allow-remote: the MLflow UI has no authentication.
    """
    try:
        records = open_records(db)
    except ReportError:
        if name is not None:
            raise
        records = None
    try:
        target = ui_target(records, name)
    finally:
        if records is not None:
            records.close()
    uri = tracking_uri or target["tracking_uri"]
    remote = uri.startswith(("http://", "https://"))
    show_host = _reachable_host(host)
    base = (
        uri.rstrip("/")
        if remote
        else f"http://{'[' + show_host + ']' if ':' in show_host else show_host}:{port}"
    )
    if target["experiment_id"] and target["run_ids"]:
        url = model_training_view(compare_runs_url(base, target["experiment_id"], target["run_ids"]))
        what = f"{len(target['run_ids'])} trials of '{target['name']}' in the run-comparison view"
    elif target["experiment_id"]:
        url = experiment_url(base, target["experiment_id"])
        what = f"experiment '{target['name']}'"
    else:
        url = experiment_url(base)
        what = "the experiment list"
    if remote:
        if as_json:
            click.echo(json.dumps({"url": url, "what": what, "server": None}))
        else:
            click.echo(f"tracking.mlflow is an MLflow server; open {what}:\n{url}")
        return
    exposed = not _is_loopback(host)
    if exposed and not allow_remote:
        raise AblateError(
            f"--host {host} serves the MLflow UI to every machine that can reach this one, without "
            "authentication (anyone there can read and change the runs); add --allow-remote to do it "
            "anyway, or keep the default 127.0.0.1 and use an SSH tunnel (ssh -L PORT:127.0.0.1:PORT host)"
        )
    server_uri = _server_uri(uri)
    if server_uri.startswith("sqlite:///"):
        path = Path(server_uri[len("sqlite:///") :])
        if not path.is_file():
            raise AblateError(
                f"no MLflow store at {path}; run `ablate submit` in this folder first, or pass --tracking-uri"
            )
    if not _port_free(host, port):
        raise AblateError(f"port {port} on {host} is in use (another `ablate ui`?); pass --port")
    # The store URL (it may hold a password) goes through the environment, never the arguments: any user
    # of this machine can read a command line (ps), only this user can read the environment.
    env = {**os.environ, "MLFLOW_BACKEND_STORE_URI": server_uri}
    env.pop("MLFLOW_REGISTRY_STORE_URI", None)  # MLflow defaults it to the backend store
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    if server_uri.startswith("sqlite:///"):
        artifacts = Path(server_uri[len("sqlite:///") :]).parent / "mlartifacts"
        cmd += ["--artifacts-destination", artifacts.as_uri()]
    if exposed:
        click.echo(
            f"warning: the MLflow UI listens on {host}:{port} without authentication: anyone who can reach "
            f"{show_host}:{port} can read and change every run in {redact_url(server_uri)}",
            err=True,
        )
    if as_json:
        click.echo(json.dumps({"url": url, "what": what, "server": base, "store": redact_url(server_uri)}))
    else:
        click.echo(f"MLflow UI on {redact_url(server_uri)} at {base} (Ctrl-C stops it)")
        click.echo(f"{what}:")
        click.echo(url, nl=True)
    sys.stdout.flush()
    proc = subprocess.Popen(cmd, env=env)

    def _stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, _stop)
    try:
        rc = proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        try:
            rc = proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
        rc = 0
    finally:
        signal.signal(signal.SIGTERM, previous)
    if rc:
        raise AblateError(f"the MLflow server exited with status {rc}")
