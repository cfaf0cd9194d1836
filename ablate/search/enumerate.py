"""Every candidate of a search that meets its budget, exactly, from the teacher's config alone.

The whole space's parameter counts come from one polynomial (ablate.search.count) evaluated over the
outer product of the axes' choices; the budget is a mask over that array. Candidates come out largest
first (ties: wider first, axis by axis), so their order and names are stable from run to run.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
from transformers import PretrainedConfig

from ablate.errors import SpecError
from ablate.models.arch import shape_of
from ablate.plan.memory import GIB, inference_bytes
from ablate.search.count import ParamPolynomial, param_polynomial
from ablate.search.space import AxisChoices, axis_choices, candidate_name
from ablate.spec.problems import dotted
from ablate.spec.schema import TARGET_AXES
from ablate.spec.search import Search

MAX_SPACE = 4_000_000  # shapes evaluated at once (a few 32 MB arrays); Model Optimizer's 12B space: 768


@dataclass(frozen=True)
class Candidate:
    """One shape of the space that meets the budget. `target` holds only the axes it prunes, as a
    spec target would, so its prune stage is the one a trial with that target shares."""

    name: str
    shape: dict[str, int]
    params: int
    memory_bytes: float | None = None
    target: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "shape": self.shape,
            "params": self.params,
            "memory_gib": None if self.memory_bytes is None else round(self.memory_bytes / GIB, 3),
            "target": self.target,
        }


@dataclass
class Enumeration:
    """The space, how many of its shapes meet the budget, and the candidates themselves."""

    axes: dict[str, AxisChoices]
    space_size: int
    under_budget: int  # shapes at or under every budget, with no lower bound (Model Optimizer's count)
    count: int  # shapes in the budget window: the candidates
    candidates: list[Candidate]  # the first `limit` of them, largest first
    lower: int  # the window's lower bound in parameters
    nearest: Candidate | None = None  # when none meets the budget: the closest shape to it
    teacher_params: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {
            "axes": {a: {"values": list(c.values), "rule": c.rule} for a, c in self.axes.items()},
            "space_size": self.space_size,
            "under_budget": self.under_budget,
            "count": self.count,
            "lower_params": self.lower,
            "teacher_params": self.teacher_params,
            "seconds": round(self.seconds, 3),
            "candidates": [c.to_dict() for c in self.candidates],
            "nearest": None if self.nearest is None else self.nearest.to_dict(),
        }


def enumerate_candidates(teacher_config: PretrainedConfig, search: Search) -> list[Candidate]:
    """Every candidate meeting the budget, largest first (SpecError for values the teacher cannot take)."""
    return enumerate_space(teacher_config, search, limit=None).candidates


def choices_or_raise(shape: dict[str, int], search: Search) -> dict[str, AxisChoices]:
    axes, problems = axis_choices(shape, search.space)
    if problems:
        raise SpecError([f"{dotted(path)}: {message}" for path, message in problems])
    return axes


def space_size(axes: dict[str, AxisChoices]) -> int:
    return math.prod(len(c.values) for c in axes.values())


def enumerate_space(
    teacher_config: PretrainedConfig,
    search: Search,
    limit: int | None = None,
    polynomial: ParamPolynomial | None = None,
) -> Enumeration:
    """The search's space against its budget; `limit` caps the Candidate objects made (not the count)."""
    started = time.perf_counter()
    teacher = shape_of(teacher_config)
    axes = choices_or_raise(teacher, search)
    size = space_size(axes)
    if size > MAX_SPACE:
        raise SpecError(
            [
                f"search.space: {size:,} shapes to enumerate (expected at most {MAX_SPACE:,}; coarser divisors or fewer values)"
            ]
        )
    choices = {a: axes[a].values for a in TARGET_AXES}
    poly = polynomial or param_polynomial(teacher_config, choices)
    values = {a: np.asarray(choices[a], dtype=np.int64) for a in TARGET_AXES}
    params = poly.grid(values)
    budget = search.budget
    ok = params <= budget.params
    memory = None
    if budget.memory_gib is not None:
        layers = values["num_hidden_layers"].reshape(1, 1, 1, -1)
        memory = inference_bytes(
            params.astype(np.float64),
            layers,
            teacher["num_key_value_heads"],
            teacher["head_dim"],
            budget.seq_len or 0,
            budget.batch,
        )
        ok &= memory <= budget.memory_gib * GIB
    lower = math.ceil(budget.params * (1 - budget.tolerance))
    window = ok & (params >= lower)
    count = int(window.sum())
    index = np.nonzero(window.ravel())[0]
    index = index[_largest_first(params.ravel()[index], index, params.shape)]
    if limit is not None:
        index = index[:limit]
    make = _maker(teacher, choices, params, memory, params.shape)
    nearest = None
    if count == 0:
        nearest = make(_nearest(params, memory, budget.params, lower, budget.memory_gib))
    return Enumeration(
        axes=axes,
        space_size=size,
        under_budget=int(ok.sum()),
        count=count,
        candidates=[make(int(i)) for i in index],
        lower=lower,
        nearest=nearest,
        teacher_params=poly(teacher),
        seconds=time.perf_counter() - started,
    )


def _largest_first(flat_params: np.ndarray, index: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Order: most parameters first, then the larger value axis by axis (choices ascend along each)."""
    coords = np.unravel_index(index, shape)
    keys = [-c for c in reversed(coords)] + [-flat_params.astype(np.float64)]
    return np.lexsort(keys) if len(index) else np.zeros(0, dtype=np.int64)


def _nearest(
    params: np.ndarray, memory: np.ndarray | None, top: int, lower: int, memory_gib: float | None
) -> int:
    """The shape whose worst relative miss of the budget is smallest."""
    p = params.astype(np.float64)
    miss = np.maximum(np.maximum(p - top, lower - p), 0) / top
    if memory is not None and memory_gib is not None:
        miss = np.maximum(miss, np.maximum(memory - memory_gib * GIB, 0) / (memory_gib * GIB))
    return int(np.argmin(miss.ravel()))


def _maker(
    teacher: dict[str, int], choices: dict, params: np.ndarray, memory: np.ndarray | None, shape: tuple
):
    flat_params = params.ravel()
    flat_memory = None if memory is None else np.broadcast_to(memory, shape).ravel()

    def make(i: int) -> Candidate:
        coords = np.unravel_index(i, shape)
        values = {a: int(choices[a][c]) for a, c in zip(TARGET_AXES, coords, strict=True)}
        return Candidate(
            name=candidate_name(values),
            shape=values,
            params=int(flat_params[i]),
            memory_bytes=None if flat_memory is None else float(flat_memory[i]),
            target={a: v for a, v in values.items() if v != teacher[a]},
        )

    return make
