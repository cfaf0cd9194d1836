"""Expand a spec's sweep (grid x seeds - exclude) into trials with stable keys."""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import types
import typing
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, TypeAdapter, ValidationError

from ablate.spec.schema import TRIAL_SECTIONS, Spec

TARGET_AXIS = "target"
SEED_AXIS = "seed"  # in a grid: the seeds of that grid's trials (instead of sweep.seeds)


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
        return self.spec.targets[self.target].axes()

    def resolved(self) -> dict[str, Any]:
        return resolved_config(self.spec, self.target, self.seed)


def canonical_json(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def stable_hash(data: Any, length: int = 12) -> str:
    return hashlib.sha256(canonical_json(data).encode()).hexdigest()[:length]


def resolved_config(spec: Spec, target: str, seed: int) -> dict[str, Any]:
    """What a trial computes, in canonical form: the trial key is a hash of exactly this.

    The target enters by its shape, not its name, and planning-only fields (teacher.config) are left
    out, so renaming a target or moving a config file does not change any key.
    """
    dumped = spec.model_dump(mode="json", include=set(TRIAL_SECTIONS))
    dumped["teacher"].pop("config", None)
    dumped["target"] = spec.targets[target].axes()
    dumped["seed"] = seed
    return dumped


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
    """A copy of the raw spec with one dotted path set (intermediate mappings created as needed)."""
    out = copy.deepcopy(raw)
    node = out
    parts = path.split(".")
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[parts[-1]] = value
    return out


def get_path(data: dict, path: str) -> Any:
    for part in path.split("."):
        data = data[part]
    return data


def field_adapter(path: str) -> TypeAdapter:
    """A validator for the single field at a dotted path, with its constraints but no cross-field rules."""
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
        return TypeAdapter(Annotated[(annotation, *info.metadata)])
    return TypeAdapter(annotation)


def normalise(raw: dict, path: str, value: Any) -> Any:
    """The value as the schema understands it (20k -> 20000, '3e-4' -> 0.0003); raises ValidationError."""
    if path == TARGET_AXIS:
        return value
    if path == SEED_AXIS:
        return TypeAdapter(int).validate_python(value, strict=True)
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


def expand(raw: dict, spec: Spec) -> list[Trial]:
    """The trials of an already validated spec (sweep.check reports problems before this is called).

    Every trial's overrides name every swept axis of every grid (an axis its own grid does not sweep
    shows the value the trial runs with), so trials from different grids compare axis by axis.
    """
    trials: list[Trial] = []
    seen: set[str] = set()
    axes = spec.sweep.axes()
    normalised_excludes = [
        {path: normalise(raw, path, value) for path, value in rule.items()} for rule in spec.sweep.exclude
    ]
    for point in grid_points(spec.sweep.grid, list(spec.targets)):
        normal = {path: normalise(raw, path, value) for path, value in point.items()}
        if any(all(normal.get(p) == v for p, v in rule.items()) for rule in normalised_excludes):
            continue
        trial_raw = raw
        for path, value in point.items():
            if path not in (TARGET_AXIS, SEED_AXIS):
                trial_raw = set_path(trial_raw, path, value)
        trial_spec = Spec.model_validate(trial_raw)
        dumped = trial_spec.model_dump(mode="json")
        full = {TARGET_AXIS: normal[TARGET_AXIS]}
        full.update(
            {
                axis: normal[axis] if axis in normal else get_path(dumped, axis)
                for axis in axes
                if axis not in (TARGET_AXIS, SEED_AXIS)
            }
        )
        seeds = [normal[SEED_AXIS]] if SEED_AXIS in normal else spec.sweep.seeds
        for seed in seeds:
            key = stable_hash(resolved_config(trial_spec, normal[TARGET_AXIS], seed))
            if key in seen:
                continue
            seen.add(key)
            trials.append(Trial(key, {**full, "seed": seed}, normal[TARGET_AXIS], seed, trial_spec))
    return trials


__all__ = ["Trial", "expand", "grid_points", "normalise", "schema_has_path", "set_path", "ValidationError"]
