"""`ablate build`: the final model of an experiment (HF checkpoint + card, throughput, TensorRT-LLM engines)."""

from __future__ import annotations

import json
from typing import Any

import click
from rich.console import Console

from ablate.commands import out_folder_option
from ablate.commands.progress import StepProgress, quiet_option
from ablate.secrets import redact, redact_text


def _ints(text: str | None) -> tuple[int, ...] | None:
    if not text:
        return None
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError as exc:
        raise click.BadParameter(f"expected comma-separated integers (got {text!r})") from exc


def _lengths(text: str | None) -> tuple[tuple[int, int], ...] | None:
    if not text:
        return None
    from ablate.build.trtllm import parse_lengths

    try:
        return parse_lengths(text)
    except ValueError as exc:
        raise click.BadParameter(f"expected INPUT:OUTPUT pairs separated by commas (got {text!r})") from exc


@click.command("build")
@click.argument("name_or_spec", metavar="NAME_OR_SPEC")
@click.option("--trial", default=None, help="Trial key, or 'best' (default: the spec's build.trial).")
@click.option(
    "--tokens", default=None, help="Final distillation budget, e.g. 100k or 1.8B (default: build.tokens)."
)
@out_folder_option("Build folder (default: builds/NAME/KEY-TOKENS).")
@click.option(
    "--dry-run",
    is_flag=True,
    help="Write config.json, the card skeleton and the exact stages/commands; no weights.",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option(
    "--db",
    default=None,
    envvar="ABLATE_DB",
    help="Results database URL (default: $ABLATE_DB, else the spec's tracking.db, else .ablate/ablate.db).",
)
@click.option("--artifacts", default=None, help="Artifact store (default: the spec's tracking.artifacts).")
@click.option("--dtype", default="auto", type=click.Choice(["auto", "float32", "bfloat16", "float16"]),
              show_default=True, help="Dtype of the exported weights (auto: as trained).")  # fmt: skip
@click.option(
    "--formats", default=None, help="Comma list of hf, trtllm-bf16, trtllm-fp8 (default: build.formats)."
)
@click.option(
    "--throughput/--no-throughput",
    default=None,
    help="Measure generation throughput (default: on a GPU only; CPU figures are noise on a shared CPU).",
)
@click.option(
    "--device", default=None, help="Device for the throughput table (default: cuda if available, else cpu)."
)
@click.option("--batch-sizes", default=None, help="Throughput batch sizes, e.g. 1,8,32.")
@click.option("--lengths", default=None, help="Throughput INPUT:OUTPUT lengths, e.g. 128:128,512:128.")
@click.option("--reports", default="reports", show_default=True, type=click.Path(file_okay=False),
              help="Where reports/<experiment>/build.md goes.")  # fmt: skip
@quiet_option
def build_command(
    name_or_spec: str,
    as_json: bool,
    quiet: bool,
    db: str | None,
    artifacts: str | None,
    formats: str | None,
    batch_sizes: str | None,
    lengths: str | None,
    reports: str,
    **settings: Any,
) -> None:
    """Build the final model of an experiment (NAME) or spec file (SPEC).

    Resolves the best trial (or --trial KEY), reuses every stage already in the artifact store, runs the
    final distillation at build.tokens when that exceeds the trial's budget, and writes a self-contained
    Hugging Face folder (OUT/model: weights, tokenizer, model card), TensorRT-LLM engines (or the exact
    commands when TensorRT-LLM is not installed) and reports/<experiment>/build.md. On a GPU (or with
    --throughput) it measures generation throughput into OUT/throughput.json and the report.

    Progress (each stage, step of steps, loss, tokens/s, ETA) goes to stderr; --quiet or --json hide it.
    """
    from transformers.utils import logging as hf_logging

    from ablate.build.pipeline import build
    from ablate.build.recipe import open_source

    hf_logging.disable_progress_bar()  # per-file load/save bars of tiny folders: noise next to ours
    console = Console(stderr=True, soft_wrap=True)
    quiet = quiet or as_json
    say = (
        (lambda m: None)
        if quiet
        else (lambda m: console.print(redact_text(m), highlight=False, markup=False))
    )
    bar = StepProgress(console, enabled=not quiet)
    wanted_formats = [f.strip() for f in formats.split(",")] if formats else None
    allowed = {"hf", "trtllm-bf16", "trtllm-fp8"}
    if wanted_formats and set(wanted_formats) - allowed:
        raise click.BadParameter(f"--formats: each of {', '.join(sorted(allowed))} (got {formats!r})")
    source = open_source(name_or_spec, db=db, artifacts=artifacts)
    try:
        result = build(  # --trial, --tokens, --out, --dry-run, --dtype, --throughput, --device as they are
            source,
            formats=wanted_formats,
            batch_sizes=_ints(batch_sizes),
            lengths=_lengths(lengths),
            reports_dir=reports,
            say=say,
            on_step=bar,
            **settings,
        )
    finally:
        bar.close()
    if as_json:
        click.echo(json.dumps(redact(result.to_dict()), indent=2, default=str))
        return
    out_console = Console(soft_wrap=True)
    p = result.params
    what = "planned" if result.dry_run else "built"
    out_console.print(
        f"{what} {result.experiment} trial {result.trial}: {p.get('student', 0):,} parameters "
        f"(teacher {p.get('teacher', 0):,}) -> {result.model_dir}",
        highlight=False,
    )
    if result.metrics:
        t = result.teacher_metrics.get("lm_loss")
        out_console.print(
            f"eval LM loss {result.metrics['lm_loss']:.4f}"
            + (f" (teacher {t:.4f})" if t is not None else ""),
            highlight=False,
        )
    out_console.print(
        f"stages: {result.stages_run} run, {result.stages_reused} reused"
        + (", export reused" if result.export_reused else "")
        + f"; report {result.report}",
        highlight=False,
    )
