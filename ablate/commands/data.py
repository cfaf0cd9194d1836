"""`ablate data prepare SPEC` (run only the tokenize stages) and `ablate data inspect SPEC` (what the
loader will read: tokens per source, the effective blend, a few decoded samples)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click


def _spec_data(spec_path: str, as_json: bool) -> tuple[Any, list[dict[str, Any]], str]:
    """(loaded spec, the distinct data sections of its trials, the teacher reference)."""
    from ablate.commands.plan import _load_or_exit
    from ablate.spec.validate import resolve_relative

    loaded = _load_or_exit(spec_path, as_json)
    sections: list[dict[str, Any]] = []
    for trial in loaded.trials or []:
        data = trial.spec.data.model_dump(mode="json")
        data["calibration_samples"] = trial.spec.calibration.samples
        if data not in sections:
            sections.append(data)
    if not sections:
        data = loaded.spec.data.model_dump(mode="json")
        sections.append({**data, "calibration_samples": loaded.spec.calibration.samples})
    return loaded, sections, resolve_relative(loaded.path, loaded.spec.teacher.model)


@click.group(name="data")
def data_command() -> None:
    """Tokenize a spec's data sources into shards, and look at what the loader reads from them."""


@data_command.command(name="prepare")
@click.argument("spec_path", metavar="SPEC", type=click.Path(dir_okay=False))
@click.option(
    "--workers", default=1, show_default=True, type=click.IntRange(1, 256), help="Tokenizer processes."
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def prepare_command(spec_path: str, workers: int, as_json: bool) -> None:
    """Tokenize every source of SPEC into shards (resumes a killed run; finished sources are skipped)."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from ablate.data.prepare import sources_of, tokenize_all
    from ablate.data.shards import read_index
    from ablate.models.registry import load_tokenizer

    loaded, sections, teacher = _spec_data(spec_path, as_json)
    tokenizer = load_tokenizer(teacher)
    base_dir = Path(loaded.path).parent
    results = []
    with Progress(
        TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[tokens]:,} tokens"),
        TextColumn("{task.fields[rate]:,.0f} tokens/s"), TimeElapsedColumn(), disable=as_json, transient=False,
    ) as bar:  # fmt: skip
        tasks: dict[str, Any] = {}

        def progress(p) -> None:
            if p.source not in tasks:
                tasks[p.source] = bar.add_task(p.source, total=None, tokens=0, rate=0.0)
            bar.update(tasks[p.source], tokens=p.tokens, rate=p.tokens_per_s)
            if p.done:
                results_rate[p.source] = (p.tokens, p.seconds)

        results_rate: dict[str, tuple[int, float]] = {}
        for data in sections:
            sources = sources_of(data, base_dir)
            folders = tokenize_all(tokenizer, sources, data["seq_len"], progress=progress, workers=workers)
            for source, folder in zip(sources, folders, strict=True):
                index = read_index(folder) or {}
                tokens, seconds = results_rate.pop(source.path, (0, 0.0))
                results.append({
                    "source": source.path, "seq_len": data["seq_len"], "shards": str(folder),
                    "tokens": index.get("total_tokens"), "documents": index.get("documents"),
                    "shard_files": len(index.get("shards", [])), "dtype": index.get("dtype"),
                    "tokenized_now": tokens, "seconds": round(seconds, 3),
                    "tokens_per_s": round(tokens / seconds) if seconds > 0 else None,
                })  # fmt: skip
    if as_json:
        click.echo(json.dumps({"spec": str(loaded.path), "sources": results}, indent=2))
        return
    for r in results:
        done = "already tokenized" if not r["tokenized_now"] else f"{r['tokens_per_s']:,} tokens/s"
        click.echo(
            f"{r['source']}: {r['tokens']:,} tokens in {r['shard_files']} shard(s) ({done}) -> {r['shards']}"
        )


@data_command.command(name="inspect")
@click.argument("spec_path", metavar="SPEC", type=click.Path(dir_okay=False))
@click.option(
    "--samples", default=3, show_default=True, type=click.IntRange(0, 100), help="Decoded samples shown."
)
@click.option(
    "--chars", default=160, show_default=True, type=click.IntRange(10, 100_000), help="Characters per sample."
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def inspect_command(spec_path: str, samples: int, chars: int, as_json: bool) -> None:
    """Tokens per source, the effective blend of the train order, and a few decoded samples of SPEC's data."""
    from ablate.data.prepare import prepare_splits
    from ablate.models.registry import load_tokenizer

    loaded, sections, teacher = _spec_data(spec_path, as_json)
    tokenizer = load_tokenizer(teacher)
    out = []
    for data in sections:
        splits = prepare_splits(tokenizer, data, Path(loaded.path).parent, data["calibration_samples"])
        shown = []
        for i in range(min(samples, len(splits.train))):
            source = splits.sources[int(splits.train.source_ids[i])]["source"]
            text = tokenizer.decode(splits.train[i].tolist())
            shown.append({"position": i, "source": source, "text": text[:chars]})
        out.append({**splits.info(), "samples": shown})
    if as_json:
        click.echo(json.dumps({"spec": str(loaded.path), "data": out}, indent=2))
        return
    for info in out:
        click.echo(
            f"seq_len {info['seq_len']}: {info['total_tokens']:,} tokens; train {info['train_sequences']:,} samples, "
            f"eval {info['eval_sequences']}, calibration {info['calibration_sequences']} sequences"
        )
        for s in info["sources"]:
            click.echo(
                f"  {s['source']}: {s['tokens']:,} tokens, {s['documents']:,} documents, {s['sequences']:,} sequences "
                f"({s['dropped_tokens']} tail tokens dropped); weight {s['weight']:.3f}, blend share "
                f"{s['share']:.4f}, {s['train_samples']:,} train samples = {s['epochs']:.2f} epoch(s)"
            )
        for sample in info["samples"]:
            click.echo(f"  [{sample['position']}] {sample['source']}: {sample['text']!r}")
