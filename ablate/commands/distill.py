"""`ablate distill` and `ablate correct`: retrain a pruned student from its teacher, or fine-tune the
teacher on the distillation corpus first (teacher correction), without a spec.

Both are resumable: running the same command again continues from `OUT/train/checkpoint.pt`, and a
finished run only re-saves and re-evaluates. Layout of OUT:

    train/checkpoint.pt, train/train_result.json   trainer state (see ablate.distill.train)
    model/                                          the trained model as a plain HF checkpoint
    eval_before.json                                held-out metrics of the model as given
    distill.json / correct.json                     what the command printed with --json
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import click

from ablate.commands.progress import StepProgress, quiet_option
from ablate.distill.config import TrainConfig
from ablate.errors import DataError, TrainError
from ablate.fsutil import staged_dir
from ablate.spec.schema import LOSSES, SCHEDULES, Calibration, Correction, Data, Distill
from ablate.spec.units import format_tokens, parse_tokens

log = logging.getLogger(__name__)


def _tokens(value: str, what: str) -> int:
    try:
        return parse_tokens(value)
    except ValueError as exc:
        raise TrainError(f"{what}: {exc}") from None


def _device(name: str | None) -> str:
    import torch

    if name:
        if name.startswith("cuda") and not torch.cuda.is_available():
            raise TrainError(f"--device {name}: no CUDA device is visible here; use --device cpu")
        return name
    return "cuda" if torch.cuda.is_available() else "cpu"


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise TrainError(f"--out '{out}' exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / "train").is_dir():
        raise TrainError(
            f"--out '{out}' is not empty and holds no ablate training run; choose a new directory "
            "(an existing run directory is resumed)"
        )


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    tmp.replace(path)


def _save_model(model, tokenizer, out: Path, extra_files: dict[str, Path] | None = None) -> Path:
    """Atomically (temp dir + rename) write a plain HF checkpoint to `out`, replacing an older one."""
    with staged_dir(out) as tmp:
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        for name, src in (extra_files or {}).items():
            shutil.copyfile(src, tmp / name)
    return out


def _number(x: float) -> str:
    """A default as the help writes it: 1e-4, 4.5e-7, 0, 120."""
    if x == 0 or (float(x).is_integer() and abs(x) >= 1):
        return str(int(x))
    mantissa, exponent = f"{x:e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def _defaults(name: str) -> str:
    """`[distill: X; correct: Y]`: an option whose default differs between the two commands (the spec's
    `distill` and `teacher.correction` defaults)."""
    distill, correct = Distill.model_fields[name].default, Correction.model_fields[name].default
    return f"[distill: {_number(distill)}; correct: {_number(correct)}]"


# The options both commands share. Trainer settings default to TrainConfig's (which are the spec's); the
# three left unset (None) take the command's own default: TrainConfig's for distill, the correction's for
# correct. The last six are the command's, not the trainer's (_COMMAND_OPTIONS).
_TRAIN_OPTIONS = [
    click.option("--lr", type=float, default=None, help=f"Peak learning rate {_defaults('lr')}."),
    click.option(
        "--min-lr", type=float, default=None, help=f"LR at the end of the decay {_defaults('min_lr')}."
    ),
    click.option("--warmup-steps", type=click.IntRange(min=0), default=None, help=_defaults("warmup_steps")),
    click.option("--schedule", type=click.Choice(SCHEDULES), default=TrainConfig.schedule),
    click.option(
        "--global-batch", type=click.IntRange(min=1), default=TrainConfig.global_batch, show_default=True
    ),
    click.option(
        "--micro-batch", type=click.IntRange(min=1), default=TrainConfig.micro_batch, show_default=True
    ),
    click.option("--seq-len", type=click.IntRange(min=2), default=TrainConfig.seq_len, show_default=True),
    click.option(
        "--weight-decay", type=click.FloatRange(min=0), default=TrainConfig.weight_decay, show_default=True
    ),
    click.option(
        "--grad-clip",
        type=click.FloatRange(min=0, min_open=True),
        default=TrainConfig.grad_clip,
        show_default=True,
    ),
    click.option("--seed", type=int, default=TrainConfig.seed, show_default=True),
    click.option(
        "--checkpoint-every",
        type=click.IntRange(min=1),
        default=TrainConfig.checkpoint_every,
        show_default=True,
        help="Steps.",
    ),
    click.option(
        "--corpus", default=Data.model_fields["corpus"].default, show_default=True, help="Training corpus."
    ),
    click.option(
        "--eval-tokens",
        default=format_tokens(Data.model_fields["eval_tokens"].default),
        show_default=True,
        help="Held-out tokens kept out of training.",
    ),
    click.option(
        "--eval-batch-size",
        type=click.IntRange(min=1),
        default=Calibration.model_fields["batch_size"].default,
        show_default=True,
    ),
    click.option("--device", default=None, help="cpu, cuda, cuda:N (default: cuda when visible)."),
    click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Run directory."),
    click.option("--json", "as_json", is_flag=True, help="Machine-readable output."),
    quiet_option,
]
_COMMAND_OPTIONS = ("corpus", "eval_tokens", "eval_batch_size", "device", "out_dir", "as_json", "quiet")


def _train_options(f):
    for option in reversed(_TRAIN_OPTIONS):
        f = option(f)
    return f


def _trainer_settings(options: dict[str, Any]) -> dict[str, Any]:
    """The trainer's settings among a command's options; those left unset keep the trainer's default."""
    return {k: v for k, v in options.items() if k not in _COMMAND_OPTIONS and v is not None}


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def _run(
    *,
    kind: str,
    model_ref: str,
    teacher_ref: str | None,
    config,
    corpus: str,
    eval_count: int,
    eval_batch_size: int,
    device: str,
    out: Path,
    as_json: bool,
    quiet: bool = False,
) -> dict[str, Any]:
    """Shared body of `distill` and `correct`: load, evaluate, train (resuming), save, evaluate."""
    from ablate.models.registry import load_config

    load_config(model_ref)  # family and reference checks before any weights are read
    if teacher_ref:
        load_config(teacher_ref)
    _quiet_transformers()
    from ablate.distill.models import check_compatible
    from ablate.distill.train import train
    from ablate.models.registry import load_model
    from ablate.run.stage_runners import data_config, eval_metrics, splits_for

    started = time.perf_counter()
    model, tokenizer = load_model(model_ref, device=device)
    teacher = None
    if teacher_ref:
        teacher, teacher_tokenizer = load_model(teacher_ref, device=device)
        check_compatible(model, teacher, config, tokenizer, teacher_tokenizer)
        if not config.needs_teacher and teacher_tokenizer.get_vocab() != tokenizer.get_vocab():
            teacher = None  # ce/scratch train without it; KL to a different vocabulary means nothing
    splits = splits_for(data_config(corpus, config.seq_len, eval_count), tokenizer)
    if len(splits.train) == 0:
        raise DataError(f"corpus '{corpus}' leaves no training sequences after {eval_count} eval tokens")

    out.mkdir(parents=True, exist_ok=True)
    before_path = out / "eval_before.json"
    if before_path.is_file():
        before = json.loads(before_path.read_text())
    else:
        before = eval_metrics(model, splits.eval, eval_batch_size, teacher)
        _write_json(before_path, before)

    from rich.console import Console

    with StepProgress(Console(stderr=True), kind, enabled=not (as_json or quiet)) as progress:
        result = train(model, teacher, splits.train, config, out / "train", on_step=progress)
    model.eval()
    extra = {}
    if Path(model_ref).is_dir() and (Path(model_ref) / "ablate-prune.json").is_file():
        extra["ablate-prune.json"] = Path(model_ref) / "ablate-prune.json"  # still a pruned child
    saved = _save_model(model, tokenizer, (out / "model").resolve(), extra)
    after = eval_metrics(model, splits.eval, eval_batch_size, teacher)
    return {
        "model": model_ref,
        "teacher": teacher_ref,
        "corpus": corpus,
        "device": device,
        "out": str(saved),
        "config": config.to_dict(),
        "train_sequences": len(splits.train),
        "epochs": round(result.steps * config.global_batch / len(splits.train), 3),
        "result": {k: v for k, v in result.to_dict().items() if k not in ("loss_curve", "lr_curve")},
        "before": before,
        "after": after,
        "seconds": round(time.perf_counter() - started, 3),
    }


def _echo(info: dict[str, Any], kind: str, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(info, indent=2, default=str))
        return
    r, b, a = info["result"], info["before"], info["after"]
    resumed = f" (resumed from step {r['resumed_from_step']})" if r["resumed_from_step"] is not None else ""
    line = (
        f"{kind}: {r['steps']} steps, {r['tokens']} tokens (budget {r['tokens_budget']}){resumed}, "
        f"final loss {r['final_loss']:.4f}\n"
        f"  held-out perplexity {b['perplexity']:.3f} -> {a['perplexity']:.3f}"
    )
    if "kl_to_teacher" in a and "kl_to_teacher" in b:
        line += f", KL to teacher {b['kl_to_teacher']:.4f} -> {a['kl_to_teacher']:.4f}"
    click.echo(line + f"\n  model saved to {info['out']}")


def _execute(
    kind: str,
    model_ref: str,
    teacher_ref: str | None,
    config: TrainConfig,
    options: dict[str, Any],
    **extra: Any,
) -> None:
    """Shared tail of `distill` and `correct`: check, run (resuming), write OUT/KIND.json and print."""
    config.validate()
    eval_count = _tokens(options["eval_tokens"], "--eval-tokens")
    out = Path(options["out_dir"])
    _check_out(out)
    info = _run(
        kind=kind, model_ref=model_ref, teacher_ref=teacher_ref, config=config, corpus=options["corpus"],
        eval_count=eval_count, eval_batch_size=options["eval_batch_size"], device=_device(options["device"]),
        out=out, as_json=options["as_json"], quiet=options["quiet"],
    )  # fmt: skip
    info.update(extra)
    _write_json(out / f"{kind}.json", info)
    _echo(info, kind, options["as_json"])


def _layer_pairs(text: str | None) -> list[tuple[int, ...]] | None:
    """--intermediate-layers 'S:T,S:T' as (student, teacher) pairs."""
    if not text:
        return None
    try:
        layers = [tuple(int(x) for x in pair.split(":")) for pair in text.split(",") if pair]
        if any(len(pair) != 2 for pair in layers):
            raise ValueError
    except ValueError:
        raise TrainError(f"--intermediate-layers {text!r} must look like 0:0,1:2 (student:teacher)") from None
    return layers


@click.command("distill")
@click.option(
    "--teacher", "teacher_ref", required=True, help="builtin:NAME, a local HF directory, or a cached HF id."
)
@click.option("--student", "student_ref", required=True, help="The pruned student (a local HF directory).")
@click.option("--tokens", "tokens_text", required=True, help="Training budget, e.g. 20k, 1.8B.")
@click.option(
    "--loss",
    type=click.Choice(LOSSES),
    default=TrainConfig.loss,
    show_default=True,
    help="kld: forward KL to the teacher; ce: LM loss only; scratch: random init + ce.",
)
@click.option(
    "--temperature",
    type=click.FloatRange(min=0, min_open=True),
    default=TrainConfig.temperature,
    show_default=True,
)
@click.option(
    "--intermediate-layers",
    default=None,
    help="kld+intermediate layer map 'S:T,S:T' (student:teacher); default: from the pruning.",
)
@_train_options
def distill_command(
    teacher_ref: str,
    student_ref: str,
    tokens_text: str,
    loss: str,
    temperature: float,
    intermediate_layers: str | None,
    **options: Any,
) -> None:
    """Retrain a pruned student from its teacher (or with ce / from scratch, as baselines)."""
    layers = _layer_pairs(intermediate_layers)
    config = TrainConfig(
        loss=loss,
        temperature=temperature,
        tokens=_tokens(tokens_text, "--tokens"),
        intermediate_layers=layers,
        **_trainer_settings(options),
    )
    _execute("distill", student_ref, teacher_ref, config, options, loss=loss)


@click.command("correct")
@click.option(
    "--teacher", "teacher_ref", required=True, help="builtin:NAME, a local HF directory, or a cached HF id."
)
@click.option("--tokens", "tokens_text", required=True, help="Fine-tuning budget, e.g. 100k, 1.8B.")
@_train_options
def correct_command(teacher_ref: str, tokens_text: str, **options: Any) -> None:
    """Teacher correction: fine-tune the teacher on the distillation corpus (loss ce) before pruning.

    Defaults follow the Minitron paper: 120 warm-up steps and a small peak LR (about 1/5 of the
    teacher's pre-training LR; 2e-5 here unless --lr says otherwise).
    """
    from ablate.distill.correction import correction_config

    config = correction_config(tokens=_tokens(tokens_text, "--tokens"), **_trainer_settings(options))
    _execute("correct", teacher_ref, None, config, options)
