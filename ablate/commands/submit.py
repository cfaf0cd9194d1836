"""`ablate submit`, `ablate status` and `ablate cancel`: run a spec and see where it stands."""

from __future__ import annotations

import json
import sys
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ablate.commands.plan import _load_or_exit
from ablate.track.db import connect


class LiveProgress:
    """Rich progress for humans: one line per shared stage event, one bar per running trial."""

    def __init__(self, console: Console):
        self.console = console
        self.bars = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[loss]}"),
            TimeElapsedColumn(),
            console=console,
        )
        self.tasks: dict[str, Any] = {}

    def __enter__(self) -> LiveProgress:
        self.bars.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bars.__exit__(*exc)

    def __call__(self, event: str, data: dict[str, Any]) -> None:
        if event == "stage_start":
            self.console.log(f"{data['kind']} stage {data['hash']} queued")
        elif event == "stage_done":
            self.console.log(f"[green]{data['kind']} stage {data['hash']} done")
        elif event == "stage_failed":
            self.console.log(f"[red]{data['kind']} stage {data['hash']} failed: {data['error']}")
        elif event == "trial_start":
            self.tasks[data["key"]] = self.bars.add_task(f"trial {data['key']}", total=None, loss="")
        elif event == "trial_step" and data["key"] in self.tasks:
            loss = f"loss {data['loss']:.3f}" if data.get("loss") is not None else ""
            self.bars.update(
                self.tasks[data["key"]], completed=data["step"], total=data.get("steps"), loss=loss
            )
        elif event == "trial_done" and data["key"] in self.tasks:
            m = data["metrics"]
            self.bars.update(self.tasks[data["key"]], loss=f"ppl {m.get('perplexity', float('nan')):.2f}")
            self.bars.stop_task(self.tasks[data["key"]])
        elif event == "trial_failed":
            self.console.log(f"[red]trial {data['key']} failed: {data['error']}")


def _fmt_metric(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def print_trials(trials: list[dict[str, Any]], console: Console, title: str) -> None:
    table = Table(title=title)
    for col in ("key", "overrides", "status", "loss", "ppl", "KL", "top-1", "error"):
        table.add_column(col)
    for t in trials:
        m = t.get("metrics") or {}
        overrides = ", ".join(f"{k}={v}" for k, v in (t.get("overrides") or {}).items())
        table.add_row(
            t["key"],
            overrides,
            t["status"],
            _fmt_metric(m.get("lm_loss", "")),
            _fmt_metric(m.get("perplexity", "")),
            _fmt_metric(m.get("kl_to_teacher", "")),
            _fmt_metric(m.get("top1_agreement", "")),
            (t.get("error") or "")[:80],
        )
    console.print(table)


@click.command("submit")
@click.argument("spec_path", metavar="SPEC", type=click.Path(dir_okay=False))
@click.option(
    "--address", default=None, help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray)."
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def submit_command(spec_path: str, address: str | None, as_json: bool) -> None:
    """Run SPEC: shared stages once, trials on Ray; resumes and never redoes finished work.

    Exit 0 when every trial completed, 1 when any stage or trial failed, 2 for a bad spec.
    """
    from ablate.run.executor import submit

    loaded = _load_or_exit(spec_path, as_json)
    console = Console(stderr=as_json, log_path=False)
    if as_json:
        result = submit(loaded, address)
        click.echo(json.dumps(result.to_dict(), indent=2, default=str))
    else:
        with LiveProgress(console) as progress:
            result = submit(loaded, address, progress)
        r = result.to_dict()
        print_trials(result.trials, console, f"{result.experiment}: {len(result.trials)} trials")
        s = r["stages"]
        console.print(
            f"stages run {sum(s['run'].values())} {s['run']}, reused {sum(s['reused'].values())}, "
            f"failed {sum(s['failed'].values())}; {result.wall_s:.1f}s"
        )
    sys.exit(0 if result.ok else 1)


def _db_option(f):
    return click.option(
        "--db",
        default="sqlite:///.ablate/ablate.db",
        show_default=True,
        help="Results database URL (the spec's tracking.db).",
    )(f)


@click.command("status")
@click.argument("name", required=False)
@_db_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status_command(name: str | None, db: str, as_json: bool) -> None:
    """What ran, what failed and why, what is left (all experiments without NAME)."""
    records = connect(db)
    console = Console()
    if name is None:
        experiments = [e.to_dict() for e in records.list_experiments()]
        if as_json:
            click.echo(json.dumps(experiments, indent=2, default=str))
            return
        table = Table(title="experiments")
        for col in ("name", "trials"):
            table.add_column(col)
        for e in experiments:
            table.add_row(e["name"], ", ".join(f"{k} {v}" for k, v in (e.get("counts") or {}).items() if v))
        console.print(table)
        return
    summary = records.experiment_summary(name)
    trials = [
        {
            "key": t.key,
            "status": t.status,
            "overrides": t.overrides,
            "metrics": t.final_metrics,
            "error": t.error,
            "attempts": t.attempts,
            "duration_s": t.duration_s,
        }
        for t in summary.trials
    ]
    if as_json:
        click.echo(
            json.dumps(
                {"experiment": name, "counts": summary.counts, "stages": summary.stages, "trials": trials},
                indent=2,
                default=str,
            )
        )
        return
    print_trials(trials, console, f"{name}: " + ", ".join(f"{k} {v}" for k, v in summary.counts.items() if v))
    console.print(
        "stages: "
        + "; ".join(f"{k} " + ", ".join(f"{s} {n}" for s, n in v.items()) for k, v in summary.stages.items())
    )
    for t in trials:
        if t["error"]:
            console.print(f"[red]{t['key']}[/red]: {t['error']}")


@click.command("cancel")
@click.argument("name")
@_db_option
def cancel_command(name: str, db: str) -> None:
    """Ask a running submission of NAME to stop its trials (recorded results are kept)."""
    connect(db).request_cancel(name)
    click.echo(f"cancel requested for '{name}'; running trials stop within a few seconds")
