"""The `align` stage: one instruction-tuning or preference stage (ablate.align.train, on TRL) of the model
its parent made (the trial's distilled student, or the previous alignment stage's model), evaluated on the
held-out records of its own set and of every earlier stage's set, before and after it.

Artifact: model/ (HF checkpoint, saved with the chat template it trained with) and align.json (method,
steps, examples, tokens, FLOPs, seconds, loss curve, `before` and `after` metrics). A killed stage resumes
from the last checkpoint in its work folder (`checkpoint_every`).
"""

from __future__ import annotations

import time
from typing import Any

from ablate.plan.stages import Stage
from ablate.run.stage_runners import StageContext, publish
from ablate.run.workdirs import store_work_dir

ALIGN_FILE = "align.json"


def eval_name(metric: str, owner: str, clashes: bool) -> str:
    """A held-out metric's name: the set's owner stage is named only when two sets give the same metric."""
    return f"{metric}@{owner}" if clashes else metric


def held_out_metrics(
    model: Any, tokenizer: Any, evals: list[dict[str, Any]], sets: dict[int, Any]
) -> dict[str, float]:
    """The model's metrics on the held-out records of each set in `evals` (ablate.align.metrics)."""
    from ablate.align.metrics import instruct_metrics, preference_metrics
    from ablate.spec.align import PREFERENCE_METHODS

    kinds = ["pref" if e["method"] in PREFERENCE_METHODS else "sft" for e in evals]
    out: dict[str, float] = {}
    for i, (spec, kind) in enumerate(zip(evals, kinds, strict=True)):
        measure = preference_metrics if kind == "pref" else instruct_metrics
        values = measure(model, tokenizer, sets[i].held_out, spec["max_length"])
        clashes = kinds.count(kind) > 1
        out |= {eval_name(k, spec["data"], clashes): float(v) for k, v in values.items()}
    return out


def run_align(stage: Stage, ctx: StageContext) -> dict[str, Any]:
    """Train one alignment stage and publish its model and facts (see the module docstring)."""
    import torch

    from ablate.align.sets import load_set
    from ablate.align.templates import apply, template_for
    from ablate.align.train import align_model
    from ablate.models.registry import load_model

    (parent,) = ctx.parents.values()
    config = stage.config
    settings = config["stage"]
    model, tokenizer = load_model(str(ctx.store.local_path(parent.hash) / "model"))
    apply(tokenizer, template_for(config["chat_template"], tokenizer, f"stage {parent.hash}"))
    if ctx.device:
        model.to(ctx.device)
    elif torch.cuda.is_available():
        model.to("cuda")
    sets = {
        i: load_set(e["data"], e["method"], e["held_out"], ctx.base_dir)
        for i, e in enumerate(config["evals"])
    }
    own = next(
        i
        for i, e in enumerate(config["evals"])
        if e["data"] == settings["data"] and e["method"] == settings["method"]
    )
    started = time.perf_counter()
    before = held_out_metrics(model, tokenizer, config["evals"], sets)
    work = store_work_dir(ctx.store, stage.hash, ctx.work_token)
    model.train()
    result = align_model(
        model, tokenizer, settings, sets[own].train, work, config["seed"], on_step=ctx.on_step
    )
    model.eval()
    after = held_out_metrics(model, tokenizer, config["evals"], sets)
    facts = {
        "name": settings["name"],
        "method": settings["method"],
        **result.to_dict(),
        "before": before,
        "after": after,
        "train_records": len(sets[own].train),
        "held_out_records": {config["evals"][i]["data"]: len(s.held_out) for i, s in sets.items()},
        "wall_seconds": round(time.perf_counter() - started, 3),
    }
    publish(ctx, stage.hash, {ALIGN_FILE: facts}, model, tokenizer, work=work)
    return facts


def read_align_facts(store: Any, align_hash: str) -> dict[str, Any]:
    """What a published align artifact says about its run."""
    import json

    with store.open(align_hash, ALIGN_FILE, "r") as f:
        return json.load(f)
