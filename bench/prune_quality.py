"""Quality of one-shot pruning with no retraining, on the real SmolLM2-135M.

Prunes SmolLM2-135M to hidden 448 / FFN 1152 (all heads and layers kept) with activation importance
(batch=l2, seq=mean, down_proj input; Minitron's best setting) and with the `magnitude` and `random`
baselines, then reports held-out perplexity on builtin:pydoc for each, plus the unpruned teacher.
Prints one JSON object.

    python bench/prune_quality.py [--calibration-samples 128] [--eval-tokens 16k] [--seq-len 128]
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin:smollm2-135m")
    parser.add_argument("--corpus", default="builtin:pydoc")
    parser.add_argument("--hidden-size", type=int, default=448)
    parser.add_argument("--intermediate-size", type=int, default=1152)
    parser.add_argument("--calibration-samples", type=int, default=128)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--eval-tokens", default="16k")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--random-seeds", default="0", help="comma-separated seeds of the random baseline")
    parser.add_argument(
        "--batch-agg-variants", action="store_true", help="also evaluate batch_agg mean and var (same pass)"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    from transformers.utils import logging as hf_logging

    from ablate.data.corpus import token_splits
    from ablate.evaluate import evaluate
    from ablate.models.arch import count_parameters, pruned_config, shape_of
    from ablate.models.registry import load_model
    from ablate.prune.activation import estimate_importance
    from ablate.prune.apply import prune_model
    from ablate.prune.importance import baseline_importance
    from ablate.spec.units import parse_tokens

    hf_logging.disable_progress_bar()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    model, tok = load_model(args.model, device=args.device)
    splits = token_splits(
        tok, args.corpus, args.seq_len, parse_tokens(args.eval_tokens), args.calibration_samples
    )
    target = {"hidden_size": args.hidden_size, "intermediate_size": args.intermediate_size}

    def measure(m) -> dict:
        t0 = time.perf_counter()
        metrics = evaluate(m, splits.eval, batch_size=args.batch_size)
        return {
            "lm_loss": round(metrics["lm_loss"], 4),
            "perplexity": round(metrics["perplexity"], 3),
            "params": sum(p.numel() for p in m.parameters()),
            "eval_s": round(time.perf_counter() - t0, 1),
        }

    results: dict[str, dict] = {"teacher": measure(model)}
    t0 = time.perf_counter()
    activation = estimate_importance(
        model, splits.calibration, batch_agg="l2", seq_agg="mean", batch_size=args.batch_size
    )
    importance_s = time.perf_counter() - t0
    candidates = {"activation": activation, "magnitude": baseline_importance(model, "magnitude")}
    for seed in (int(s) for s in args.random_seeds.split(",")):
        candidates[f"random_seed{seed}"] = baseline_importance(model, "random", seed=seed)
    if args.batch_agg_variants:
        for agg in ("mean", "var"):
            candidates[f"activation_batch_{agg}"] = activation.with_batch_agg(agg)
    for name, scores in candidates.items():
        pruned = prune_model(model, scores, target)
        results[name] = measure(pruned)
        del pruned
    planned = count_parameters(pruned_config(model.config, target))
    random_ppl = [v["perplexity"] for k, v in results.items() if k.startswith("random")]
    report = {
        "benchmark": "prune_quality",
        "model": args.model,
        "teacher_shape": shape_of(model.config),
        "target": target,
        "planned_params": planned,
        "importance": {
            "method": "activation",
            "batch_agg": "l2",
            "seq_agg": "mean",
            "mlp_site": "down_proj_input",
        },
        "calibration": {
            "samples": args.calibration_samples,
            "seq_len": args.seq_len,
            "seconds": round(importance_s, 1),
        },
        "eval": {"corpus": args.corpus, "tokens": int(splits.eval[:, 1:].numel()), "seq_len": args.seq_len},
        "results": results,
        "activation_beats_magnitude": results["activation"]["perplexity"]
        < results["magnitude"]["perplexity"],
        "activation_beats_random": all(results["activation"]["perplexity"] < p for p in random_ppl),
        "machine": {
            "device": args.device,
            "threads": args.threads,
            "cpu": platform.processor() or platform.machine(),
        },
        "torch": torch.__version__,
        "total_s": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
