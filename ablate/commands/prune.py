"""`ablate prune` and `ablate eval`: the Minitron engine on one model, without a spec."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import get_args

import click

from ablate.commands import out_folder_option
from ablate.commands.progress import each, quiet_option
from ablate.errors import DataError, PruneError
from ablate.models.arch import AXES, check_target, count_parameters, shape_of
from ablate.spec.schema import DepthImportance, WidthImportance
from ablate.spec.units import parse_tokens


def _spec_option(flag: str, model: type, field: str, dest: str | None = None, help: str | None = None):
    """A click option whose choices and default are the spec schema's own (a Literal field), so the CLI
    offers exactly what a spec accepts and the two never need keeping in step."""
    info = model.model_fields[field]
    names = [flag] if dest is None else [flag, dest]
    return click.option(
        *names,
        type=click.Choice(list(get_args(info.annotation))),
        default=info.default,
        show_default=True,
        help=help,
    )


log = logging.getLogger(__name__)


def parse_target(text: str) -> dict[str, int]:
    """'hidden_size=448,intermediate_size=1152' -> {'hidden_size': 448, 'intermediate_size': 1152}."""
    target: dict[str, int] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep:
            raise PruneError(f"target item '{part}' must look like AXIS=N (axes: {', '.join(AXES)})")
        if key not in AXES:
            raise PruneError(f"unknown target axis '{key}' (expected one of {', '.join(AXES)})")
        try:
            target[key] = int(value)
        except ValueError:
            raise PruneError(f"target {key}={value!r} is not a whole number") from None
    if not target:
        raise PruneError(
            f"--target names no axis (e.g. hidden_size=448,intermediate_size=1152; axes: {', '.join(AXES)})"
        )
    return target


def _tokens(value: str, what: str) -> int:
    try:
        return parse_tokens(value)
    except ValueError as exc:
        raise DataError(f"{what}: {exc}") from None


def _progress(items, description: str, enabled: bool):
    """The batches of a long loop with its progress on stderr (a bar, or a line every few seconds)."""
    from rich.console import Console

    return each(items, description, Console(stderr=True), enabled)


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


@click.command("prune")
@click.option(
    "--model", "model_ref", required=True, help="builtin:NAME, a local HF directory, or a cached HF id."
)
@click.option(
    "--target",
    "target_text",
    required=True,
    help="AXIS=N[,AXIS=N...], e.g. hidden_size=448,intermediate_size=1152.",
)
@out_folder_option("Directory for the pruned checkpoint.", dest="out_dir", required=True)
@_spec_option("--importance", WidthImportance, "method", dest="importance")
@_spec_option("--batch-agg", WidthImportance, "batch_agg")
@_spec_option("--seq-agg", WidthImportance, "seq_agg")
@_spec_option("--mlp-site", WidthImportance, "mlp_site")
@_spec_option(
    "--head-aggregation",
    WidthImportance,
    "head_aggregation",
    help="token_l2: L2 over a head's channels per token first; channel_l2: Model Optimizer's order.",
)
@_spec_option("--depth-method", DepthImportance, "method", dest="depth_method")
@_spec_option(
    "--contiguous-metric",
    DepthImportance,
    "contiguous_metric",
    help="What scores a skipped block with --depth-method contiguous.",
)
@click.option("--calibration-samples", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--corpus", default="builtin:pydoc", show_default=True, help="Calibration corpus.")
@click.option("--seq-len", type=click.IntRange(min=2), default=128, show_default=True)
@click.option(
    "--eval-tokens", default="8k", show_default=True, help="Held-out eval tokens kept out of calibration."
)
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random baseline.")
@click.option(
    "--scores", "scores_path", type=click.Path(dir_okay=False), help="Reuse saved importance scores."
)
@click.option("--force", is_flag=True, help="Replace a non-empty --out.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@quiet_option
def prune_command(
    model_ref: str,
    target_text: str,
    out_dir: str,
    importance: str,
    batch_agg: str,
    seq_agg: str,
    mlp_site: str,
    head_aggregation: str,
    depth_method: str,
    contiguous_metric: str,
    calibration_samples: int,
    corpus: str,
    seq_len: int,
    eval_tokens: str,
    batch_size: int,
    seed: int,
    scores_path: str | None,
    force: bool,
    as_json: bool,
    quiet: bool,
) -> None:
    """Score every head, neuron, channel and layer of a model and trim it to --target."""
    from ablate.models.registry import load_config

    # Everything checkable without weights is checked first: a bad call fails in a second.
    target = parse_target(target_text)
    config = load_config(model_ref)
    problems = check_target(config, target)
    if problems:
        raise PruneError("; ".join(problems))
    from ablate.prune.apply import check_out_dir

    check_out_dir(Path(out_dir), overwrite=force)
    eval_count = _tokens(eval_tokens, "--eval-tokens")

    _quiet_transformers()
    from ablate.models.registry import load_model
    from ablate.prune.apply import prune_model, save_pruned
    from ablate.prune.importance import finite_or_raise
    from ablate.prune.scores import ImportanceScores
    from ablate.run.stage_runners import data_config, score_importance

    started = time.perf_counter()
    model, tokenizer = load_model(model_ref)
    timings = {"load_s": time.perf_counter() - started}
    t0 = time.perf_counter()
    if scores_path:
        scores = ImportanceScores.load(scores_path)
        scores.check_matches(model)
        finite_or_raise(scores)
    else:  # the importance stage's engine step, on the settings the options give
        settings = {
            **data_config(corpus, seq_len, eval_count, calibration_samples, batch_size),
            "importance": {
                "width": {
                    "method": importance,
                    "batch_agg": batch_agg,
                    "seq_agg": seq_agg,
                    "mlp_site": mlp_site,
                    "head_aggregation": head_aggregation,
                },
                "depth": {"method": depth_method, "contiguous_metric": contiguous_metric},
                "seed": seed,
            },
            "depth_targets": [target["num_hidden_layers"]]
            if depth_method == "contiguous" and "num_hidden_layers" in target
            else [],
        }
        scores = score_importance(
            model,
            tokenizer,
            settings,
            view=lambda items: _progress(items, "importance", not (as_json or quiet)),
        )
    timings["importance_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    pruned = prune_model(model, scores, target)
    timings["prune_s"] = time.perf_counter() - t0
    params = sum(p.numel() for p in pruned.parameters())
    teacher_params = sum(p.numel() for p in model.parameters())
    info = {
        "model": model_ref,
        "target": target,
        "importance": scores.summary(),
        "kept_layers": pruned.ablate_kept.layers,
        "teacher_shape": shape_of(model.config),
        "shape": shape_of(pruned.config),
        "architecture": pruned.config.architectures[0] if pruned.config.architectures else None,
        "params": params,
        "teacher_params": teacher_params,
        "planned_params": count_parameters(pruned.config),
    }
    t0 = time.perf_counter()
    out = save_pruned(pruned, tokenizer, out_dir, extra=info, scores=scores, overwrite=force)
    timings["save_s"] = time.perf_counter() - t0
    info["out"] = str(out)
    info["timings"] = {k: round(v, 3) for k, v in timings.items()}
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    shape = info["shape"]
    click.echo(
        f"pruned {model_ref} -> {out}\n"
        f"  {teacher_params / 1e6:.2f}M -> {params / 1e6:.2f}M params ({info['architecture']})\n"
        f"  layers {shape['num_hidden_layers']}, hidden {shape['hidden_size']}, FFN {shape['intermediate_size']}, "
        f"heads {shape['num_attention_heads']}/{shape['num_key_value_heads']} x {shape['head_dim']}\n"
        f"  importance: {importance} in {timings['importance_s']:.1f}s"
    )


@click.command("eval")
@click.option(
    "--model", "model_ref", required=True, help="builtin:NAME, a local HF directory, or a cached HF id."
)
@click.option("--teacher", "teacher_ref", help="Also report KL to this teacher and top-1 agreement.")
@click.option("--corpus", default="builtin:pydoc", show_default=True)
@click.option("--tokens", "tokens_text", default="16k", show_default=True, help="Held-out eval tokens.")
@click.option("--seq-len", type=click.IntRange(min=2), default=128, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option(
    "--tasks",
    "tasks_text",
    default="",
    help="Also run these lm-eval tasks (comma-separated names or task folders; pydoc_cloze ships with ablate).",
)
@click.option("--limit", "limit_text", help="Per task: a count of documents, or a fraction below 1.")
@click.option(
    "--num-fewshot", type=click.IntRange(min=0), help="Few-shot examples (default: each task's own)."
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@quiet_option
def eval_command(
    model_ref: str,
    teacher_ref: str | None,
    corpus: str,
    tokens_text: str,
    seq_len: int,
    batch_size: int,
    tasks_text: str,
    limit_text: str | None,
    num_fewshot: int | None,
    as_json: bool,
    quiet: bool,
) -> None:
    """Held-out LM loss and perplexity of a model (and KL / top-1 agreement with a teacher), and its
    lm-eval benchmarks with --tasks."""
    from ablate.errors import ModelError
    from ablate.models.registry import load_config

    eval_count = _tokens(tokens_text, "--tokens")
    benchmarks = _benchmark_settings(tasks_text, limit_text, num_fewshot, batch_size)
    load_config(model_ref)
    if teacher_ref:
        load_config(teacher_ref)
    _quiet_transformers()
    from ablate.models.registry import load_model
    from ablate.run.stage_runners import data_config, eval_metrics, splits_for

    started = time.perf_counter()
    model, tokenizer = load_model(model_ref)
    teacher = None
    if teacher_ref:
        teacher, teacher_tokenizer = load_model(teacher_ref)
        if teacher_tokenizer.get_vocab() != tokenizer.get_vocab():
            raise ModelError(
                f"'{model_ref}' and teacher '{teacher_ref}' use different tokenizers; KL needs the same vocabulary"
            )
    splits = splits_for(data_config(corpus, seq_len, eval_count), tokenizer)
    view = lambda items: _progress(items, "evaluating", not (as_json or quiet))  # noqa: E731
    metrics = eval_metrics(model, splits.eval, batch_size, teacher, view)
    result = {"model": model_ref, "teacher": teacher_ref, "corpus": corpus, "seq_len": seq_len, **metrics}
    if benchmarks is not None:
        from ablate.benchmarks.harness import run_benchmarks

        tasks, settings = benchmarks
        out = run_benchmarks(model, tokenizer, tasks, settings.limit, settings.num_fewshot, batch_size)
        result["benchmarks"] = out["metrics"]
    result["seconds"] = round(time.perf_counter() - started, 3)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    line = f"{model_ref}: loss {metrics['lm_loss']:.4f}, perplexity {metrics['perplexity']:.3f} over {metrics['tokens']} tokens"
    if teacher is not None:
        line += (
            f"; KL to teacher {metrics['kl_to_teacher']:.4f}, top-1 agreement {metrics['top1_agreement']:.3f}"
        )
    click.echo(line)
    if benchmarks is not None:
        from ablate.benchmarks.table import benchmark_table

        click.echo("\n".join(benchmark_table([(model_ref, result["benchmarks"])])))


def _benchmark_settings(tasks_text: str, limit_text: str | None, num_fewshot: int | None, batch_size: int):
    """(TaskSet, Evaluation) for --tasks, checked before any model loads; None without --tasks."""
    if not tasks_text.strip():
        if limit_text is not None or num_fewshot is not None:
            raise PruneError("--limit and --num-fewshot apply to benchmarks: give --tasks too")
        return None
    from pydantic import ValidationError

    from ablate.benchmarks.tasks_index import resolve
    from ablate.spec.schema import Evaluation

    tasks = [t.strip() for t in tasks_text.split(",") if t.strip()]
    try:
        settings = Evaluation(tasks=tasks, limit=limit_text, num_fewshot=num_fewshot, batch_size=batch_size)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise PruneError(
            f"--{err['loc'][0]} {limit_text!r}: {err['msg'].removeprefix('Value error, ')}"
        ) from None
    return resolve(tasks, field="--tasks"), settings
