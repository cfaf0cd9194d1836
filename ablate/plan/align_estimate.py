"""The plan's alignment phase: each distinct `align` stage's training tokens and FLOPs, counted before
anything runs. Tokens per example are measured by tokenizing (a sample of) the stage's training records
with the teacher's tokenizer and the chat template the stage uses (the students keep the tokenizer); FLOPs
are 6 x student parameters per token, 8 x for a preference stage (the frozen reference's forward too)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ablate.spec.align import PREFERENCE_METHODS


def align_plan(
    spec: Any, stages: Mapping[str, Any], student_params: Mapping[str, int], base_dir: Path
) -> list[dict[str, Any]]:
    """One row per alignment stage name: its runs (distinct stages), examples and tokens per run, and total
    FLOPs. `stages`: the graph's align stages by hash; `student_params`: align stage hash -> its student's
    parameters. Tokens are None when the tokenizer cannot be loaded here (a hub model on an offline machine)."""
    if spec.align is None:
        return []
    from ablate.align.sets import load_set
    from ablate.align.templates import apply, template_for
    from ablate.align.train import steps_for, tokens_per_example
    from ablate.models.registry import load_tokenizer

    try:
        tokenizer = load_tokenizer(spec.teacher.model)
        tokenizer = apply(tokenizer, template_for(spec.align.chat_template, tokenizer))
    except Exception:  # noqa: BLE001 - not loadable here: the tokens are not estimated
        tokenizer = None
    rows: dict[str, dict[str, Any]] = {}
    measured: dict[tuple, tuple[int, float | None]] = {}
    for h, stage in stages.items():
        settings = stage.config["stage"]
        probe = (settings["data"], settings["method"], settings["held_out"], settings["max_length"])
        if probe not in measured:
            data = load_set(settings["data"], settings["method"], settings["held_out"], base_dir)
            per = None
            if tokenizer is not None:
                per = tokens_per_example(tokenizer, data.train, settings["method"], settings["max_length"])
            measured[probe] = (len(data.train), per)
        train, per = measured[probe]
        examples = steps_for(settings, train) * settings["global_batch"]
        tokens = None if per is None else examples * per
        factor = 8 if settings["method"] in PREFERENCE_METHODS else 6
        row = rows.setdefault(
            settings["name"],
            {"stage": settings["name"], "method": settings["method"], "runs": 0, "examples": examples,
             "tokens_per_run": tokens, "flops": 0.0 if tokens is not None else None},
        )  # fmt: skip
        row["runs"] += 1
        if tokens is not None and row["flops"] is not None:
            row["flops"] += factor * student_params.get(h, 0) * tokens
    for row in rows.values():
        if row["tokens_per_run"] is not None:
            row["tokens_per_run"] = int(math.ceil(row["tokens_per_run"]))
    return list(rows.values())
