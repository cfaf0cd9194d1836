"""Validate a spec completely: schema, teacher-dependent checks, and the sweep, reporting every problem.

Each problem reads `file:line: dotted.path: problem (got X; expected Y)`. Nothing is loaded but the
teacher's config (no weights, no network).
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from ablate.errors import AblateError, SpecError
from ablate.spec.limits import MAX_COUNT, MAX_TRIALS
from ablate.spec.load import Path_, Problem, SourceMap, dotted, load_document
from ablate.spec.problems import shorten
from ablate.spec.schema import TARGET_AXES, Spec
from ablate.spec.sweep import (
    SEED_AXIS,
    TARGET_AXIS,
    Trial,
    expand_all,
    grid_points,
    grid_size,
    match_masks,
    normalise,
    schema_has_path,
    target_lineage,
)

if TYPE_CHECKING:  # transformers and torch load only once a spec parses (a bad file fails fast)
    from transformers import PretrainedConfig

    from ablate.search.enumerate import Enumeration

TEACHER_DIMS = (
    "num_hidden_layers",
    "hidden_size",
    "intermediate_size",
    "num_attention_heads",
    "num_key_value_heads",
    "vocab_size",
)
MAX_PROBLEMS = 100  # shown by validate
MAX_TRIAL_PROBLEMS = 20  # one invalid combination repeats over many trials: show the first ones
MAX_GUESSES = 20  # did-you-mean costs a comparison with every path of the spec: for the first ones


@dataclass
class LoadedSpec:
    """A valid spec with everything later stages need: the model, its source positions, its trials."""

    path: Path
    raw: dict[str, Any]
    spec: Spec
    source: SourceMap
    teacher_config: PretrainedConfig
    trials: list[Trial]
    search: Enumeration | None = None  # the candidates of spec.search, enumerated once here
    # Trials of a `from: search` target: no shape (and no key) until the search's winner is recorded;
    # ablate.run.search runs them after it (sweep.with_winner).
    after_search: list[Trial] = dataclasses.field(default_factory=list)


def load_spec(path: str | Path) -> LoadedSpec:
    """Load and fully validate a spec; raise SpecError listing every problem found."""
    path = Path(path)
    raw, source, problems = load_document(path)
    if problems:
        raise SpecError(_shown(problems, path))
    spec, problems = _validate_schema(raw, source)
    teacher_config = None
    search = None
    if spec is not None:
        teacher_config, teacher_problems = _check_teacher(spec, path, source)
        problems += teacher_problems
        problems += _check_benchmarks(spec, path, source)
        if spec.align is not None:
            from ablate.spec.align_check import check_align

            problems += [_problem(source, where, message) for where, message in check_align(spec, path)]
        if spec.search is not None and teacher_config is not None:
            from ablate.search.check import check_search

            search, search_problems = check_search(spec, teacher_config)
            problems += [_problem(source, where, message) for where, message in search_problems]
    problems += _check_sweep(raw, spec, source)
    if problems:
        raise SpecError(_shown(_unique(problems), path))
    assert spec is not None and teacher_config is not None

    def invalid(point: dict[str, Any], exc: ValidationError) -> None:
        # Relations between swept fields (e.g. global_batch vs micro_batch), per combination.
        if len(problems) < MAX_TRIAL_PROBLEMS:
            changed = {p: v for p, v in point.items() if p not in (TARGET_AXIS, SEED_AXIS)}
            note = f" [in the trial {shorten(repr(changed), 200)}]"
            problems.extend(
                _problem(source, ("sweep", "grid"), describe_error(err, raw) + note) for err in exc.errors()
            )

    trials, after_search = expand_all(raw, spec, invalid)
    if problems:
        raise SpecError(_shown(_unique(problems), path))
    return LoadedSpec(path, raw, spec, source, teacher_config, trials, search, after_search)


def resolve_relative(spec_path: Path, value: str) -> str:
    """A relative file reference in a spec is relative to the spec's folder when it exists there."""
    candidate = spec_path.parent / value
    try:
        return str(candidate) if not Path(value).is_absolute() and candidate.exists() else value
    except (OSError, ValueError):  # a name too long for the OS: the reader of the value says so
        return value


def _shown(problems: list[Problem], path: Path) -> list[str]:
    """The problems as lines, the first MAX_PROBLEMS of them: a spec with 5000 bad targets needs its
    first mistakes fixed, not 5000 lines."""
    lines = [str(p) for p in problems[:MAX_PROBLEMS]]
    if len(problems) > MAX_PROBLEMS:
        lines.append(f"{path}: {len(problems) - MAX_PROBLEMS} more problems not shown (fix these first)")
    return lines


def _unique(problems: list[Problem]) -> list[Problem]:
    seen: set[str] = set()
    out = []
    for p in problems:
        if str(p) not in seen:
            seen.add(str(p))
            out.append(p)
    return out


def _problem(source: SourceMap, path: Path_, message: str) -> Problem:
    file, line = source.locate(path)
    return Problem(file, line, dotted(path), message)


def _validate_schema(
    raw: dict, source: SourceMap, prefix: Path_ = (), note: str = ""
) -> tuple[Spec | None, list[Problem]]:
    try:
        return Spec.model_validate(raw), []
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = _written_path(tuple(err["loc"]), raw)
            problems.append(_problem(source, prefix or loc, describe_error(err, raw) + note))
        return None, problems


def _written_path(loc: tuple, raw: Any) -> Path_:
    """A pydantic location without the names of union members ('dict[str,list[any]]' in
    sweep.grid.dict[str,list[any]].distill.lr): only keys and indexes the spec wrote, or a missing key."""
    node, out = raw, []
    for part in loc:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        elif isinstance(part, str) and "[" in part:
            continue
        else:
            node = None
        out.append(part)
    return tuple(out)


def describe_error(err: dict, raw: dict) -> str:
    """A pydantic error as `problem (got X; expected Y)`, with did-you-mean for unknown keys."""
    kind, loc, msg = err["type"], tuple(err["loc"]), err["msg"]
    got = err.get("input")
    if kind == "extra_forbidden":
        allowed = _allowed_keys(loc[:-1], raw)
        guess = difflib.get_close_matches(str(loc[-1])[:100], allowed, n=1)
        hint = f"; did you mean '{guess[0]}'?" if guess else ""
        return f"unknown key '{shorten(str(loc[-1]))}' (expected one of: {', '.join(allowed)}{hint})"
    if kind == "missing":
        return "required field is missing (expected a value)"
    if kind in ("value_error", "assertion_error"):
        text = msg.removeprefix("Value error, ").removeprefix("Assertion failed, ")
        if "(got" in text or "(expected" in text or isinstance(got, dict):
            return text
        return f"{text} (got {_short(got)})"
    expected = msg.removeprefix("Input should be ")
    if kind == "literal_error":
        expected = "one of " + err["ctx"]["expected"]
    return f"invalid value (got {_short(got)}; expected {expected})"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _allowed_keys(loc: tuple, raw: dict) -> list[str]:
    """Field names of the model at `loc` in the spec (walking dict-of-model fields by key)."""
    annotation: Any = Spec
    for part in loc:
        annotation = _model_of(annotation)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            if isinstance(part, str) and part in annotation.model_fields:
                annotation = annotation.model_fields[part].annotation
                continue
            return []
        if typing.get_origin(annotation) is dict:
            annotation = typing.get_args(annotation)[1]
            continue
        return []
    annotation = _model_of(annotation)
    return (
        list(annotation.model_fields)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel)
        else []
    )


def _model_of(annotation: Any) -> Any:
    if typing.get_origin(annotation) is not None and typing.get_origin(annotation) is not dict:
        args = [a for a in typing.get_args(annotation) if isinstance(a, type) and issubclass(a, BaseModel)]
        if args:
            return args[0]
    return annotation


def _check_teacher(
    spec: Spec, spec_path: Path, source: SourceMap
) -> tuple[PretrainedConfig | None, list[Problem]]:
    config_ref = spec.teacher.config
    config_path = resolve_relative(spec_path, config_ref) if config_ref else None
    model_ref = resolve_relative(spec_path, spec.teacher.model)
    field = ("teacher", "config") if config_ref else ("teacher", "model")
    try:
        from ablate.models.registry import load_config

        config = load_config(model_ref, config_path)
    except AblateError as exc:
        return None, [_problem(source, field, str(exc))]
    except (OSError, ValueError) as exc:  # e.g. a file name longer than the OS allows
        reason = getattr(exc, "strerror", None) or str(exc)
        return None, [
            _problem(
                source, field, f"cannot read {shorten(repr(config_ref or spec.teacher.model))}: {reason}"
            )
        ]
    bad = _bad_teacher_shape(config)
    if bad:
        return None, [_problem(source, field, bad)]
    problems = []
    for name, target in spec.targets.items():
        from ablate.models.arch import check_target

        for message in check_target(config, target.axes()):
            axis = message.split("=")[0].split(" ")[0]
            path = ("targets", name, axis) if axis in target.axes() else ("targets", name)
            problems.append(_problem(source, path, message))
        if target.source is not None:
            start = _shape_of_target(spec, target.source, config)
            for axis, value in target.axes().items():
                if value > start[axis]:
                    problems.append(_problem(source, ("targets", name, axis), (
                        f"{axis}={value} is larger than target {target.source}'s {start[axis]}, which it is "
                        f"pruned from (expected at most {start[axis]})")))  # fmt: skip
    return config, problems


def _shape_of_target(spec: Spec, name: str, config: PretrainedConfig) -> dict[str, int]:
    """A target's whole shape: the teacher's axes, with those of every link of its lineage in place."""
    from ablate.models.arch import shape_of

    shape = {axis: shape_of(config)[axis] for axis in TARGET_AXES}
    for link in target_lineage(spec, name):
        shape.update(link["target"])
    return shape


def _check_benchmarks(spec: Spec, spec_path: Path, source: SourceMap) -> list[Problem]:
    """Every eval.tasks entry names a task lm-eval knows and can load here (imports lm-eval only when
    the spec asks for benchmarks)."""
    if not spec.eval.tasks:
        return []
    from ablate.benchmarks.tasks_index import resolve

    try:
        resolve(spec.eval.tasks, base_dir=str(spec_path.parent))
    except SpecError as exc:
        return [_problem(source, ("eval", "tasks"), p.removeprefix("eval.tasks: ")) for p in exc.problems]
    return []


def _bad_teacher_shape(config: PretrainedConfig) -> str:
    """What is wrong with the teacher config's dimensions, if anything: every plan and check divides
    and multiplies them, so each must be a whole number in range (a config.json is input too)."""
    for name in (*TEACHER_DIMS, "head_dim"):
        value = getattr(config, name, None)
        if name == "head_dim" and value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= MAX_COUNT:
            return (
                f"the teacher config's {name} is not usable (got {shorten(repr(value))}; expected a whole "
                f"number from 1 to {MAX_COUNT})"
            )
    return ""


def _check_grid(
    raw: dict,
    spec: Spec | None,
    source: SourceMap,
    grid: dict,
    prefix: Path_,
    targets: list[str],
    written: bool,
) -> list[Problem]:
    """Problems of one grid: empty, unknown paths, and values invalid on their own."""
    problems: list[Problem] = []
    if written and not grid:
        problems.append(
            _problem(source, prefix, "empty grid (got {}; expected at least one axis, or omit sweep.grid)")
        )
    paths: list[str] | None = None
    for axis, values in grid.items():
        where = (*prefix, axis)
        if axis.split(".")[0] in ("sweep", "search"):
            section = axis.split(".")[0]
            why = "a trial has no sweep of its own" if section == "sweep" else "the search runs once per spec"
            problems.append(
                _problem(
                    source,
                    where,
                    f"{section} path '{shorten(axis)}' cannot be swept ({why}; "
                    f"expected a path outside {section}, such as distill.loss)",
                )
            )
            continue
        if axis not in (TARGET_AXIS, SEED_AXIS) and not schema_has_path(Spec, axis.split("."), raw):
            hint = ""
            if len(problems) < MAX_GUESSES:
                paths = _all_paths(raw) if paths is None else paths
                guess = difflib.get_close_matches(axis, paths, n=1)
                hint = f"; did you mean '{guess[0]}'?" if guess else ""
            problems.append(
                _problem(
                    source,
                    where,
                    f"sweep path '{shorten(axis)}' does not exist in the spec (expected a dotted path such as distill.loss{hint})",
                )
            )
            continue
        if not isinstance(values, list):
            continue  # schema reports it
        if not values:
            problems.append(_problem(source, where, "empty grid axis (got []; expected at least one value)"))
            continue
        if spec is None:
            continue
        for i, value in enumerate(values):
            if axis == TARGET_AXIS:
                if value not in targets:
                    problems.append(
                        _problem(
                            source,
                            (*where, i),
                            f"unknown target {shorten(repr(value))} (expected one of: {one_of(targets)})",
                        )
                    )
                continue
            try:
                normalise(raw, axis, value)
            except ValidationError as exc:
                # The value's own errors only: relations with other fields are checked per trial,
                # since another axis (or an exclude) may make the combination valid.
                problems.append(_problem(source, (*where, i), describe_error(exc.errors()[0], raw)))
    return problems


def _check_sweep(raw: dict, spec: Spec | None, source: SourceMap) -> list[Problem]:
    sweep = raw.get("sweep") if isinstance(raw.get("sweep"), dict) else {}
    grid = sweep.get("grid", {})
    if isinstance(grid, dict):
        grids, prefixes = [grid], [("sweep", "grid")]
    elif isinstance(grid, list) and all(isinstance(g, dict) for g in grid):
        grids, prefixes = grid, [("sweep", "grid", i) for i in range(len(grid))]
    else:
        return []  # the schema already reported the wrong type
    problems: list[Problem] = []
    if "grid" in sweep and not grids:
        problems.append(
            _problem(source, ("sweep", "grid"), "empty list of grids (got []; expected at least one grid)")
        )
    targets = list(raw.get("targets") or {}) if isinstance(raw.get("targets"), dict) else []
    for sub, prefix in zip(grids, prefixes, strict=True):
        problems += _check_grid(raw, spec, source, sub, prefix, targets, "grid" in sweep)
    grid = {axis: values for sub in grids for axis, values in sub.items()}  # every axis, for excludes
    if spec is None or problems:
        return problems
    # The size first, from the axes' lengths: nothing is built for a grid that is refused.
    seeds = len(spec.sweep.seeds)
    total = grid_size(spec.sweep.grids(), len(spec.targets), seeds)
    if total > spec.sweep.max_trials:
        fix = (
            f"raise sweep.max_trials to {total}, or sweep fewer values"
            if total <= MAX_TRIALS
            else f"sweep fewer values, or split the study: sweep.max_trials goes up to {MAX_TRIALS}"
        )
        return [
            _problem(
                source,
                ("sweep", "grid"),
                f"the grid makes {_count(total)} trials (expected at most sweep.max_trials = "
                f"{spec.sweep.max_trials}; {fix})",
            )
        ]
    points = grid_points(spec.sweep.grid, targets)
    normal_points = [{p: normalise(raw, p, v) for p, v in point.items()} for point in points]
    rules: list[dict[str, Any]] = []
    for i, rule in enumerate(spec.sweep.exclude):
        where = ("sweep", "exclude", i)
        unknown = [p for p in rule if p not in grid and p not in (TARGET_AXIS, SEED_AXIS)]
        if unknown:
            problems.append(
                _problem(
                    source,
                    where,
                    f"exclude names {shorten(repr(unknown[0]))}, which is not a sweep axis (expected one of: "
                    f"{one_of([TARGET_AXIS, *grid])})",
                )
            )
            rules.append({})  # keeps rules[i] the i-th rule
            continue
        try:
            rules.append({p: normalise(raw, p, v) for p, v in rule.items()})
        except ValidationError as exc:
            problems.append(_problem(source, where, describe_error(exc.errors()[0], raw)))
            rules.append({})
    for i, (rule, mask) in enumerate(zip(rules, match_masks(normal_points, rules), strict=True)):
        if rule and not mask:
            problems.append(
                _problem(
                    source,
                    ("sweep", "exclude", i),
                    f"exclude {shorten(repr(spec.sweep.exclude[i]), 200)} matches no trial of the grid "
                    "(expected a combination the grid produces)",
                )
            )
    return problems


def _count(n: int) -> str:
    """A trial count for a message: 10^12 written out is unreadable, 10^400 is unprintable."""
    digits = len(str(n)) if n < 10**4000 else 4000
    return str(n) if digits <= 9 else f"about 10^{digits - 1}"


def one_of(names: list[str], limit: int = 12) -> str:
    """A list of allowed names for a message, cut after `limit` (5000 targets make one long line)."""
    shown = [shorten(str(n)) for n in names[:limit]]
    more = f", ... ({len(names)} in all)" if len(names) > limit else ""
    return ", ".join(shown) + more


def _all_paths(raw: dict, prefix: str = "") -> list[str]:
    out = []
    for key, value in raw.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        out.append(path)
        if isinstance(value, dict):
            out += _all_paths(value, path)
    return out
