"""Head aggregation order, token_l2 (ablate's) vs channel_l2 (Model Optimizer's), on the real SmolLM2-135M.

For each order: activation importance on a fixed calibration set of builtin:pydoc (and on each of its
two disjoint halves, to see how much the choice moves with the calibration sample), then one-shot
pruning (no retraining) to a few head targets, alone and with FFN pruning, and the held-out LM loss
of each pruned model. Also how far the two orders' head scores are apart and in how many layers they
keep different heads. Prints one JSON object.

    python bench/head_aggregation.py [--calibration-samples 64] [--eval-tokens 16k] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time

import torch

ORDERS = ("token_l2", "channel_l2")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin:smollm2-135m")
    parser.add_argument("--corpus", default="builtin:pydoc")
    parser.add_argument("--heads", default="6,3", help="query heads kept (a multiple of the KV heads)")
    parser.add_argument("--ffn", type=int, default=1152, help="FFN size of the combined targets")
    parser.add_argument("--calibration-samples", type=int, default=64)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--eval-tokens", default="16k")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--no-halves", action="store_true", help="skip the two calibration halves")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    from transformers.utils import logging as hf_logging

    from ablate.data.corpus import token_splits
    from ablate.evaluate import evaluate
    from ablate.models.arch import shape_of
    from ablate.models.registry import load_model
    from ablate.prune.activation import estimate_importance
    from ablate.prune.apply import prune_model, select
    from ablate.spec.units import parse_tokens

    hf_logging.disable_progress_bar()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    model, tok = load_model(args.model, device="cpu")
    splits = token_splits(
        tok, args.corpus, args.seq_len, parse_tokens(args.eval_tokens), args.calibration_samples
    )
    half = splits.calibration.shape[0] // 2
    calibrations = {"all": splits.calibration}
    if not args.no_halves:
        calibrations |= {"half_a": splits.calibration[:half], "half_b": splits.calibration[half:]}
    targets = {}
    for h in (int(x) for x in args.heads.split(",")):
        targets[f"heads{h}"] = {"num_attention_heads": h}
        targets[f"heads{h}_ffn{args.ffn}"] = {"num_attention_heads": h, "intermediate_size": args.ffn}

    def loss(m) -> float:
        return round(evaluate(m, splits.eval, batch_size=args.batch_size)["lm_loss"], 4)

    results: dict = {"teacher_lm_loss": loss(model), "calibrations": {}}
    for cal_name, cal in calibrations.items():
        scores = {
            order: estimate_importance(model, cal, head_aggregation=order, batch_size=args.batch_size)
            for order in ORDERS
        }
        a, b = scores["token_l2"].heads, scores["channel_l2"].heads
        # Heads are compared within a layer, so each layer's scores are normalised before comparing.
        rel = ((a / a.norm(dim=1, keepdim=True)) - (b / b.norm(dim=1, keepdim=True))).abs() / (
            b / b.norm(dim=1, keepdim=True)
        )
        row: dict = {"samples": int(cal.shape[0]), "max_rel_head_score_diff": round(float(rel.max()), 4)}
        for name, target in targets.items():
            keeps = {order: select(model, scores[order], target) for order in ORDERS}
            differ = sum(
                not torch.equal(keeps["token_l2"].heads[i], keeps["channel_l2"].heads[i])
                for i in keeps["token_l2"].layers
            )
            row[name] = {
                **{order: loss(prune_model(model, scores[order], target)) for order in ORDERS},
                "layers_keeping_different_heads": differ,
            }
        results["calibrations"][cal_name] = row
        print(json.dumps({cal_name: row}), file=sys.stderr, flush=True)  # progress: a run takes ~40 min
    wins = {order: 0 for order in ORDERS}
    for row in results["calibrations"].values():
        for name in targets:
            cell = row[name]
            if cell["token_l2"] != cell["channel_l2"]:
                wins[min(ORDERS, key=lambda o: cell[o])] += 1
    report = {
        "benchmark": "head_aggregation",
        "model": args.model,
        "teacher_shape": shape_of(model.config),
        "targets": targets,
        "importance": {"method": "activation", "batch_agg": "l2", "seq_agg": "mean"},
        "calibration": {"corpus": args.corpus, "samples": args.calibration_samples, "seq_len": args.seq_len},
        "eval": {"tokens": int(splits.eval[:, 1:].numel()), "seq_len": args.seq_len},
        "results": results,
        "lower_loss_count": wins,
        "machine": {"threads": args.threads, "cpu": platform.processor() or platform.machine()},
        "torch": torch.__version__,
        "total_s": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
