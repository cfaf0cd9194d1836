"""Recovery after pruning, by loss: kld vs ce vs scratch at the same token budget. Prints JSON.

Default (the issue's benchmark): SmolLM2-135M pruned to hidden 448 / FFN 1152 (activation importance,
batch=l2, seq=mean, 32 calibration sequences), then 40k tokens of training at seq 256 on the pydoc
corpus with each loss, from the same pruned weights (scratch: the same shape, random init, seed 0).
Held-out perplexity, KL to the teacher and top-1 agreement before and after on the eval split.

    python bench/distill_quality.py                   # ~30-60 min on 2 CPU cores
    python bench/distill_quality.py --model builtin:tiny-mistral --target hidden_size=48,intermediate_size=64 \
        --tokens 8k --seq-len 64 --eval-tokens 2k      # seconds

Resumable: each loss trains in --work/<loss>/ and its finished metrics are kept there, so a killed run
continues where it stopped (delete --work to start over).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ablate.commands.prune import parse_target  # noqa: E402
from ablate.data.corpus import batches, token_splits  # noqa: E402
from ablate.distill.config import TrainConfig  # noqa: E402
from ablate.distill.models import reinitialise  # noqa: E402
from ablate.distill.train import train  # noqa: E402
from ablate.evaluate import evaluate  # noqa: E402
from ablate.models.registry import load_model  # noqa: E402
from ablate.prune.apply import prune_model  # noqa: E402
from ablate.prune.importance import compute_importance  # noqa: E402
from ablate.spec.units import parse_tokens  # noqa: E402


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="builtin:smollm2-135m")
    ap.add_argument("--target", default="hidden_size=448,intermediate_size=1152")
    ap.add_argument("--corpus", default="builtin:pydoc")
    ap.add_argument("--tokens", default="40k")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--eval-tokens", default="8k")
    ap.add_argument("--calibration-samples", type=int, default=32)
    ap.add_argument("--losses", default="kld,ce,scratch")
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--min-lr", type=float, default=1e-5)
    ap.add_argument("--warmup-steps", type=int, default=2)
    ap.add_argument("--global-batch", type=int, default=8)
    ap.add_argument("--micro-batch", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument(
        "--work", default=".ablate/bench/distill_quality", help="checkpoints and per-loss results"
    )
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    teacher, tokenizer = load_model(args.model)
    splits = token_splits(
        tokenizer, args.corpus, args.seq_len, parse_tokens(args.eval_tokens), args.calibration_samples
    )
    log(f"{args.model}: {len(splits.train)} train / {len(splits.eval)} eval sequences of {args.seq_len}")
    cached_teacher = work / "teacher_eval.json"
    if cached_teacher.is_file():
        teacher_eval = json.loads(cached_teacher.read_text())
    else:
        teacher_eval = evaluate(teacher, splits.eval)
        cached_teacher.write_text(json.dumps(teacher_eval))
    log(f"teacher perplexity {teacher_eval['perplexity']:.3f}")

    target = parse_target(args.target)
    scores = compute_importance(teacher, "activation", batches(splits.calibration, 8))
    pruned = prune_model(teacher, scores, target)
    pruned_eval = evaluate(pruned, splits.eval, teacher=teacher)
    log(
        f"pruned to {target}: perplexity {pruned_eval['perplexity']:.3f}, KL {pruned_eval['kl_to_teacher']:.4f}"
    )

    runs = {}
    for loss in [x.strip() for x in args.losses.split(",") if x.strip()]:
        done = work / loss / "bench_result.json"
        config = TrainConfig(
            loss=loss, tokens=parse_tokens(args.tokens), lr=args.lr, min_lr=args.min_lr,
            warmup_steps=args.warmup_steps, global_batch=args.global_batch, micro_batch=args.micro_batch,
            seq_len=args.seq_len, seed=args.seed, checkpoint_every=5,
        )  # fmt: skip
        if done.is_file() and json.loads(done.read_text())["config"] == config.to_dict():
            runs[loss] = json.loads(done.read_text())
            log(f"{loss}: cached")
            continue
        student = copy.deepcopy(pruned)
        before = pruned_eval
        if loss == "scratch":
            reinitialise(student, args.seed)  # what train() does; evaluated here to show the starting point
            before = evaluate(student, splits.eval, teacher=teacher)
        t0 = time.perf_counter()

        def on_step(m, loss=loss):
            log(f"{loss}: step {m['step']}/{m['steps']} loss {m['loss']:.4f} ({m['tokens_per_s']:.0f} tok/s)")

        result = train(student, teacher, splits.train, config, work / loss / "train", on_step=on_step)
        after = evaluate(student, splits.eval, teacher=teacher)
        runs[loss] = {
            "config": config.to_dict(),
            "before": before,
            "after": after,
            "steps": result.steps,
            "tokens": result.tokens,
            "final_train_loss": result.final_loss,
            "loss_curve": result.loss_curve,
            "train_seconds": round(time.perf_counter() - t0, 1),
        }
        done.write_text(json.dumps(runs[loss], indent=1))
        log(f"{loss}: perplexity {before['perplexity']:.3f} -> {after['perplexity']:.3f}")
        del student

    ppl = {loss: r["after"]["perplexity"] for loss, r in runs.items()}
    report = {
        "model": args.model,
        "target": target,
        "corpus": args.corpus,
        "seq_len": args.seq_len,
        "tokens": parse_tokens(args.tokens),
        "train_sequences": len(splits.train),
        "eval_tokens": teacher_eval["tokens"],
        "teacher_params": sum(p.numel() for p in teacher.parameters()),
        "student_params": sum(p.numel() for p in pruned.parameters()),
        "teacher": teacher_eval,
        "pruned_before": pruned_eval,
        "runs": {k: {kk: vv for kk, vv in v.items() if kk != "loss_curve"} for k, v in runs.items()},
        "perplexity_after": ppl,
        "kld_lt_ce_lt_scratch": (
            ppl["kld"] < ppl["ce"] < ppl["scratch"] if {"kld", "ce", "scratch"} <= set(ppl) else None
        ),
        "threads": torch.get_num_threads(),
        "seconds": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
