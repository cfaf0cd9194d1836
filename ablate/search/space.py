"""The values each axis of a search may take, from the teacher's shape and the spec's `search.space`.

Model Optimizer's rule (mcore_minitron), reproduced so that a count here is a count there: an axis's
choices are the multiples of its divisor up to the teacher's value, plus the teacher's value; sorted,
the first int((1 - max_pruning) x n) of the n choices are dropped. Heads are counted per KV group
(query heads leave every group equally, ablate.prune.apply), so their choices are KV heads x the
divisor's multiples of the group size. An axis with one choice is not searched.
"""

from __future__ import annotations

from dataclasses import dataclass

from ablate.spec.schema import TARGET_AXES
from ablate.spec.search import DEPTH_AXIS, DIVISORS, Space

ProblemAt = tuple[tuple[str | int, ...], str]  # (path in the spec, message)
SHORT = {"hidden_size": "h", "intermediate_size": "f", "num_attention_heads": "a", "num_hidden_layers": "l"}


@dataclass(frozen=True)
class AxisChoices:
    """One axis of the space: its values (ascending) and how they were chosen, for the plan."""

    axis: str
    values: tuple[int, ...]
    rule: str

    @property
    def searched(self) -> bool:
        return len(self.values) > 1


def _multiples(limit: int, divisor: int) -> list[int]:
    return sorted({*range(divisor, limit + 1, divisor), limit})


def axis_choices(shape: dict[str, int], space: Space) -> tuple[dict[str, AxisChoices], list[ProblemAt]]:
    """Every axis's choices for a teacher of `shape`, and the problems of values it cannot take."""
    out: dict[str, AxisChoices] = {}
    problems: list[ProblemAt] = []
    kv = shape["num_key_value_heads"]
    for axis in TARGET_AXES:
        teacher = shape[axis]
        where = ("search", "space", axis)
        if axis in space.skip:
            out[axis] = AxisChoices(axis, (teacher,), "skipped: the teacher's")
            continue
        setting = space.axis(axis)
        if setting.values is not None:
            bad = _bad_values(axis, setting.values, teacher, kv)
            if bad:
                problems.append(((*where, "values"), bad))
                continue
            out[axis] = AxisChoices(axis, tuple(sorted(set(setting.values))), "values")
            continue
        divisor = setting.divisor or DIVISORS[axis]
        # Heads are searched per KV group: multiples of the divisor of the heads in one group.
        unit = kv if axis == "num_attention_heads" else 1
        base = [v * unit for v in _multiples(teacher // unit, divisor)]
        if setting.min is not None:
            if setting.min > teacher:
                problems.append(
                    (
                        (*where, "min"),
                        f"min {setting.min} is above the teacher's {axis} ({teacher}); expected at most {teacher}",
                    )
                )
                continue
            values = [v for v in base if v >= setting.min]
            rule = f"multiples of {divisor}{' per KV group' if unit > 1 else ''} from {setting.min}"
        else:
            default = space.max_depth_pruning if axis == DEPTH_AXIS else space.max_width_pruning
            cut = default if setting.max_pruning is None else setting.max_pruning
            values = base[int((1 - cut) * len(base)) :] if len(base) > 1 else base
            rule = f"multiples of {divisor}{' per KV group' if unit > 1 else ''}, at most {cut:.0%} cut"
        out[axis] = AxisChoices(axis, tuple(values), rule)
    return out, problems


def _bad_values(axis: str, values: list[int], teacher: int, kv: int) -> str:
    above = [v for v in values if v > teacher]
    if above:
        return f"{above[0]} is above the teacher's {axis} ({teacher}; a search can only shrink it)"
    if axis == "num_attention_heads":
        off = [v for v in values if v % kv]
        if off:
            return (
                f"{off[0]} is not a multiple of the teacher's {kv} KV heads (query heads leave every KV "
                "group equally)"
            )
    return ""


def candidate_name(shape: dict[str, int]) -> str:
    """A stable, readable name for a shape (h4096-f11520-a32-l40), usable as a target name."""
    return "-".join(f"{SHORT[axis]}{shape[axis]}" for axis in TARGET_AXES)
