"""The spec's `search` section: find the student shape under a parameter budget (Minitron's search).

Every shape of the space that meets the budget is enumerated from the teacher's config alone
(ablate/search), each is pruned and scored one-shot, the `top_k` best are retrained lightly, and the
selection metric picks the winner. The defaults are NVIDIA Model Optimizer's (`mcore_minitron`):
at most 40% of each width axis and 20% of the depth cut, divisors hidden 256 / FFN 512 / layers 2.
Imported by schema.py once Distill exists (the retraining overrides are distill's own fields).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, create_model, model_validator

from ablate.spec.limits import MAX_COUNT, MAX_TRIALS
from ablate.spec.schema import TARGET_AXES, Distill, PositiveInt, Strict, TokenCount
from ablate.spec.units import parse_params

ParamCount = Annotated[int, BeforeValidator(parse_params)]
Axis = Literal["hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers"]
DEPTH_AXIS = "num_hidden_layers"
# Model Optimizer's default divisors (hidden_size 256, ffn_hidden_size 512, num_layers 2); heads are
# counted per KV group, where Model Optimizer allows every multiple of the KV heads.
DIVISORS: dict[str, int] = {
    "hidden_size": 256,
    "intermediate_size": 512,
    "num_attention_heads": 1,
    "num_hidden_layers": 2,
}
# Metrics of ablate.evaluate a candidate can be scored by; anything else is a benchmark's TASK/METRIC.
EVAL_METRICS = ("lm_loss", "perplexity", "kl_to_teacher", "top1_agreement")
Fraction = Annotated[float, Field(ge=0, lt=1)]
MetricName = Annotated[str, Field(min_length=1, max_length=256)]


def _metric(value: Any) -> Any:
    if not isinstance(value, str) or value in EVAL_METRICS:
        return value
    task, slash, metric = value.rpartition("/")
    if not (slash and task and metric):
        raise ValueError(
            f"unknown metric {value!r} (expected one of {', '.join(EVAL_METRICS)}, or TASK/METRIC of a "
            "benchmark in eval.tasks, such as pydoc_cloze/acc)"
        )
    return value


Metric = Annotated[MetricName, BeforeValidator(_metric)]


class Budget(Strict):
    """What a candidate must meet. Model Optimizer keeps every shape at or under `params`; the tolerance
    also drops those far below it, which a one-shot score would rank low for their size alone."""

    params: ParamCount = Field(description="the most parameters a candidate may have (89M, 8B, 8.41B)")
    tolerance: float = Field(
        0.05,
        ge=0,
        le=1,
        description="candidates have params in [params x (1 - tolerance), params]; 1: no lower bound",
    )
    memory_gib: float | None = Field(
        None,
        gt=0,
        le=MAX_COUNT,
        description="also at most this much inference memory: bf16 weights + KV cache at seq_len x batch "
        "(Model Optimizer's memory_mb)",
    )
    seq_len: PositiveInt | None = Field(
        None, description="tokens per sequence for memory_gib (required with it)"
    )
    batch: PositiveInt = Field(1, description="sequences for memory_gib")

    @model_validator(mode="after")
    def _memory_needs_length(self) -> Budget:
        if self.memory_gib is not None and self.seq_len is None:
            raise ValueError(
                "budget.memory_gib needs budget.seq_len (the KV cache grows with it; expected e.g. seq_len: 4096)"
            )
        if self.memory_gib is None and self.seq_len is not None:
            raise ValueError(
                "budget.seq_len is only used by budget.memory_gib (expected memory_gib, or no seq_len)"
            )
        return self


class AxisSpace(Strict):
    """The values one axis may take. Unset: the multiples of `divisor` up to the teacher's value (and the
    teacher's value), less those cut by more than max_pruning; Model Optimizer's rule exactly: of the n
    sorted choices, the first int((1 - max_pruning) x n) are dropped."""

    divisor: PositiveInt | None = Field(
        None,
        description="None: 256 for hidden_size, 512 for intermediate_size, 2 for num_hidden_layers, and 1 "
        "for num_attention_heads (whose divisor counts query heads per KV group)",
    )
    max_pruning: Fraction | None = Field(
        None, description="None: space.max_width_pruning, or max_depth_pruning for num_hidden_layers"
    )
    min: PositiveInt | None = Field(
        None, description="keep the divisor's multiples from this value up (instead of max_pruning)"
    )
    values: Annotated[list[PositiveInt], Field(min_length=1, max_length=1000)] | None = Field(
        None, description="exactly these values (instead of divisor, min and max_pruning)"
    )

    @model_validator(mode="after")
    def _one_rule(self) -> AxisSpace:
        if self.values is not None:
            others = sorted({"divisor", "max_pruning", "min"} & self.model_fields_set)
            if others:
                raise ValueError(f"values lists the choices; drop {', '.join(others)} (or drop values)")
        if self.min is not None and self.max_pruning is not None:
            raise ValueError("min and max_pruning both bound the axis from below; keep one")
        return self


class Space(Strict):
    """Which shapes are searched: every combination of the axes' values (skipped axes stay the teacher's)."""

    max_width_pruning: Fraction = Field(0.4, description="largest fraction of each width axis cut")
    max_depth_pruning: Fraction = Field(0.2, description="largest fraction of the layers cut")
    skip: list[Axis] = Field(
        default_factory=list, max_length=4, description="axes kept at the teacher's value (hparams_to_skip)"
    )
    hidden_size: AxisSpace = Field(default_factory=AxisSpace)
    intermediate_size: AxisSpace = Field(default_factory=AxisSpace)
    num_attention_heads: AxisSpace = Field(default_factory=AxisSpace)
    num_hidden_layers: AxisSpace = Field(default_factory=AxisSpace)

    @model_validator(mode="after")
    def _something_searched(self) -> Space:
        if set(TARGET_AXES) <= set(self.skip):
            raise ValueError(
                f"space.skip names every axis (got {self.skip}; expected at least one of "
                f"{', '.join(TARGET_AXES)} to search)"
            )
        for axis in self.skip:
            if getattr(self, axis).model_fields_set:
                raise ValueError(
                    f"{axis} is skipped but has settings; drop it from skip or drop its settings"
                )
        return self

    def axis(self, name: str) -> AxisSpace:
        return getattr(self, name)


class Score(Strict):
    """One-shot scoring of every candidate right after pruning."""

    metric: Metric = Field(
        "lm_loss",
        description=f"{' | '.join(EVAL_METRICS)} (held-out, ablate.evaluate) | TASK/METRIC of a benchmark in eval.tasks",
    )
    higher_is_better: bool | None = Field(None, description="needed for a metric ablate does not know")
    top_k: int = Field(10, gt=0, le=MAX_TRIALS, description="candidates retrained after scoring")


class Select(Strict):
    """How the winner is chosen among the retrained candidates."""

    metric: Metric | None = Field(None, description="None: score.metric")
    higher_is_better: bool | None = Field(None, description="needed for a metric ablate does not know")


def _retrain_model() -> type[Strict]:
    """distill's fields, each optional (None: distill's value), with `tokens` required: the light
    retraining of each top candidate is an ordinary distillation with these overrides."""
    fields: dict[str, Any] = {}
    for name, info in Distill.model_fields.items():
        if name == "tokens":
            fields[name] = (TokenCount, Field(description="tokens each top candidate is retrained on"))
            continue
        annotation = Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation
        fields[name] = (annotation | None, Field(None, description="unset: distill's"))
    model = create_model("Retrain", __base__=Strict, **fields)
    model.__doc__ = (
        "Light retraining of each of the top_k candidates: distill's settings with these overrides "
        "(the paper retrains ~2B tokens before choosing)."
    )
    return model


Retrain = _retrain_model()


class Search(Strict):
    """Search the shapes that meet a budget instead of naming one: enumerate (exact parameter counts from
    the teacher's config, no weights), prune and score each one-shot, retrain the top_k, select."""

    budget: Budget
    space: Space = Field(default_factory=Space)
    score: Score = Field(default_factory=Score)
    retrain: Retrain  # type: ignore[valid-type]
    select: Select = Field(default_factory=Select)
    max_candidates: int = Field(
        1000, gt=0, le=MAX_TRIALS, description="refuse a budget window holding more candidates than this"
    )

    def retrain_overrides(self) -> dict[str, Any]:
        """The distill fields the retraining sets (tokens included)."""
        return {name: getattr(self.retrain, name) for name in self.retrain.model_fields_set}

    @property
    def select_metric(self) -> str:
        return self.select.metric or self.score.metric
