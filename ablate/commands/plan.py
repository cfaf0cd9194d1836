"""`ablate validate` and `ablate plan`: everything about a spec that needs no weights."""

from __future__ import annotations

import json
import sys
import time

import click
from rich.console import Console
from rich.table import Table

from ablate.errors import SpecError
from ablate.plan.data_budget import data_plan
from ablate.plan.graph import build_graph
from ablate.plan.memory import GPUS
from ablate.secrets import redact, redact_text
from ablate.spec.units import format_tokens
from ablate.spec.validate import LoadedSpec, load_spec

SHOWN_CANDIDATES = 10  # `plan --json` lists them all


def wide_console(stderr: bool = False) -> Console:
    """Tables of trials are wide: when output goes to a file or pipe, do not squeeze them into 80 columns."""
    stream = sys.stderr if stderr else sys.stdout
    return Console(stderr=stderr, width=None if stream.isatty() else 200, log_path=False)


def _load_or_exit(spec_path: str, as_json: bool) -> LoadedSpec:
    try:
        return load_spec(spec_path)
    except SpecError as exc:
        if as_json:
            click.echo(json.dumps({"valid": False, "problems": redact(exc.problems)}, indent=2))
        else:
            for problem in exc.problems:  # a problem quotes the value: a tracking URL's password too
                click.echo(redact_text(problem), err=True)
            click.echo(f"{len(exc.problems)} problem(s) in {spec_path}", err=True)
        sys.exit(2)


def summary_line(loaded: LoadedSpec) -> str:
    graph = build_graph(loaded.trials, str(loaded.path.parent))
    run, naive = sum(graph.counts().values()), sum(graph.naive_counts().values())
    return (
        f"{loaded.path}: valid: experiment '{loaded.spec.name}', {len(loaded.trials)} trials over "
        f"{len(loaded.spec.targets)} target(s), {run} stages to run (naive {naive})" + _after_search(loaded)
    )


def _after_search(loaded: LoadedSpec) -> str:
    """The trials of `from: search` targets, which have no shape (nor key) before the search chooses."""
    n = len(loaded.after_search)
    return f"; {n} more after the search, on its winner's shape (targets from: search)" if n else ""


@click.command("validate")
@click.argument("spec_path", metavar="SPEC", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def validate_command(spec_path: str, as_json: bool) -> None:
    """Check SPEC and report every problem with its file, line and path (exit 2 if any)."""
    loaded = _load_or_exit(spec_path, as_json)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "valid": True,
                    "name": loaded.spec.name,
                    "trials": len(loaded.trials),
                    "after_search": len(loaded.after_search),
                }
            )
        )
    else:
        click.echo(summary_line(loaded))


def memory_warnings(est) -> list[str]:
    """One line per trial that will not fit its GPU as configured, with the way out."""
    out = []
    for t in est.trials:
        m = t.memory
        if m is None or m.fits:
            continue
        need = (
            f"{m.total_bytes / 2**30:.0f} GiB per device > {m.usable_bytes / 2**30:.0f} GiB usable on {m.gpu}"
        )
        fix = m.advice  # names the spec fields that make it fit (ablate.plan.memory.advice)
        out.append(f"trial {t.key} ({t.strategy}, {t.workers} worker(s)) needs {need}; {fix}")
    return out


def plan_dict(loaded: LoadedSpec, mfu: float, gpu: str = "h100-80gb") -> dict:
    graph = build_graph(loaded.trials, str(loaded.path.parent))
    from ablate.plan.estimate import H100_BF16_DENSE_FLOPS, estimate

    est = estimate(loaded.teacher_config, loaded.trials, mfu=mfu, gpu=gpu)
    data = data_plan(loaded)
    search = None
    if loaded.search is not None:
        from ablate.search.phases import search_phases

        search = search_phases(loaded.spec, loaded.search, est.teacher.params, est.gpu_hours)
    total_flops = est.total_flops + (search["total_flops"] if search else 0.0)
    align = None
    if loaded.spec.align is not None:
        from ablate.plan.align_estimate import align_plan

        params = {row.key: row.params for row in est.trials}
        student = {
            h: params[key]
            for key, kinds in graph.trial_stages.items()
            for h in kinds.values()
            if key in params
        }
        stages = {h: s for h, s in graph.stages.items() if s.kind == "align"}
        align = align_plan(loaded.spec, stages, student, loaded.path.parent)
        total_flops += sum(row["flops"] or 0.0 for row in align)
    plan = {
        "name": loaded.spec.name,
        "spec": str(loaded.path),
        "assumption": {
            "mfu": mfu,
            "peak_flops": H100_BF16_DENSE_FLOPS,
            "gpu": "H100 SXM dense BF16",
            "memory_gpu": gpu,
        },
        "warnings": memory_warnings(est) + data["warnings"],
        "data": data,
        "trials": [{**row, "stages": graph.trial_stages[row["key"]]} for row in est.to_dict()["trials"]],
        "stages": {"run": graph.counts(), "naive": graph.naive_counts()},
        "teacher": {
            **est.to_dict()["teacher"],
            "model": loaded.spec.teacher.model,
            "correction_tokens": est.correction_tokens,
            "correction_flops": est.correction_flops,
            "correction_gpu_hours": est.gpu_hours(est.correction_flops),
        },
        "targets": est.to_dict()["targets"],
        "importance_flops": est.importance_flops,
        "total_flops": total_flops,
        "total_gpu_hours": est.gpu_hours(total_flops),
    }
    if align is not None:
        plan["align"] = [
            {**row, "gpu_hours": None if row["flops"] is None else est.gpu_hours(row["flops"])}
            for row in align
        ]
    if search is not None:  # a spec without search plans exactly as before
        plan["search"] = search
        plan["after_search"] = [{"target": t.target, "overrides": t.overrides} for t in loaded.after_search]
    return plan


def _fmt_params(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.1f}k"


def _fmt_shape(shape: dict, reference: dict | None = None) -> str:
    keys = (
        "num_hidden_layers",
        "hidden_size",
        "intermediate_size",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
    )
    short = {
        "num_hidden_layers": "layers",
        "hidden_size": "hidden",
        "intermediate_size": "ffn",
        "num_attention_heads": "heads",
        "num_key_value_heads": "kv",
        "head_dim": "head_dim",
    }
    parts = []
    for k in keys:
        mark = "*" if reference and reference.get(k) != shape[k] else ""
        parts.append(f"{short[k]} {shape[k]}{mark}")
    return ", ".join(parts)


def print_plan(plan: dict, console: Console) -> None:
    teacher = plan["teacher"]
    console.print(f"[bold]{plan['name']}[/bold]  ({plan['spec']})")
    console.print(
        f"teacher {teacher['model']}: {_fmt_params(teacher['params'])} ({teacher['params']:,} parameters)"
    )
    console.print(f"  {_fmt_shape(teacher['shape'])}, vocab {teacher['shape']['vocab_size']}")
    if teacher["correction_tokens"]:
        console.print(
            f"  teacher correction: {format_tokens(teacher['correction_tokens'])} tokens, "
            f"{teacher['correction_flops']:.3g} FLOPs, {teacher['correction_gpu_hours']:,.1f} GPU-h"
        )
    targets = Table(title="targets (* = pruned axis)")
    for col in ("target", "params", "of teacher", "shape"):
        targets.add_column(col)
    for t in plan["targets"]:
        targets.add_row(
            t["name"],
            f"{_fmt_params(t['params'])} ({t['params']:,})",
            f"{t['params'] / teacher['params']:.1%}",
            _fmt_shape(t["shape"], teacher["shape"]),
        )
    console.print(targets)
    trials = Table(title=f"{len(plan['trials'])} trials")
    for col in ("key", "overrides", "params", "tokens", "FLOPs", "GPU-h", "workers", "mem/device"):
        trials.add_column(col, justify="left" if col in ("key", "overrides") else "right")
    for t in plan["trials"]:
        overrides = ", ".join(f"{k}={v}" for k, v in t["overrides"].items())
        memory = t["memory"]
        trials.add_row(
            t["key"],
            overrides,
            _fmt_params(t["params"]),
            format_tokens(t["tokens"]),
            f"{t['flops']:.3g}",
            f"{t['gpu_hours']:,.3g}",
            f"{t['workers']} {t['strategy']}",
            f"{memory['total_bytes'] / 2**30:.1f} GiB" + ("" if memory["fits"] else " (!)"),
        )
    console.print(trials)
    after = plan.get("after_search") or []
    if after:
        console.print(
            f"and {len(after)} trial(s) after the search, on its winner's shape (not in the counts above): "
            + "; ".join(", ".join(f"{k}={v}" for k, v in t["overrides"].items()) for t in after),
            highlight=False,
        )
    stages = Table(title="stages after de-duplication")
    for col in ("stage", "to run", "naive"):
        stages.add_column(col, justify="right" if col != "stage" else "left")
    for kind, n in plan["stages"]["run"].items():
        stages.add_row(kind, str(n), str(plan["stages"]["naive"][kind]))
    stages.add_row(
        "[bold]total[/bold]",
        str(sum(plan["stages"]["run"].values())),
        str(sum(plan["stages"]["naive"].values())),
    )
    console.print(stages)
    console.print(data_table(plan["data"]))
    if plan.get("align"):
        console.print(align_table(plan["align"]))
    if "search" in plan:
        print_search(plan["search"], console)
    for warning in plan["warnings"]:
        console.print(f"[yellow]warning:[/yellow] {warning}")
    a = plan["assumption"]
    console.print(
        f"total compute: {plan['total_flops']:.3g} FLOPs = {plan['total_gpu_hours']:,.3g} GPU-hours "
        f"at MFU {a['mfu']} of {a['peak_flops'] / 1e12:.0f} TFLOP/s ({a['gpu']})"
    )


def print_search(search: dict, console: Console) -> None:
    """The search: its window, the space per axis, the candidates (largest few) and each phase's compute."""
    budget = search["budget"]
    memory = (
        f" and <= {budget['memory_gib']:g} GiB (bf16 weights + KV cache at seq_len {budget['seq_len']} x "
        f"batch {budget['batch']})"
        if budget["memory_gib"] is not None
        else ""
    )
    console.print(
        f"[bold]search[/bold]: {search['count']} candidates with {_fmt_params(budget['lower_params'])} to "
        f"{_fmt_params(budget['params'])} parameters{memory}, of {search['space_size']:,} shapes "
        f"({search['under_budget']} at or under the budget); top {search['top_k']} by {search['score_metric']} "
        f"retrained, winner by {search['select_metric']} (enumerated in {search['seconds']:.2f} s)"
    )
    for axis, info in search["axes"].items():
        console.print(f"  {axis}: {', '.join(map(str, info['values']))}  [dim]({info['rule']})[/dim]")
    shown = search["candidates"][:SHOWN_CANDIDATES]
    table = Table(title=f"candidates (largest {len(shown)} of {search['count']})")
    for col in ("candidate", "params", "of budget"):
        table.add_column(col, justify="left" if col == "candidate" else "right")
    for c in shown:
        table.add_row(
            c["name"],
            f"{_fmt_params(c['params'])} ({c['params']:,})",
            f"{c['params'] / budget['params']:.1%}",
        )
    console.print(table)
    phases = Table(title="search phases")
    for col in ("phase", "runs", "tokens/run", "FLOPs", "GPU-h", "what"):
        phases.add_column(col, justify="left" if col in ("phase", "what") else "right")
    for p in search["phases"]:
        unknown = p["flops"] is None
        phases.add_row(
            p["phase"],
            str(p["runs"]),
            format_tokens(p["tokens_per_run"]),
            "not estimated" if unknown else f"{p['flops']:.3g}",
            "-" if unknown else f"{p['gpu_hours']:,.3g}",
            p["note"],
        )
    console.print(phases)


def align_table(rows: list[dict]) -> Table:
    """Per alignment stage (after each trial's distillation): distinct runs, examples and tokens each, FLOPs."""
    table = Table(title="alignment stages (after distillation)")
    for col in ("stage", "method", "runs", "examples/run", "tokens/run", "FLOPs", "GPU-h"):
        table.add_column(col, justify="left" if col in ("stage", "method") else "right")
    for r in rows:
        unknown = r["flops"] is None
        table.add_row(
            r["stage"],
            r["method"],
            str(r["runs"]),
            str(r["examples"]),
            "not estimated" if unknown else format_tokens(r["tokens_per_run"]),
            "-" if unknown else f"{r['flops']:.3g}",
            "-" if unknown else f"{r['gpu_hours']:,.3g}",
        )
    return table


def data_table(data: dict) -> Table:
    """Per source: share of the blend, tokens held (once tokenized), the budget's tokens and repeats."""
    table = Table(title=f"data (budget {format_tokens(data['budget_tokens'])} tokens)")
    for col in ("source", "weight", "share", "tokens", "budget", "epochs"):
        table.add_column(col, justify="left" if col == "source" else "right")
    for row in data["sources"]:
        held = format_tokens(row["tokens"]) if row["tokens"] is not None else "not tokenized yet"
        epochs = f"{row['epochs']:.2f}" + (" (!)" if row["epochs"] > 1 else "") if row["epochs"] else "-"
        table.add_row(
            row["path"],
            f"{row['weight']:g}",
            f"{row['share']:.1%}",
            held,
            format_tokens(row["budget_tokens"]),
            epochs,
        )
    return table


@click.command("plan")
@click.argument("spec_path", metavar="SPEC", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option(
    "--mfu",
    type=click.FloatRange(0, 1, min_open=True),
    default=0.4,
    show_default=True,
    help="Model FLOPs utilisation assumed for GPU-hours (of 989 TFLOP/s dense BF16 H100).",
)
@click.option(
    "--gpu",
    type=click.Choice(sorted(GPUS)),
    default="h100-80gb",
    show_default=True,
    help="GPU the per-device memory estimate is checked against.",
)
def plan_command(spec_path: str, as_json: bool, mfu: float, gpu: str) -> None:
    """Show SPEC's trials, shared stages, exact parameter counts and compute, without loading weights."""
    started = time.perf_counter()
    loaded = _load_or_exit(spec_path, as_json)
    plan = plan_dict(loaded, mfu, gpu)
    plan["seconds"] = round(time.perf_counter() - started, 3)
    if as_json:
        click.echo(json.dumps(plan, indent=2))
    else:
        print_plan(plan, wide_console())
