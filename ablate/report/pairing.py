"""Which trials pair up when one axis is compared: equal in everything but that axis.

A trial's *context* for an axis is its resolved config (seed included, so seeds pair up) without the field
the axis sets. Two axes need care:

- ``target`` picks a whole shape, so the context drops the shape. When a ``targets.<name>.<field>`` axis
  gives one target name several shapes, each shape is its own value of ``target``
  (``width[hidden_size=512]``), so a depth trial pairs with each width shape separately instead of with
  whichever came first.
- ``targets.<name>.<field>`` only changes trials of target ``<name>``: only they take part, and the context
  drops only that field of the shape.

Two trials with the same value in the same context would make a pair ambiguous; that is an error
(:class:`ReportError`), never a silent pick.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from ablate.report.model import Pair, ReportError, TrialRow, canon, finished, fmt_value

TARGET_AXIS = "target"
SEED_AXIS = "seed"
MISSING = object()


def target_field(axis: str) -> tuple[str, str] | None:
    """``targets.width.hidden_size`` -> ("width", "hidden_size"); None for any other axis."""
    parts = axis.split(".")
    if len(parts) == 3 and parts[0] == "targets":
        return parts[1], parts[2]
    return None


def axes(trials: Sequence[TrialRow]) -> list[str]:
    """Swept axes in the order the trials list them (the seed is not an axis of its own)."""
    out: dict[str, None] = {}
    for t in trials:
        for k in t.overrides:
            if k != SEED_AXIS:
                out.setdefault(k, None)
    return list(out)


class Axis:
    """One swept axis over a set of trials: who takes part, with which value, in which context."""

    def __init__(self, trials: Sequence[TrialRow], axis: str):
        self.axis = axis
        self.field = target_field(axis)
        self.target_labels = _target_labels(trials) if axis == TARGET_AXIS else {}

    def takes_part(self, t: TrialRow) -> bool:
        if self.axis not in t.overrides:
            return False
        if self.field is not None and "target" in t.overrides:
            return t.overrides["target"] == self.field[0]
        return True

    def value(self, t: TrialRow) -> Any:
        if self.axis == TARGET_AXIS:
            return self.target_labels.get(t.key, t.overrides[TARGET_AXIS])
        return t.overrides[self.axis]

    def context(self, t: TrialRow) -> dict[str, Any]:
        """Everything about the trial except this axis: its resolved config (else its overrides)."""
        if t.config is None:
            drop = {self.axis} | (
                {k for k in t.overrides if k.startswith("targets.")} if self.axis == TARGET_AXIS else set()
            )
            return {k: v for k, v in t.overrides.items() if k not in drop}
        out = json.loads(canon(t.config))
        if self.axis == TARGET_AXIS:
            out.pop("target", None)
            # The targets it was pruned through (rounds, chains) are part of the target, and each link
            # distils distill.tokens: a lineage compares with a direct prune at the same total tokens.
            links = len(out.pop("lineage", None) or [None])
            if links > 1 and isinstance(out.get("distill"), dict) and "tokens" in out["distill"]:
                out["distill"]["tokens"] = out["distill"]["tokens"] * links
        elif self.field is not None:
            if isinstance(out.get("target"), dict):
                out["target"].pop(self.field[1], None)
        else:
            node = out
            parts = self.axis.split(".")
            for part in parts[:-1]:
                if not isinstance(node.get(part), dict):
                    return out
                node = node[part]
            node.pop(parts[-1], None)
        return out

    def values(self, trials: Sequence[TrialRow]) -> list[Any]:
        seen: dict[str, Any] = {}
        for t in trials:
            if self.takes_part(t):
                v = self.value(t)
                seen.setdefault(canon(v), v)
        return list(seen.values())

    def comparable(self, a: Any, b: Any) -> bool:
        """Two shapes of one target name are compared by their ``targets.*`` axis, not by ``target``."""
        if self.axis != TARGET_AXIS:
            return True
        return _base_name(a) != _base_name(b)

    def members(self, trials: Sequence[TrialRow], a: Any, b: Any, metric: str) -> list[tuple[TrialRow, str]]:
        """The finished trials that take part with value a or b, each with its value in canonical form."""
        wanted = (canon(a), canon(b))
        out = []
        for t in trials:
            if self.takes_part(t) and finished(t, metric):
                v = canon(self.value(t))
                if v in wanted:
                    out.append((t, v))
        return out

    def pairs(self, trials: Sequence[TrialRow], a: Any, b: Any, metric: str) -> list[Pair]:
        """Pairs of finished trials with this axis = a and = b that are equal in everything else."""
        ca, cb = canon(a), canon(b)
        by_ctx: dict[str, dict[str, TrialRow]] = {}
        for t, v in self.members(trials, a, b, metric):
            group = by_ctx.setdefault(canon(self.context(t)), {})
            if v in group:
                raise ReportError(
                    f"trials {group[v].key} and {t.key} both have {self.axis}={fmt_value(self.value(t))} and "
                    "are equal in everything else, so a pair would be ambiguous; the records are "
                    "inconsistent (were trials recorded by different versions of the spec?)"
                )
            group[v] = t
        out = []
        for ctx, group in by_ctx.items():
            if ca in group and cb in group:
                ta, tb = group[ca], group[cb]
                out.append(Pair(ta.key, tb.key, ta.metrics[metric], tb.metrics[metric], json.loads(ctx)))
        return out


def _base_name(value: Any) -> Any:
    return value.split("[", 1)[0] if isinstance(value, str) else value


def _target_labels(trials: Sequence[TrialRow]) -> dict[str, str]:
    """Trial key -> its target's label: the name, with the differing fields when the name has several
    shapes among the trials."""
    shapes: dict[str, dict[str, dict[str, Any]]] = {}
    for t in trials:
        name = t.overrides.get(TARGET_AXIS)
        if isinstance(name, str):
            shape = t.shape if t.shape is not None else _override_shape(t, name)
            shapes.setdefault(name, {})[canon(shape)] = shape
    out: dict[str, str] = {}
    for t in trials:
        name = t.overrides.get(TARGET_AXIS)
        if not isinstance(name, str) or len(shapes[name]) < 2:
            continue
        variants = list(shapes[name].values())
        differing = sorted({k for s in variants for k in s if len({repr(v.get(k)) for v in variants}) > 1})
        shape = t.shape if t.shape is not None else _override_shape(t, name)
        out[t.key] = f"{name}[{', '.join(f'{k}={shape.get(k)}' for k in differing)}]"
    return out


def _override_shape(t: TrialRow, name: str) -> dict[str, Any]:
    prefix = f"targets.{name}."
    return {k[len(prefix) :]: v for k, v in t.overrides.items() if k.startswith(prefix)}


# ---------------------------------------------------------------------- what tells pairs apart


def lookup(d: Any, path: str) -> Any:
    """The value at a dotted path of a nested mapping (or the flat key itself), else :data:`MISSING`."""
    if isinstance(d, Mapping) and path in d:
        return d[path]
    for part in path.split("."):
        if not isinstance(d, Mapping) or part not in d:
            return MISSING
        d = d[part]
    return d


def flat_keys(contexts: Sequence[Mapping[str, Any]]) -> list[str]:
    """Dotted paths of every leaf of the contexts (the target shape counts as one leaf)."""
    out: dict[str, None] = {}

    def walk(d: Mapping[str, Any], prefix: str) -> None:
        for k in sorted(d):
            v = d[k]
            path = f"{prefix}{k}"
            if isinstance(v, Mapping) and path != "target":
                walk(v, path + ".")
            else:
                out.setdefault(path, None)

    for c in contexts:
        walk(c, "")
    return list(out)


def varying_keys(contexts: Sequence[Mapping[str, Any]]) -> list[str]:
    """The dotted paths whose value differs between the contexts; a field that is a mapping in some
    contexts and not in others (``teacher.correction``: off or a dict) is named once, not per subfield."""
    keys = [k for k in flat_keys(contexts) if len({repr(lookup(c, k)) for c in contexts}) > 1]
    return [k for k in keys if not any(k.startswith(j + ".") for j in keys)]


def settings(pairs: Sequence[Pair]) -> list[str]:
    """What other than the seed the pairs differ in: empty when they are pure seed replicates."""
    return [k for k in varying_keys([p.context for p in pairs]) if k != SEED_AXIS]


__all__ = ["Axis", "MISSING", "axes", "flat_keys", "lookup", "settings", "target_field", "varying_keys"]
