"""`ablate submit`, `ablate status` and `ablate cancel`: run a spec and see where it stands."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from ablate.commands import db_option
from ablate.commands.progress import LINE_S, Throttle, bars, live, quiet_option, step_text
from ablate.errors import AblateError, RunError
from ablate.secrets import redact, redact_text, redact_url


class LiveProgress:
    """Live progress for humans on stderr: one line per stage and trial outcome, an overall trial bar, and
    one bar per running trial (step of steps, loss, tokens/s, ETA; removed when it ends). Without a
    terminal (CI logs, pipes) rich draws no bars: each running trial then gets a line every LINE_S
    seconds instead, so a log never goes silent while trials train."""

    def __init__(self, console: Console, trials: int, every: float = LINE_S):
        self.console = console
        self.bars = bars(console)
        self.live = live(console)
        self.throttle = Throttle(every)
        self.total = trials
        self.overall = None
        self.tasks: dict[str, Any] = {}
        self.started: dict[str, float] = {}
        self.done = self.failed = 0

    def __enter__(self) -> LiveProgress:
        self.bars.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bars.__exit__(*exc)

    def _line(self, text: str) -> None:
        self.bars.console.print(redact_text(text), highlight=False)

    def _overall(self) -> None:
        info = f"[red]{self.failed} failed[/red]" if self.failed else ""
        if self.overall is None:
            self.overall = self.bars.add_task("trials", total=self.total, info=info)
        self.bars.update(self.overall, completed=self.done + self.failed, info=info)

    def _end(self, key: str) -> float | None:
        self.throttle.forget(key)
        task = self.tasks.pop(key, None)
        if task is not None:
            self.bars.remove_task(task)
        started = self.started.pop(key, None)
        return None if started is None else time.monotonic() - started

    def __call__(self, event: str, data: dict[str, Any]) -> None:
        key = data.get("key", "")
        if event == "stage_start":
            self._line(f"[dim]{data['kind']:<10}[/dim] {data['hash']} queued")
        elif event == "stage_done":
            facts = data.get("facts") or {}
            extra = f" in {facts['seconds']:.1f}s" if isinstance(facts.get("seconds"), (int, float)) else ""
            self._line(f"[green]{data['kind']:<10}[/green] {data['hash']} done{extra}")
        elif event in ("stage_wait", "trial_wait"):
            what = f"{data['kind']:<10} {data['hash']}" if event == "stage_wait" else f"trial      {key}"
            self._line(f"[dim]{what} waiting for the submission running it ({data.get('owner')})[/dim]")
        elif event == "search":
            self._line(f"[bold]search[/bold]     {data['text']}")
        elif event == "stage_failed":
            self._line(f"[red]{data['kind']:<10}[/red] {data['hash']} failed: {data['error']}")
        elif event == "trial_start":
            self._overall()
            self.started[key] = time.monotonic()
            self.tasks[key] = self.bars.add_task(f"trial {key}", total=None, info="starting")
        elif event == "trial_step" and key in self.tasks:
            info = step_text(data, with_step=False)
            self.bars.update(self.tasks[key], completed=data["step"], total=data.get("steps"), info=info)
            steps = data.get("steps")
            if not self.live and self.throttle(key, last=bool(steps) and data["step"] >= steps):
                self._line(f"[dim]trial[/dim]      {key} distill {step_text(data)}")
        elif event == "trial_stage" and key in self.tasks:
            self.bars.update(self.tasks[key], info=f"{data['stage']}")
            self._line(f"[dim]trial[/dim]      {key} {data['stage']}")
        elif event == "trial_done":
            took = self._end(key)
            self.done += 1
            self._overall()
            ppl = (data.get("metrics") or {}).get("perplexity")
            how = " (recorded from existing artifacts)" if data.get("reused") else ""
            how += f" resumed from step {data['resumed_from_step']}" if data.get("resumed_from_step") else ""
            ppl_text = f"ppl {ppl:.4g}" if isinstance(ppl, (int, float)) else ""
            took_text = f" in {took:.1f}s" if took is not None else ""
            self._line(f"[green]trial[/green]      {key} done{took_text}: {ppl_text}{how}")
        elif event == "trial_failed":
            self._end(key)
            self.failed += 1
            self._overall()
            self._line(f"[red]trial[/red]      {key} failed: {data['error']}")
        elif event == "trial_cancelled":
            self._end(key)
            self._line(
                f"[yellow]trial[/yellow]      {key} {data.get('reason') or 'stopped before it finished'}"
            )


def _console() -> Console:
    """stdout; wide when it is not a terminal (a file, a pipe, CI), where rich would assume 80 columns."""
    return Console() if sys.stdout.isatty() else Console(width=160)


def _fmt_metric(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def print_trials(trials: list[dict[str, Any]], console: Console, title: str) -> None:
    table = Table(title=title)
    for col in ("key", "overrides", "status", "loss", "ppl", "KL", "top-1", "error"):
        table.add_column(col, overflow="fold", no_wrap=col == "key")
    for t in trials:
        m = t.get("metrics") or {}
        overrides = ", ".join(f"{k}={v}" for k, v in (t.get("overrides") or {}).items())
        error = t.get("error") or ""
        table.add_row(
            t["key"],
            overrides,
            t["status"],
            _fmt_metric(m.get("lm_loss", "")),
            _fmt_metric(m.get("perplexity", "")),
            _fmt_metric(m.get("kl_to_teacher", "")),
            _fmt_metric(m.get("top1_agreement", "")),
            error if len(error) <= 60 else error[:57] + "...",
        )
    console.print(table)


def _counts(counts: dict[str, int]) -> str:
    total = sum(counts.values())
    return f"{total}" + (" (" + ", ".join(f"{k} {v}" for k, v in counts.items()) + ")" if counts else "")


@click.command("submit")
@click.argument("spec_path", metavar="SPEC", type=click.Path(dir_okay=False))
@click.option(
    "--address", default=None, help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray)."
)
@click.option(
    "--recompute",
    "recompute",
    metavar="STAGE",
    multiple=True,
    help="Run STAGE again instead of reusing its artifact (deleted first), and every stage made from it: "
    "a kind (teacher, importance, prune, distill, eval: all of them in SPEC) or a stage hash or unique "
    "prefix, as a failed verification names it. Repeatable.",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@quiet_option
def submit_command(
    spec_path: str, address: str | None, recompute: tuple[str, ...], as_json: bool, quiet: bool
) -> None:
    """Run SPEC: shared stages once, trials on Ray; resumes and never redoes finished work.

    Finished work is reused only when its artifact's checksums verify; a damaged artifact stops the
    submission (exit 2) with the --recompute command that runs it again.

    Exit 0 when every trial completed, 1 when any stage or trial failed, 2 for a bad spec, a damaged
    artifact or a submission that could not start. With --json, stdout holds one result object either
    way. Submitting the same spec twice at once is safe: the second waits for the work the first holds.

    Progress goes to stderr: each stage, and each running trial's step of steps, loss, tokens/s and ETA
    (a bar on a terminal, a line every few seconds in a log); --quiet or --json hide it.
    """
    from ablate.commands.plan import _load_or_exit
    from ablate.run.executor import submit

    loaded = _load_or_exit(spec_path, as_json)
    console = Console(stderr=True, log_path=False)
    if as_json:
        try:
            result = submit(loaded, address, recompute_stages=recompute)
        except Exception as exc:  # stdout still holds one result object, with what stopped it
            if click.get_current_context().find_root().obj.get("debug"):
                raise
            from ablate.cli import fail

            fail(_failure(exc), 2 if isinstance(exc, AblateError) else 1, True, experiment=loaded.spec.name,
                 trials=[])  # fmt: skip
        click.echo(json.dumps(redact(result.to_dict()), indent=2, default=str))
    else:
        if quiet:
            result = submit(loaded, address, None, recompute)
        else:
            search = loaded.spec.search  # its top_k are trials too, one per seed
            retrained = search.score.top_k * len(loaded.spec.sweep.seeds) if search is not None else 0
            with LiveProgress(console, len(loaded.trials) + retrained) as progress:
                result = submit(loaded, address, progress, recompute)
        out = _console()
        print_trials(result.trials, out, f"{result.experiment}: {len(result.trials)} trials")
        out.print(
            f"stages run {_counts(result.stages_run)}; reused {_counts(result.stages_reused)}; "
            f"failed {_counts(result.stages_failed)}; {result.wall_s:.1f}s",
            highlight=False,
        )
        for t in result.trials:
            if t["error"]:
                out.print(f"[red]{t['key']}[/red] {t['status']}: {redact_text(t['error'])}", highlight=False)
        if not result.ok:
            out.print(_details_line(result.experiment, loaded.spec.tracking.db), highlight=False)
    sys.exit(0 if result.ok else 1)


def _details_line(experiment: str, db: str) -> str:
    """Where to look next after a failed submission; the database URL without its password (and where
    to put it back: $ABLATE_DB, which keeps it off the command line)."""
    shown = redact_url(db)
    if shown == db:
        return f"details: ablate status {experiment} --db {db}"
    return (
        f"details: ablate status {experiment} --db '{shown}' (password not shown: put the spec's "
        "tracking.db in $ABLATE_DB and leave out --db)"
    )


def _failure(exc: BaseException) -> str:
    """Why a submission stopped before it had a result: the user's message, or a crash as one line."""
    if isinstance(exc, AblateError):
        return str(exc)
    from ablate.run.ray_workers import error_line

    return error_line(exc)


def _records(db: str):
    """The results database; a missing SQLite file is an error here (reading must not create one)."""
    from ablate.track.db import connect

    prefix = "sqlite:///"
    if db.startswith(prefix) and ":memory:" not in db:
        path = Path(db[len(prefix) :].split("?", 1)[0])
        if not path.exists():
            raise RunError(
                f"no results database at {path.resolve()}: run this in the folder you submitted from, "
                "or pass the spec's tracking.db with --db"
            )
    return connect(db)


def running_progress(records, experiment: str) -> dict[str, dict[str, Any]]:
    """Where each running trial stands, from what the submission has recorded so far (its per-step
    metrics are flushed every few seconds): stage, step of steps, loss, tokens/s and ETA."""
    from ablate.commands.progress import eta_s
    from ablate.spec import budget

    out: dict[str, dict[str, Any]] = {}
    for info in records.trials(experiment, status="running"):
        latest = {
            name: records.metric_series(info.id, name)[-1:] for name in ("loss", "tokens", "tokens_per_s")
        }
        if not latest["loss"]:
            out[info.key] = {"stage": "starting"}
            continue
        step = latest["loss"][0][0]
        progress: dict[str, Any] = {"stage": "distill", "step": step, "loss": latest["loss"][0][1]}
        for name in ("tokens", "tokens_per_s"):
            if latest[name] and latest[name][0][0] == step:
                progress[name] = latest[name][0][1]
        config = info.config or {}
        try:
            d = config["distill"]
            progress["steps"] = budget.steps(
                int(d["tokens"]), int(d["global_batch"]), int(config["data"]["seq_len"])
            )
        except (KeyError, TypeError, ValueError):
            pass
        if progress.get("steps") and step >= progress["steps"]:
            progress["stage"] = "evaluating"
        eta = eta_s(progress)
        if eta is not None:
            progress["eta_s"] = round(eta, 1)
        out[info.key] = progress
    return out


@click.command("status")
@click.argument("name", required=False)
@db_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status_command(name: str | None, db: str, as_json: bool) -> None:
    """What ran, what failed and why, what is left (all experiments without NAME)."""
    records = _records(db)
    console = _console()
    if name is None:
        experiments = [redact(e.to_dict()) for e in records.list_experiments()]
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
    problems = [e for e in records.events(name, min_level="warning", limit=10)]
    progress = running_progress(records, name)
    for t in trials:
        if t["key"] in progress:
            t["progress"] = progress[t["key"]]
    trials = redact(trials)  # records written before redaction existed may hold a password
    if as_json:
        click.echo(
            json.dumps(
                {
                    "experiment": name,
                    "counts": summary.counts,
                    "stages": summary.stages,
                    "trials": trials,
                    "events": [redact(e.to_dict()) for e in problems],
                },
                indent=2,
                default=str,
            )
        )
        return
    print_trials(trials, console, f"{name}: " + ", ".join(f"{k} {v}" for k, v in summary.counts.items() if v))
    console.print(
        "stages: "
        + "; ".join(f"{k} " + ", ".join(f"{s} {n}" for s, n in v.items()) for k, v in summary.stages.items()),
        highlight=False,
    )
    for t in trials:
        if t["error"]:
            console.print(f"[red]{t['key']}[/red] {t['status']}: {t['error']}", highlight=False)
    for t in trials:
        p = t.get("progress")
        if p:
            console.print(f"{t['key']} running: {p['stage']} {step_text(p)}".rstrip(), highlight=False)
    if problems:
        console.print("recent warnings and errors:")
        for e in problems:
            console.print(
                f"  {e.time:%Y-%m-%d %H:%M:%S} {e.level}: {redact_text(e.message)}",
                highlight=False,
                markup=False,
            )


@click.command("cancel")
@click.argument("name")
@db_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def cancel_command(name: str, db: str, as_json: bool) -> None:
    """Ask a running submission of NAME to stop its trials (recorded results are kept).

    Exit 2 when nothing of NAME is running (no live submission holds its trials or stages)."""
    from ablate.track.leases import Leases

    records = _records(db)
    experiment = records.experiment_summary(name)  # an unknown NAME: exit 2, naming the known ones
    holders = Leases(records).live_holders(experiment.experiment.id)
    if not holders:
        counts = ", ".join(f"{k} {v}" for k, v in experiment.counts.items() if v) or "no trials"
        raise RunError(
            f"nothing to cancel: no submission of '{name}' is running (its trials: {counts}); "
            f"`ablate status {name}` shows where it stands"
        )
    records.request_cancel(name)
    if as_json:
        click.echo(json.dumps({"experiment": name, "cancel_requested": True, "submissions": len(holders)}))
        return
    click.echo(
        f"cancel requested for '{name}' ({len(holders)} live submission(s)); its running trials stop within a "
        "few seconds"
    )
