"""The deliverable of `ablate build`: a self-contained Hugging Face model directory and its model card.

The directory holds safetensors weights, config.json, generation_config.json, the tokenizer files and
README.md (the model card): plain `AutoModelForCausalLM.from_pretrained` / `AutoTokenizer` load it with
no ablate code and no remote code. The card lists the teacher, the pruned axes, the importance
settings, the distillation recipe and token budgets, the evaluation against the teacher, the stage
hashes that produced it and the spec itself.

A build folder is written next to nothing else: everything goes into a temporary sibling that is
renamed into place when complete (see `publish`), and `build.json` (the manifest, written last) marks
it as a build of one recipe, so a later build knows whether a folder is its own.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import ModelCard
from transformers import GenerationConfig, PretrainedConfig

from ablate.build.card_meta import Benchmarks, benchmark_table, card_data, hub_datasets, teacher_license
from ablate.build.portable import make_portable
from ablate.build.recipe import BuildError, Recipe
from ablate.models.arch import shape_of
from ablate.secrets import redact, redact_text
from ablate.spec.units import format_tokens

MANIFEST = "build.json"
MODEL_DIR = "model"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
SHAPE_ROWS = (
    ("num_hidden_layers", "layers"),
    ("hidden_size", "hidden"),
    ("intermediate_size", "FFN"),
    ("num_attention_heads", "query heads"),
    ("num_key_value_heads", "KV heads"),
    ("head_dim", "head dim"),
    ("vocab_size", "vocabulary"),
)


# --- the output folder ---------------------------------------------------------------------------


def read_manifest(out: Path) -> dict[str, Any] | None:
    path = out / MANIFEST
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def check_out(out: Path, recipe_id: str) -> dict[str, Any] | None:
    """Refuse an output folder that holds anything but a previous build of this recipe; return that
    build's manifest (None for a new or empty folder)."""
    if out.exists() and not out.is_dir():
        raise BuildError(f"--out '{out}' exists and is not a directory; choose another --out")
    if not out.exists() or not any(out.iterdir()):
        return None
    manifest = read_manifest(out)
    if manifest is None:
        raise BuildError(
            f"--out '{out}' exists and is not an ablate build (no {MANIFEST}); nothing was written: "
            "choose a new or empty --out"
        )
    if manifest.get("recipe_id") != recipe_id:
        raise BuildError(
            f"--out '{out}' holds a build of another recipe (experiment {manifest.get('experiment')}, trial "
            f"{manifest.get('trial')}, {manifest.get('tokens')} tokens); nothing was written: choose another --out"
        )
    return manifest


def publish(out: Path, recipe_id: str, write: Callable[[Path], None]) -> None:
    """Run `write(tmp)` on an empty sibling folder and rename it to `out` (replacing a previous build of
    the same recipe); on any error nothing at `out` changes."""
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        write(tmp)
        if out.exists():
            check_out(out, recipe_id)  # still ours (or empty) at the moment of replacing it
            trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.rename(out, trash / out.name)
            os.rename(tmp, out)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_manifest(folder: Path, data: Mapping[str, Any]) -> None:
    text = json.dumps(redact({**data, "written": time.time()}), indent=1, default=str)
    (folder / MANIFEST).write_text(text + "\n")


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


# --- the model -----------------------------------------------------------------------------------


def generation_config(config: PretrainedConfig, tokenizer=None) -> GenerationConfig:
    gen = GenerationConfig.from_model_config(config)
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = getattr(tokenizer, name, None) if tokenizer is not None else None
        if getattr(gen, name, None) is None and value is not None:
            setattr(gen, name, value)
    if gen.pad_token_id is None and gen.eos_token_id is not None:
        gen.pad_token_id = gen.eos_token_id if isinstance(gen.eos_token_id, int) else gen.eos_token_id[0]
    return gen


def non_finite(model: torch.nn.Module) -> list[tuple[str, tuple[int, ...], int]]:
    """(name, shape, count) of every floating-point parameter or buffer holding a NaN or an infinity."""
    found = []
    with torch.no_grad():
        for name, tensor in model.state_dict(keep_vars=False).items():
            if tensor.is_floating_point():
                bad = int(tensor.numel() - torch.isfinite(tensor).sum().item())
                if bad:
                    found.append((name, tuple(tensor.shape), bad))
    return found


def _refuse_non_finite(model: torch.nn.Module, source_dir: Path, why: str) -> None:
    found = non_finite(model)
    if not found:
        return
    name, shape, bad = found[0]
    others = (
        f" (and {len(found) - 1} more tensor(s): {', '.join(n for n, _, _ in found[1:4])}...)"
        if len(found) > 1
        else ""
    )
    raise BuildError(
        f"tensor {name} {list(shape)} of the model in {source_dir} holds {bad:,} non-finite value(s) (NaN or "
        f"inf){others}; nothing was exported. {why}"
    )


def export_model(source_dir: Path, target: Path, dtype: str = "auto", origin: str = "") -> dict[str, Any]:
    """Load the distilled checkpoint and write it as a plain HF directory (weights, config, generation
    config, tokenizer); returns facts (params, dtype, bytes). Every tensor must be finite, as loaded and
    in the exported dtype: a model with a NaN is never exported (`origin` says how to remake it)."""
    from ablate.models.registry import load_model

    model, tokenizer = load_model(str(source_dir))
    _refuse_non_finite(
        model,
        source_dir,
        "Its checksums match, so it was published that way (a diverged run)"
        + (f": {origin}" if origin else ""),
    )
    if dtype != "auto":
        if dtype not in DTYPES:
            raise BuildError(f"--dtype {dtype!r} is not one of auto, {', '.join(DTYPES)}")
        model.to(DTYPES[dtype])
        _refuse_non_finite(
            model, source_dir, f"Its values overflow --dtype {dtype}: build with --dtype bfloat16 or auto"
        )
    for attr in ("ablate_kept",):
        if hasattr(model, attr):
            delattr(model, attr)
    model.generation_config = generation_config(model.config, tokenizer)
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(target, safe_serialization=True)
    tokenizer.save_pretrained(target)
    make_portable(target)  # the same model under every transformers the package allows
    params = sum(p.numel() for p in model.parameters())
    weights = sum(p.stat().st_size for p in target.glob("*.safetensors"))
    return {
        "params": params,
        "dtype": str(model.dtype).removeprefix("torch."),
        "weights_bytes": weights,
        "shape": shape_of(model.config),
    }


def write_config_only(config: PretrainedConfig, target: Path, dtype: str = "bfloat16") -> None:
    """config.json + generation_config.json of a model whose weights do not exist yet (dry run)."""
    target.mkdir(parents=True, exist_ok=True)
    config.dtype = dtype
    config.architectures = config.architectures or [
        f"{type(config).__name__.removesuffix('Config')}ForCausalLM"
    ]
    config.save_pretrained(target)
    generation_config(config).save_pretrained(target)
    make_portable(target)


# --- the model card --------------------------------------------------------------------------------


def _fmt_params(n: int | None) -> str:
    if not n:
        return "?"
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k"


def _fmt(value: Any, digits: int = 4) -> str:
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    if value is None:
        return "-"
    return str(value)


def evaluation_rows(
    recipe: Recipe, teacher_metrics: Mapping[str, float] | None, final_metrics, params
) -> list[dict]:
    """Teacher, the trial's student at its budget, and (when a longer final run was made) the final student.
    `eval_tokens` is how many tokens the evaluation scored; `distill_tokens` the distillation budget."""

    def row(model: str, distill_tokens: int | None, n_params, metrics) -> dict:
        metrics = dict(metrics or {})
        eval_tokens = metrics.pop("tokens", None)
        return {
            **metrics,
            "model": model,
            "distill_tokens": distill_tokens,
            "eval_tokens": eval_tokens,
            "params": n_params,
        }

    rows = [row("teacher", None, params.get("teacher"), teacher_metrics)]
    rows.append(
        row(
            f"student (trial {recipe.trial.key})",
            recipe.trial_tokens,
            params.get("student"),
            recipe.trial_metrics,
        )
    )
    if recipe.extra_distill:
        rows.append(row("student (this build)", recipe.tokens, params.get("student"), final_metrics))
    return rows


def evaluation_table(rows: list[dict]) -> list[str]:
    lines = [
        "| model | params | distillation tokens | LM loss | perplexity | KL to teacher | top-1 agreement |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        tokens = format_tokens(r["distill_tokens"]) if r.get("distill_tokens") else "-"
        lines.append(
            f"| {r['model']} | {_fmt_params(r.get('params'))} | {tokens} | {_fmt(r.get('lm_loss'))} | "
            f"{_fmt(r.get('perplexity'), 2)} | {_fmt(r.get('kl_to_teacher'))} | {_fmt(r.get('top1_agreement'), 3)} |"
        )
    return lines


def shape_table(teacher: Mapping[str, int], student: Mapping[str, int]) -> list[str]:
    lines = ["| | teacher | this model |", "|---|---:|---:|"]
    for key, label in SHAPE_ROWS:
        t, s = teacher.get(key), student.get(key)
        mark = " (pruned)" if t != s else ""
        lines.append(f"| {label} | {t} | {s}{mark} |")
    return lines


def model_card(
    recipe: Recipe,
    teacher_shape: Mapping[str, int],
    student_shape: Mapping[str, int],
    params: Mapping[str, int],
    eval_rows: list[dict] | None,
    dry_run: bool = False,
    teacher_source: str | None = None,
    benchmarks: list[tuple[str, Benchmarks]] | None = None,
    aligned: list[dict[str, Any]] | None = None,
) -> str:
    """README.md of the built model; `benchmarks` are (row label, lm-eval results) with this model's row
    labelled "this model" (its results become the card's `model-index`); `aligned`: each alignment stage's
    settings and facts (ablate.run.align_stage), in order, when the model was aligned after distillation."""
    trial = recipe.trial
    resolved = trial.resolved()
    teacher_ref = resolved["teacher"]["model"]
    d, data, cal, imp = resolved["distill"], resolved["data"], resolved["calibration"], resolved["importance"]
    correction = resolved["teacher"].get("correction")
    own = dict(benchmarks or []).get("this model") if not dry_run else None
    model_name = f"{recipe.source.name}-{trial.target}"
    metadata = card_data(
        model_name,
        teacher_ref,
        own,
        license=teacher_license(teacher_ref, teacher_source),
        datasets=hub_datasets(data),
        heldout={k: v for k, v in eval_rows[-1].items() if isinstance(v, float)} if eval_rows else None,
        corpus=_corpus_name(data),
    )
    ratio = params.get("student", 0) / params["teacher"] if params.get("teacher") else 0
    lines = [f"# {recipe.source.name}: {trial.target}", ""]
    if dry_run:
        lines += [
            "> **Dry run.** This card and config.json describe the model `ablate build` will make; no weights "
            "exist yet and nothing was trained or evaluated.",
            "",
        ]
    lines += [
        f"This model has {_fmt_params(params.get('student'))} parameters: it was pruned from **{teacher_ref}** "
        f"({_fmt_params(params.get('teacher'))}, {ratio:.1%} of its parameters kept) and retrained by "
        f"{_loss_words(d['loss'])} on {format_tokens(recipe.tokens)} tokens. "
        + _recipe_words(d["loss"], imp["width"]["method"]),
        "",
        f"Made by `ablate build` from experiment `{recipe.source.name}`, trial `{trial.key}` "
        f"({recipe.chosen_by}).",
        "",
        "## Architecture",
        "",
        *shape_table(teacher_shape, student_shape),
        "",
        f"Parameters: teacher {params.get('teacher', 0):,}; this model {params.get('student', 0):,}.",
        "",
        "## How it was made",
        "",
        f"- **Teacher**: `{teacher_ref}`"
        + (
            f" (weights used: `{teacher_source}`)" if teacher_source and teacher_source != teacher_ref else ""
        ),
    ]
    if correction:
        lines.append(
            f"- **Teacher correction**: fine-tuned on the distillation data first, {format_tokens(correction['tokens'])} "
            f"tokens, peak LR {correction['lr']:g}, {correction['warmup_steps']} warm-up steps."
        )
    axes = ", ".join(f"{k} {teacher_shape.get(k)} -> {v}" for k, v in trial.shape.items())
    width = imp["width"]
    lines += [
        f"- **Pruned axes** (target `{trial.target}`): {axes}. Query heads are removed equally within each KV "
        "group; K/V heads and head dim are kept; the vocabulary is kept.",
        f"- **Importance**: width by {width['method']}"
        + (
            f" (batch aggregation {width['batch_agg']}, sequence aggregation {width['seq_agg']}, MLP site "
            f"{width['mlp_site']}, head aggregation {width.get('head_aggregation', 'token_l2')})"
            if width["method"] == "activation"
            else ""
        )
        + f"; depth by {imp['depth']['method']}"
        + (
            f" ({imp['depth'].get('contiguous_metric', 'lm_loss')})"
            if imp["depth"]["method"] == "contiguous"
            else ""
        )
        + f"; {cal['samples']} calibration sequences of {data['seq_len']} tokens "
        f"(batch {cal['batch_size']}), one shot.",
        (
            f"- **Distillation**: loss `{d['loss']}`, temperature {d['temperature']:g}"
            if _distilled(d["loss"])
            else f"- **Retraining** (no teacher, no distillation): loss `{d['loss']}`, {_loss_words(d['loss'])}"
        )
        + f"; peak LR {d['lr']:g}, min LR {d['min_lr']:g}, {d['warmup_steps']} warm-up steps, {d['schedule']} "
        f"schedule; global batch {d['global_batch']} (micro-batch {d['micro_batch']}) x {data['seq_len']} tokens; "
        f"seed {trial.seed}.",
        f"- **Tokens**: {format_tokens(recipe.trial_tokens)} in the ablation trial"
        + (
            f", then {format_tokens(recipe.tokens)} for this final model (same recipe, longer run)"
            if recipe.extra_distill
            else " (the final model is the trial's)"
        )
        + f"; data `{data['corpus']}`.",
        "",
        "## Evaluation",
        "",
        f"Held-out split of `{data['corpus']}` ({format_tokens(data['eval_tokens'])} tokens, sequences of "
        f"{data['seq_len']}): next-token LM loss, perplexity, KL(teacher || model) and top-1 agreement with the "
        "teacher.",
        "",
    ]
    if dry_run or not eval_rows:
        lines += ["Not measured yet (dry run): `ablate build` fills this table.", ""]
    else:
        if aligned:
            lines += ["Measured on the distilled model, before the alignment stages below.", ""]
        lines += [*evaluation_table(eval_rows), ""]
    if aligned:
        from ablate.build.card_align import alignment_lines

        lines += alignment_lines(aligned)
    if benchmarks and not dry_run:
        lines += [
            "## Benchmarks",
            "",
            "lm-evaluation-harness, run by ablate's benchmark stage on the models in memory (value ± standard "
            "error).",
            "",
            *benchmark_table(benchmarks),
            "",
        ]
    lines += [
        "## Usage",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        'tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder")',
        'model = AutoModelForCausalLM.from_pretrained("path/to/this/folder")',
        'inputs = tokenizer("The Python standard library", return_tensors="pt")',
        "print(tokenizer.decode(model.generate(**inputs, max_new_tokens=32)[0]))",
        "```",
        "",
        "## Provenance",
        "",
        "| stage | hash |",
        "|---|---|",
        *[f"| {s.kind} | `{s.hash}` |" for s in recipe.chain],
        "",
        f"Recipe id `{recipe.id}`. Each stage's hash covers its kind, its resolved config and its parents' hashes.",
        "",
        "## The spec that produced it",
        "",
        "```yaml",
        redact_text(recipe.source.spec_text).rstrip(),  # the card is published: no passwords
        "```",
        "",
    ]
    # ModelCard parses the front matter back (as the hub will) and writes it as huggingface_hub does
    return str(ModelCard("---\n" + metadata.to_yaml() + "\n---\n\n" + "\n".join(lines)))


def _corpus_name(data: Mapping[str, Any]) -> str:
    if data.get("corpus"):
        return str(data["corpus"])
    return " + ".join(str(s["path"]) for s in data.get("sources") or [])


def _distilled(loss: str) -> bool:
    return loss not in ("ce", "scratch")


def _recipe_words(loss: str, width_method: str) -> str:
    """How the recipe relates to Minitron's: its pruning, and its distillation or the baseline in its place."""
    pruning = f"structured pruning with {width_method} importance"
    if _distilled(loss):
        return f"It follows the Minitron recipe: {pruning}, then knowledge distillation from the teacher."
    if loss == "scratch":
        return (
            f"It is a baseline of the Minitron recipe: the pruned shape ({pruning}) trained from a random "
            "initialisation, without the teacher's weights or knowledge distillation."
        )
    return (
        f"It is a baseline of the Minitron recipe: {pruning}, then plain training on the data in place of "
        "knowledge distillation (no teacher in the loss)."
    )


def _loss_words(loss: str) -> str:
    return {
        "kld": "logit distillation (forward KL to the teacher)",
        "kld+intermediate": "logit and intermediate-state distillation",
        "ce": "plain next-token training (cross-entropy)",
        "scratch": "training from a random initialisation (cross-entropy)",
    }.get(loss, loss)
