"""What `ablate validate` refuses in a spec's `search` section, each problem at the field that fixes it.

Checked against the teacher's config (no weights): values the teacher cannot take, a space with nothing
to search, a budget at or above the teacher, a budget no shape meets (naming the nearest shape), more
candidates than `max_candidates`, `top_k` above the candidate count, metrics that name no benchmark of
eval.tasks or have no known direction, and retraining overrides that make an invalid distillation.
"""

from __future__ import annotations

import time

from pydantic import ValidationError
from transformers import PretrainedConfig

from ablate.models.arch import shape_of
from ablate.plan.memory import GIB
from ablate.report.metrics import metric_info
from ablate.report.model import ReportError
from ablate.search.count import param_polynomial
from ablate.search.enumerate import MAX_SPACE, Candidate, Enumeration, enumerate_space, space_size
from ablate.search.space import ProblemAt, axis_choices
from ablate.spec.budget import fits_one_step, tokens_per_step
from ablate.spec.schema import TARGET_AXES, Distill, Spec
from ablate.spec.search import EVAL_METRICS, Search
from ablate.spec.units import format_tokens

SPACE = ("search", "space")
BUDGET = ("search", "budget")


def check_search(spec: Spec, teacher_config: PretrainedConfig) -> tuple[Enumeration | None, list[ProblemAt]]:
    """The enumeration of a valid search, or the problems that stop it (located, with their fix)."""
    search = spec.search
    assert search is not None
    problems = _check_metrics(spec, search) + _check_retrain(spec, search)
    axes, space_problems = axis_choices(shape_of(teacher_config), search.space)
    if space_problems:
        return None, problems + space_problems
    if not any(c.searched for c in axes.values()):
        shown = "; ".join(f"{a}: {list(axes[a].values)} ({axes[a].rule})" for a in TARGET_AXES)
        return None, [
            *problems,
            (
                SPACE,
                f"no axis has more than one value for this teacher ({shown}); lower a divisor, "
                "raise max_width_pruning / max_depth_pruning, or list values",
            ),  # fmt: skip
        ]
    if space_size(axes) > MAX_SPACE:
        return None, [
            *problems,
            (
                SPACE,
                f"{space_size(axes):,} shapes to enumerate (expected at most {MAX_SPACE:,}; coarser "
                "divisors, smaller max_pruning fractions, or fewer values)",
            ),  # fmt: skip
        ]
    started = time.perf_counter()
    choices = {a: axes[a].values for a in TARGET_AXES}
    poly = param_polynomial(teacher_config, choices)
    teacher_params = poly(shape_of(teacher_config))
    budget = search.budget
    if budget.params >= teacher_params:
        return None, [
            *problems,
            (
                (*BUDGET, "params"),
                f"the budget ({budget.params:,} parameters) is not below the teacher's "
                f"{teacher_params:,}: nothing to prune (expected fewer parameters)",
            ),  # fmt: skip
        ]
    found = enumerate_space(teacher_config, search, limit=search.max_candidates, polynomial=poly)
    found.seconds = time.perf_counter() - started  # the count polynomial's builds included
    if found.count == 0:
        problems.append((BUDGET, _none_meets(search, found)))
    elif found.count > search.max_candidates:
        problems.append(
            (
                BUDGET,
                f"{found.count:,} candidates meet the budget, each to prune and score (expected at "
                f"most search.max_candidates = {search.max_candidates}; narrow budget.tolerance, coarsen "
                "the divisors, or raise search.max_candidates)",
            )  # fmt: skip
        )
    elif search.score.top_k > found.count:
        problems.append(
            (
                ("search", "score", "top_k"),
                f"top_k {search.score.top_k} is more than the "
                f"{found.count} candidate(s) that meet the budget (expected at most {found.count}, or a "
                "wider budget.tolerance or space)",
            )  # fmt: skip
        )
    return (None if problems else found), problems


def _none_meets(search: Search, found: Enumeration) -> str:
    budget = search.budget
    window = f"{found.lower:,} to {budget.params:,} parameters (tolerance {budget.tolerance:g})"
    if budget.memory_gib is not None:
        window += f" and at most {budget.memory_gib:g} GiB at seq_len {budget.seq_len} x batch {budget.batch}"
    nearest = found.nearest
    assert nearest is not None
    return (
        f"no shape of the space ({found.space_size:,} shapes) has {window}; the nearest is "
        f"{_described(nearest, budget.params)} (expected a larger budget.params or tolerance, or a wider space)"
    )


def _described(candidate: Candidate, budget: int) -> str:
    off = (candidate.params - budget) / budget
    side = f"{abs(off):.1%} {'above' if off > 0 else 'below'} the budget"
    memory = "" if candidate.memory_bytes is None else f", {candidate.memory_bytes / GIB:.1f} GiB"
    return f"{candidate.name} with {candidate.params:,} parameters ({side}{memory})"


def _check_metrics(spec: Spec, search: Search) -> list[ProblemAt]:
    problems: list[ProblemAt] = []
    for section, metric, direction in (
        ("score", search.score.metric, search.score.higher_is_better),
        ("select", search.select_metric, search.select.higher_is_better),
    ):
        if section == "select" and search.select.metric is None:
            continue  # the score's metric, checked once
        where = ("search", section, "metric")
        task = metric.rpartition("/")[0]
        if metric not in EVAL_METRICS and task not in spec.eval.tasks:
            listed = ", ".join(spec.eval.tasks) or "none"
            problems.append(
                (
                    where,
                    f"{metric!r} names the benchmark {task!r}, which is not in eval.tasks (listed: "
                    f"{listed}; expected TASK/METRIC of one of them, or {', '.join(EVAL_METRICS)})",
                )  # fmt: skip
            )
            continue
        try:
            metric_info(metric, direction)
        except ReportError:
            problems.append(
                (
                    ("search", section, "higher_is_better"),
                    f"the direction of {metric!r} is unknown "
                    f"(expected search.{section}.higher_is_better: true or false)",
                )  # fmt: skip
            )
    return problems


def _check_retrain(spec: Spec, search: Search) -> list[ProblemAt]:
    """The retraining is distill with overrides: the merged settings must make a valid distillation."""
    where = ("search", "retrain")
    merged = {**spec.distill.model_dump(), **search.retrain_overrides()}
    try:
        distill = Distill.model_validate(merged)
    except ValidationError as exc:
        return [(where, f"distill with these overrides is invalid: {err['msg'].removeprefix('Value error, ')}")
                for err in exc.errors()]  # fmt: skip
    workers = spec.resources.trial.workers
    if distill.global_batch % (workers * distill.micro_batch):
        return [
            (
                where,
                f"global_batch ({distill.global_batch}) must be a multiple of resources.trial.workers x "
                f"micro_batch ({workers} x {distill.micro_batch})",
            )  # fmt: skip
        ]
    if not fits_one_step(distill.tokens, distill.global_batch, spec.data.seq_len):
        step = tokens_per_step(distill.global_batch, spec.data.seq_len)
        return [
            (
                (*where, "tokens"),
                f"{format_tokens(distill.tokens)} tokens is less than one optimizer step "
                f"(global_batch {distill.global_batch} x seq_len {spec.data.seq_len} = {step} tokens)",
            )  # fmt: skip
        ]
    return []


def retrain_distill(spec: Spec) -> Distill:
    """The distillation settings each top candidate is retrained with (a valid search's)."""
    assert spec.search is not None
    return Distill.model_validate({**spec.distill.model_dump(), **spec.search.retrain_overrides()})
