"""The model card's alignment section: every stage the built model went through after distillation, in
order, with its data, budget and settings, and what it changed on the held-out records."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ablate.spec.align import PREFERENCE_METHODS

_METHOD_WORDS = {
    "sft": "supervised fine-tuning on chat messages (loss on the assistant's answers only)",
    "dpo": "Direct Preference Optimization (sigmoid loss) against the previous model, frozen",
    "ipo": "Identity Preference Optimization against the previous model, frozen",
}


def _value(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def alignment_lines(stages: Sequence[dict[str, Any]]) -> list[str]:
    """`## Alignment`: one bullet per stage and a before/after table of the held-out metrics."""
    lines = [
        "## Alignment",
        "",
        f"After distillation the model went through {len(stages)} alignment stage(s), in this order, each on "
        "TRL's trainers and starting from the model the stage before made:",
        "",
    ]
    for i, s in enumerate(stages, 1):
        extra = f", beta {s['beta']:g}" if s["method"] in PREFERENCE_METHODS else ""
        lines.append(
            f"{i}. **{s['name']}**: {_METHOD_WORDS.get(s['method'], s['method'])}; data `{s['data']}` "
            f"({s.get('train_records', '?')} training records, {s['held_out']:.0%} held out); {s['steps']} steps "
            f"of {s['global_batch']} examples ({s['examples']} examples, {s['tokens']:,} tokens), peak LR "
            f"{s['lr']:g}, {s['schedule']} schedule, {s['warmup_steps']} warm-up steps{extra}; at most "
            f"{s['max_length']} tokens per example."
        )
    lines += ["", "Held-out metrics before and after each stage (ablate's align metrics):", ""]
    lines += ["| stage | metric | before | after |", "|---|---|---|---|"]
    for s in stages:
        for metric, after in s["after"].items():
            lines.append(
                f"| {s['name']} | {metric} | {_value(s['before'].get(metric, '-'))} | {_value(after)} |"
            )
    lines += [
        "",
        "`instruct_loss`: mean negative log-likelihood per token of held-out answers (lower is better); "
        "`pref_margin`: mean log p(chosen) - log p(rejected) over held-out pairs; `pref_win_rate`: share of "
        "those pairs where the chosen answer is the likelier (higher is better).",
        "",
    ]
    return lines
