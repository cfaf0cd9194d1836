"""Expand a spec's sweep (grid x seeds - exclude) into trials with stable keys."""

from __future__ import annotations

import functools
import gc
import hashlib
import itertools
import json
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, PydanticUserError, TypeAdapter, ValidationError

from ablate.spec.schema import CONFIG, MEMORY_FIELDS, SEARCH, TRIAL_SECTIONS, Distill, Seed, Spec, Target

TARGET_AXIS = "target"
SEED_AXIS = "seed"  # in a grid: the seeds of that grid's trials (instead of sweep.seeds)
_SEED = TypeAdapter(Seed)  # a grid's seeds are bounded as sweep.seeds are


@dataclass(frozen=True)
class Trial:
    """One point of the sweep: its key, what it changed, and the fully resolved spec it runs."""

    key: str
    overrides: dict[str, Any]  # axis -> value as normalised by the schema (seed included)
    target: str
    seed: int
    spec: Spec

    @property
    def shape(self) -> dict[str, int]:
        """The pruned axes of its student: its target's, over those of the targets it is pruned through."""
        out: dict[str, int] = {}
        for link in target_lineage(self.spec, self.target):
            out.update(link["target"])
        return out

    def resolved(self) -> dict[str, Any]:
        return resolved_config(self.spec, self.target, self.seed)


def canonical_json(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def stable_hash(data: Any, length: int = 12) -> str:
    return hashlib.sha256(canonical_json(data).encode()).hexdigest()[:length]


def resolved_config(spec: Spec, target: str, seed: int) -> dict[str, Any]:
    """What a trial computes, in canonical form: the trial key is a hash of exactly this.

    The target enters by its shape, not its name, and planning-only fields (teacher.config) are left
    out, so renaming a target or moving a config file does not change any key. Memory settings
    (schema.MEMORY_FIELDS) enter only when they differ from their defaults.
    """
    dumped = spec.model_dump(mode="json", include=set(TRIAL_SECTIONS))
    dumped["teacher"].pop("config", None)
    correction = dumped["teacher"]["correction"]
    for name in MEMORY_FIELDS:
        default, value = Distill.model_fields[name].default, dumped["distill"][name]
        if value == default:
            dumped["distill"].pop(name)
        if correction:  # unset: distillation's; like distill, in the key only when not the default
            own = correction.pop(name, None)
            if (value if own is None else own) != default:
                correction[name] = value if own is None else own
    dumped["target"] = spec.targets[target].axes()
    lineage = target_lineage(spec, target)
    if len(lineage) > 1:  # pruned through other targets first: they are part of what it computes
        dumped["lineage"] = lineage
    if spec.align is not None:  # in order: a mapping's order is lost in the canonical hash
        dumped["align"] = {"stages": spec.align.ordered(), "chat_template": spec.align.chat_template}
    dumped["seed"] = seed
    return dumped


def target_lineage(spec: Spec, target: str) -> list[dict[str, Any]]:
    """The shapes a target's student is pruned through, from the teacher's first prune to its own, each
    with whether it is taught by the previous one's student (`chain`); names left out, as in keys."""
    links: list[dict[str, Any]] = []
    name: str | None = target
    while name is not None:
        links.append({"target": spec.targets[name].axes(), "chain": spec.targets[name].chain})
        name = spec.targets[name].source
    return links[::-1]


def schema_has_path(model: type[BaseModel], parts: list[str], raw: dict) -> bool:
    """Whether a dotted sweep path names a field of the spec (dict keys must exist in the raw spec)."""
    annotation: Any = model
    node: Any = raw
    for part in parts:
        annotation = _unwrap_optional(annotation)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            if part not in annotation.model_fields:
                return False
            annotation = annotation.model_fields[part].annotation
        elif typing.get_origin(annotation) is dict:
            if not isinstance(node, dict) or part not in node:
                return False
            annotation = typing.get_args(annotation)[1]
        else:
            return False
        node = node.get(part) if isinstance(node, dict) else None
    return True


def _unwrap_optional(annotation: Any) -> Any:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def set_path(raw: dict, path: str, value: Any) -> dict:
    """The raw spec with one dotted path set (intermediate mappings created as needed); `raw` is left
    as it was. Only the mappings along the path are copied: a deep copy per trial would make a grid
    of n trials over a spec of m values cost n x m."""
    out = dict(raw)
    node = out
    parts = path.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        node[part] = dict(child) if isinstance(child, dict) else {}
        node = node[part]
    node[parts[-1]] = value
    return out


def get_path(data: dict, path: str) -> Any:
    for part in path.split("."):
        data = data[part]
    return data


@functools.lru_cache(maxsize=512)
def field_adapter(path: str) -> TypeAdapter:
    """A validator for the single field at a dotted path, with its constraints (numbers finite, as in
    every model) but no cross-field rules. Cached: building one takes ~0.1 ms, a grid asks per value."""
    annotation: Any = Spec
    info = None
    for part in path.split("."):
        annotation = _unwrap_optional(annotation)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            info = annotation.model_fields[part]
            annotation = info.annotation
        elif typing.get_origin(annotation) is dict:
            info, annotation = None, typing.get_args(annotation)[1]
    if info is not None and info.metadata:
        annotation = Annotated[(annotation, *info.metadata)]
    try:
        return TypeAdapter(annotation, config=CONFIG)
    except PydanticUserError:  # a model (or a union with one) brings its own config
        return TypeAdapter(annotation)


def normalise(raw: dict, path: str, value: Any) -> Any:
    """The value as the schema understands it (20k -> 20000, '3e-4' -> 0.0003); raises ValidationError."""
    if path == TARGET_AXIS:
        return value
    if path == SEED_AXIS:
        return _SEED.validate_python(value, strict=True)
    adapter = field_adapter(path)
    return adapter.dump_python(adapter.validate_python(value), mode="json")


def grid_points(
    grids: dict[str, list[Any]] | list[dict[str, list[Any]]], targets: list[str]
) -> list[dict[str, Any]]:
    """Every combination of each grid's axes, pooled over grids; without a `target` axis every target
    is swept."""
    points: list[dict[str, Any]] = []
    for grid in grids if isinstance(grids, list) else [grids]:
        axes = dict(grid)
        if TARGET_AXIS not in axes:
            axes = {TARGET_AXIS: list(targets), **axes}
        names = list(axes)
        points += [
            dict(zip(names, values, strict=True)) for values in itertools.product(*(axes[n] for n in names))
        ]
    return points


def grid_size(grids: list[dict[str, Any]], targets: int, seeds: int) -> int:
    """How many trials the grids make before exclusions (which can only remove some), from the axes'
    lengths alone: a 10^12-point grid is measured, and refused, without building one point of it."""
    total = 0
    for grid in grids:
        size = (1 if TARGET_AXIS in grid else targets) * (1 if SEED_AXIS in grid else seeds)
        for values in grid.values():
            size *= len(values) if isinstance(values, list) else 1
        total += size
    return total


def match_masks(points: list[dict[str, Any]], rules: list[dict[str, Any]]) -> list[int]:
    """For each exclude rule, the points it matches as a bit mask (bit i: point i). Points and rules
    hold normalised values; one pass over the points, then one AND per rule item, instead of comparing
    every rule with every point."""
    index: dict[tuple[str, Any], int] = {}
    for i, point in enumerate(points):
        for path, value in point.items():
            key = (path, _hashable(value))
            index[key] = index.get(key, 0) | (1 << i)
    masks = []
    for rule in rules:
        mask = (1 << len(points)) - 1
        for path, value in rule.items():
            mask &= index.get((path, _hashable(value)), 0)
        masks.append(mask)
    return masks


def _hashable(value: Any) -> Any:
    """Scalars as themselves (so 1 matches 1.0, as == does), lists and mappings as canonical JSON."""
    return value if isinstance(value, (str, int, float, bool, type(None))) else canonical_json(value)


def kept_points(raw: dict, spec: Spec) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(point as written, point normalised) for every grid point no exclude rule removes."""
    points = grid_points(spec.sweep.grid, list(spec.targets))
    normal = [{path: normalise(raw, path, value) for path, value in point.items()} for point in points]
    rules = [
        {path: normalise(raw, path, value) for path, value in rule.items()} for rule in spec.sweep.exclude
    ]
    excluded = functools.reduce(lambda a, b: a | b, match_masks(normal, rules), 0)
    return [(p, n) for i, (p, n) in enumerate(zip(points, normal, strict=True)) if not excluded >> i & 1]


InvalidTrial = Callable[[dict[str, Any], ValidationError], None]


def expand(raw: dict, spec: Spec, invalid: InvalidTrial | None = None) -> list[Trial]:
    """The trials that can run now (see :func:`expand_all`)."""
    return expand_all(raw, spec, invalid)[0]


def expand_all(raw: dict, spec: Spec, invalid: InvalidTrial | None = None) -> tuple[list[Trial], list[Trial]]:
    """The trials of a spec whose grid and excludes are valid (spec.validate checks them first).

    A combination the schema refuses (global_batch not a multiple of a swept micro_batch, say) raises
    ValidationError, or, given `invalid`, is passed to it with the point and skipped: validation
    reports every such trial from this one pass instead of validating each trial twice.
    Every trial's overrides name every swept axis of every grid (an axis its own grid does not sweep
    shows the value the trial runs with), so trials from different grids compare axis by axis.

    Trials of a `from: search` target come second: their spec's target has no axes until the search has
    chosen (:func:`with_winner`), so they have no key yet and run after it.
    """
    collect = gc.isenabled()
    gc.disable()  # thousands of live Spec objects: the collector would walk them all, again and again
    try:
        return _expand(raw, spec, invalid)
    finally:
        if collect:
            gc.enable()


def _expand(raw: dict, spec: Spec, invalid: InvalidTrial | None) -> tuple[list[Trial], list[Trial]]:
    trials: list[Trial] = []
    deferred: list[Trial] = []
    seen: set[str] = set()
    axes = spec.sweep.axes()
    for point, normal in kept_points(raw, spec):
        trial_raw = raw
        for path, value in point.items():
            if path not in (TARGET_AXIS, SEED_AXIS):
                trial_raw = set_path(trial_raw, path, value)
        try:
            # The sweep section is the spec's own (already validated) and no rule of a trial reads it:
            # validating it again per trial would make a large grid with many excludes quadratic.
            without_sweep = {k: v for k, v in trial_raw.items() if k != "sweep"}
            trial_spec = Spec.model_validate(without_sweep).model_copy(update={"sweep": spec.sweep})
        except ValidationError as exc:
            if invalid is None:
                raise
            invalid(point, exc)
            continue
        full = {TARGET_AXIS: normal[TARGET_AXIS]}
        missing = [a for a in axes if a not in normal and a not in (TARGET_AXIS, SEED_AXIS)]
        dumped = trial_spec.model_dump(mode="json") if missing else {}
        full.update(
            {
                axis: normal[axis] if axis in normal else get_path(dumped, axis)
                for axis in axes
                if axis not in (TARGET_AXIS, SEED_AXIS)
            }
        )
        seeds = [normal[SEED_AXIS]] if SEED_AXIS in normal else spec.sweep.seeds
        if trial_spec.targets[normal[TARGET_AXIS]].from_ == SEARCH:
            deferred += [Trial("", {**full, "seed": s}, normal[TARGET_AXIS], s, trial_spec) for s in seeds]
            continue
        for seed in seeds:
            key = stable_hash(resolved_config(trial_spec, normal[TARGET_AXIS], seed))
            if key in seen:
                continue
            seen.add(key)
            trials.append(Trial(key, {**full, "seed": seed}, normal[TARGET_AXIS], seed, trial_spec))
    return trials, deferred


def with_winner(trial: Trial, target: Target) -> Trial:
    """A deferred trial (its target `from: search`) with the search's winner as its shape, and its key."""
    spec = trial.spec.model_copy(update={"targets": {**trial.spec.targets, trial.target: target}})
    return Trial(stable_hash(resolved_config(spec, trial.target, trial.seed)), trial.overrides, trial.target,
                 trial.seed, spec)  # fmt: skip


__all__ = [
    "Trial",
    "expand",
    "expand_all",
    "with_winner",
    "grid_points",
    "normalise",
    "schema_has_path",
    "set_path",
    "ValidationError",
]
