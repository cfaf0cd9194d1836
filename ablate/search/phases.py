"""The compute of a search, phase by phase, for `ablate plan` (the stages themselves are not run yet).

Phases, as the stages will run them: importance once (the teacher's, shared with the trials when the
settings match, so counted once, in the plan's importance); every candidate pruned and scored one-shot on the held-out split; the top_k retrained
as ordinary distillations; each retrained candidate evaluated with the selection metric, and the best
recorded. FLOPs: a forward pass is 2 x params x tokens (plus the teacher's for kl_to_teacher and
top1_agreement); retraining is ablate.plan.estimate.distill_flops. Which candidates reach the top_k is
known only after scoring, so retraining and selection are costed for the top_k largest (an upper
bound). A benchmark metric's compute depends on its documents and is not estimated.
"""

from __future__ import annotations

from collections.abc import Callable

from ablate.jsonable import jsonable
from ablate.plan.estimate import distill_flops
from ablate.search.check import retrain_distill
from ablate.search.enumerate import Enumeration
from ablate.spec.schema import Spec

TEACHER_METRICS = ("kl_to_teacher", "top1_agreement")  # evaluated against the teacher's logits


def _eval_flops(params: list[int], teacher_params: int, tokens: int, metric: str) -> float | None:
    """A held-out evaluation of each model in `params`; None for a benchmark's metric."""
    if "/" in metric:
        return None
    teacher = 2.0 * teacher_params * tokens * len(params) if metric in TEACHER_METRICS else 0.0
    return 2.0 * sum(params) * tokens + teacher


def search_phases(
    spec: Spec, found: Enumeration, teacher_params: int, gpu_hours: Callable[[float], float]
) -> dict:
    """The plan's `search` section: the space, the candidates, K, and each phase's runs and compute."""
    search = spec.search
    assert search is not None
    k = search.score.top_k
    every = [c.params for c in found.candidates]
    top = every[:k]  # the candidates come largest first
    eval_tokens = spec.data.eval_tokens
    retrain = retrain_distill(spec)
    calibration_tokens = spec.calibration.samples * spec.data.seq_len
    phases = [
        ("importance", 1, calibration_tokens, 2.0 * teacher_params * calibration_tokens,
         "the teacher's importance pass, once (shared with the trials' when the settings match)"),
        ("one-shot scoring", found.count, eval_tokens,
         _eval_flops(every, teacher_params, eval_tokens, search.score.metric),
         f"every candidate pruned and scored by {search.score.metric}"),
        ("retraining", k, retrain.tokens,
         sum(distill_flops(p, teacher_params, retrain.tokens, retrain.loss) for p in top),
         f"the top {k} by score, each a {retrain.loss} distillation (costed for the {k} largest)"),
        ("selection", k, eval_tokens, _eval_flops(top, teacher_params, eval_tokens, search.select_metric),
         f"each retrained candidate evaluated by {search.select_metric}; the best is the winner"),
    ]  # fmt: skip
    rows = [
        {
            "phase": name,
            "runs": runs,
            "tokens_per_run": tokens,
            "flops": flops,
            "gpu_hours": None if flops is None else gpu_hours(flops),
            "note": note,
        }
        for name, runs, tokens, flops, note in phases
    ]
    # Importance is the trials' own stage (same settings, same hash): the plan counts it once, there.
    known = [r["flops"] for r in rows[1:] if r["flops"] is not None]
    budget = search.budget
    return {
        "budget": {
            "params": budget.params,
            "lower_params": found.lower,
            "tolerance": budget.tolerance,
            "memory_gib": budget.memory_gib,
            "seq_len": budget.seq_len,
            "batch": budget.batch,
        },
        **{key: value for key, value in found.to_dict().items() if key != "nearest"},
        "top_k": k,
        "score_metric": search.score.metric,
        "select_metric": search.select_metric,
        "retrain": {
            "tokens": retrain.tokens,
            "loss": retrain.loss,
            "overrides": jsonable(search.retrain_overrides()),
        },
        "phases": rows,
        # Phases whose compute is unknown (benchmark metrics) are left out of the total, and say so.
        "total_flops": sum(known),
        "total_gpu_hours": gpu_hours(sum(known)),
        "complete_total": len(known) == len(rows) - 1,
    }
