"""What every figure of the report shares: the canvas, the style, colours per configuration, legends
outside the axes, and a value axis that stays readable when one trial is far off.

matplotlib's object API with the Agg canvas (no pyplot, no global backend switch); the PNG carries no
``Software`` version or timestamp and the SVG hash salt is fixed, so the same records give the same bytes.
Layout is matplotlib's constrained layout, which makes room for the legends placed ``outside`` the axes.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ablate.report.labels import Labels
from ablate.report.model import TrialRow

DPI = 100
RC = {
    "svg.hashsalt": "ablate-report",
    "font.family": "DejaVu Sans",
    "font.size": 9,
    "axes.titlesize": 9,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "path.simplify": True,
}
COLORS = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)
TEACHER_STYLE = {"marker": "*", "s": 110, "color": "#222222", "zorder": 5}
PRUNED_STYLE = {"marker": "X", "s": 40, "color": "#888888", "zorder": 4}
LEGEND_ROWS = 24
"""Legend entries per column before a legend takes another column."""
OUTLIER_FENCE = 3.0
"""A value further than this many interquartile ranges outside the quartiles is drawn at the axis edge
(with its value written next to it) instead of stretching the axis for everyone else."""


def figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def rc() -> Any:
    import matplotlib

    return matplotlib.rc_context(RC)


def palette(n: int) -> list[Any]:
    from matplotlib import colormaps

    if n <= len(COLORS):
        return list(COLORS[:n])
    cmap = colormaps["tab20"] if n <= 20 else colormaps["turbo"]
    return [cmap(i % 20) if n <= 20 else cmap(0.05 + 0.9 * i / max(1, n - 1)) for i in range(n)]


class Configs:
    """Trials grouped by configuration (the varying overrides without the seed), a colour each; seeds of
    one configuration share its colour."""

    def __init__(self, trials: Sequence[TrialRow]):
        self.labels = Labels(trials)
        self.groups: dict[str, list[TrialRow]] = {}
        for t in trials:
            self.groups.setdefault(self.label(t), []).append(t)
        colors = palette(len(self.groups))
        self.color = {lab: colors[i] for i, lab in enumerate(self.groups)}

    @property
    def header(self) -> str:
        return self.labels.header

    def label(self, t: TrialRow) -> str:
        return self.labels.config(t)

    def of(self, t: TrialRow) -> Any:
        return self.color[self.label(t)]


def legend_height(n_entries: int) -> float:
    """Inches of figure height a legend of ``n_entries`` needs (one column holds LEGEND_ROWS)."""
    rows = min(n_entries, LEGEND_ROWS)
    return 0.9 + 0.165 * rows


def legend_width(labels: Sequence[str], title: str = "") -> float:
    """Inches a legend of these labels takes beside the axes (7-point text, LEGEND_ROWS per column)."""
    if not labels:
        return 0.0
    ncols = max(1, math.ceil(len(labels) / LEGEND_ROWS))
    chars = max(len(s) for s in labels)
    return max(0.3 + ncols * (0.35 + 0.058 * chars), 0.058 * len(title) + 0.2)


TITLE_CHARS_PER_INCH = 15
"""First guess of how many 9-point characters fit in an inch of title (measured and narrowed after)."""


def title(fig: Any, text: str, width_in: float) -> None:
    """The figure's title, wrapped to fit (an axes title wider than its axes is clipped). Call it after
    :func:`legend`: constrained layout puts an ``outside right upper`` legend at the very top of the
    figure, beside the title's band rather than below it, so the title is centred over the room left of
    the legend and wrapped until its measured width fits there."""
    if not fig.legends:
        fig.suptitle(wrap(text, max(30, int(width_in * TITLE_CHARS_PER_INCH))), fontsize=9)
        return
    fig.canvas.draw()  # runs the layout: where the legend is
    renderer = fig.canvas.get_renderer()
    left = min(legend.get_window_extent(renderer).x0 for legend in fig.legends)
    room = left - 0.1 * fig.dpi  # pixels from the figure's left edge to the legend, less a gap
    chars = max(20, int(room / fig.dpi * TITLE_CHARS_PER_INCH))
    while True:
        t = fig.suptitle(wrap(text, chars), fontsize=9, x=room / 2 / fig.bbox.width, ha="center")
        if t.get_window_extent(renderer).width <= room or chars <= 20:
            return
        chars = max(20, int(chars * 0.9))


def legend(fig: Any, handles: list[Any], labels: list[str], title: str) -> Any:
    """One legend for the figure, outside the axes on the right (constrained layout makes room for it)."""
    if not handles:
        return None
    ncols = max(1, math.ceil(len(handles) / LEGEND_ROWS))
    return fig.legend(
        handles,
        labels,
        title=title,
        fontsize=7,
        title_fontsize=7,
        loc="outside right upper",
        ncols=ncols,
        frameon=False,
        borderaxespad=0.2,
    )


def robust_range(values: Sequence[float]) -> tuple[float, float]:
    """Axis limits that show the bulk of ``values``: quartiles +- OUTLIER_FENCE interquartile ranges
    (never narrower than the values inside that fence), padded by 8%."""
    vals = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if vals.size == 0:
        return 0.0, 1.0
    q1, q3 = np.percentile(vals, [25, 75])
    spread = max(q3 - q1, 1e-3 * max(1.0, abs(float(np.median(vals)))))
    inside = vals[(vals >= q1 - OUTLIER_FENCE * spread) & (vals <= q3 + OUTLIER_FENCE * spread)]
    lo, hi = float(inside.min()), float(inside.max())
    pad = (hi - lo) * 0.08 or abs(hi) * 0.05 or 0.1
    return lo - pad, hi + pad


def clip_points(
    ax: Any, xs: Sequence[float], ys: Sequence[float], lim: tuple[float, float], **style: Any
) -> None:
    """Scatter (x, y); points outside ``lim`` on y are drawn on its edge as a triangle pointing away, with
    their value written beside them, so nothing is hidden and the axis keeps its scale."""
    lo, hi = lim
    inside = [(x, y) for x, y in zip(xs, ys, strict=True) if lo <= y <= hi]
    if inside:
        ax.scatter([p[0] for p in inside], [p[1] for p in inside], **style)
    edge = {k: v for k, v in style.items() if k not in ("marker", "label")}
    edge["s"] = max(30, style.get("s", 20))
    written: dict[tuple[float, bool], list[str]] = {}  # one label per edge point: values at one x share it
    for x, y in zip(xs, ys, strict=True):
        if lo <= y <= hi or not math.isfinite(y):
            continue
        top = y > hi
        ax.scatter([x], [hi if top else lo], marker="^" if top else "v", clip_on=False, **edge)
        values = written.setdefault((x, top), [])
        if f"{y:.3g}" not in values:
            values.append(f"{y:.3g}")
    for (x, top), values in written.items():
        nums = sorted(float(v) for v in values)
        text = ", ".join(values) if len(values) <= 2 else f"{nums[0]:.3g} to {nums[-1]:.3g}"
        ax.annotate(
            text,
            (x, hi if top else lo),
            xytext=(5, -9 if top else 9),
            textcoords="offset points",
            fontsize=7,
            ha="left",
            va="center",
            color="#333333",
            annotation_clip=False,
        )


def wrap(text: str, width: int) -> str:
    import textwrap

    return "\n".join(textwrap.fill(line, width) for line in text.split("\n"))


__all__ = [
    "COLORS",
    "Configs",
    "PRUNED_STYLE",
    "TEACHER_STYLE",
    "clip_points",
    "figure",
    "legend",
    "legend_height",
    "legend_width",
    "title",
    "palette",
    "png",
    "rc",
    "robust_range",
    "wrap",
]
