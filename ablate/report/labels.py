"""Short labels for trials, configurations and sweep values, shared by the figures and report.md.

A figure legend or tick label that spells out every override (``importance.width.batch_agg=l2,
teacher.correction={"global_batch":null,...}``) crowds out the data. :class:`Labels` names a trial by the
axes that vary only, each axis by the shortest unambiguous tail of its dotted path (``batch_agg``), and any
value longer than :data:`MAX_VALUE_CHARS` by a code (``correction#1``); :meth:`Labels.key_rows` is the key
the report prints next to the figures.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ablate.report.model import TrialRow, canon, fmt_value

MAX_VALUE_CHARS = 20
"""Values longer than this (a teacher.correction block, say) are shown by a code and listed in the key."""
SEED = "seed"


def short_axis_names(axes: Sequence[str]) -> dict[str, str]:
    """Each dotted path by its shortest tail that no other path shares (``distill.loss`` -> ``loss``)."""
    out: dict[str, str] = {}
    for axis in axes:
        parts = axis.split(".")
        for n in range(1, len(parts) + 1):
            tail = ".".join(parts[-n:])
            if not any(o != axis and (o == tail or o.endswith("." + tail)) for o in axes):
                break
        out[axis] = tail
    return out


def short_value(value: Any) -> str:
    """A value as a label when it is short enough (the caller codes it otherwise)."""
    if value is None:
        return "none"
    return fmt_value(value)


class Labels:
    """Short names for the trials of one report (see the module docstring)."""

    def __init__(self, trials: Sequence[TrialRow]):
        order: list[str] = []
        for t in trials:
            for k in t.overrides:
                if k != SEED and k not in order:
                    order.append(k)
        self.all_axes = order
        self.axes = [a for a in order if len({canon(t.overrides.get(a)) for t in trials}) > 1]
        self.short = short_axis_names(order)
        self.codes: dict[str, dict[str, str]] = {}
        """axis -> canonical value -> code, for values too long to print."""
        for axis in order:
            for t in trials:
                v = t.overrides.get(axis)
                text = short_value(v)
                if len(text) > MAX_VALUE_CHARS:
                    codes = self.codes.setdefault(axis, {})
                    codes.setdefault(canon(v), f"{self.short[axis]}#{len(codes) + 1}")

    def value(self, axis: str, value: Any) -> str:
        """The label of one value of ``axis`` (its code when it is long)."""
        code = self.codes.get(axis, {}).get(canon(value))
        return code if code is not None else short_value(value)

    @property
    def header(self) -> str:
        """What a configuration label lists, e.g. ``target / loss / tokens``."""
        return " / ".join(self.short[a] for a in self.axes) if self.axes else "configuration"

    def config(self, t: TrialRow) -> str:
        """The trial's configuration (the varying axes without the seed), values joined by ' / '."""
        if not self.axes:
            first = self.all_axes[0] if self.all_axes else None
            return "all trials" if first is None else self.value(first, t.overrides.get(first))
        return " / ".join(self.value(a, t.overrides.get(a)) for a in self.axes)

    def overrides(self, t: TrialRow) -> str:
        """All of a trial's overrides, short axis names, long values by their code (for the trial table)."""
        parts = [f"{self.short.get(k, k)}={self.value(k, v)}" for k, v in t.overrides.items() if k != SEED]
        if SEED in t.overrides:
            parts.append(f"seed={fmt_value(t.overrides[SEED])}")
        return ", ".join(parts)

    def key_rows(self) -> list[tuple[str, str]]:
        """(short label, what it stands for): axes shown by a shorter name, and coded values."""
        rows = [(s, a) for a, s in self.short.items() if s != a]
        for axis, codes in self.codes.items():
            for value, code in codes.items():
                rows.append((code, f"{axis} = {value}"))
        return rows


__all__ = ["MAX_VALUE_CHARS", "Labels", "short_axis_names", "short_value"]
