"""The Pareto view: held-out metric against student size, with the teacher and the pruned students
(before retraining) as points.

Students of one study are usually all about one size and the teacher much larger, so one linear axis
would squeeze every student into a sliver: the teacher gets a narrow panel of its own to the right of a
broken size axis. The value axis is fitted to the bulk of the trials (:func:`plotkit.robust_range`); a
trial far off (training from scratch, say) sits on the edge with its value written next to it.
"""

from __future__ import annotations

import math
from typing import Any

from ablate.report import plotkit as kit
from ablate.report.model import Report

BREAK_RATIO = 3.0
"""Break the size axis when the teacher is further from the students than this many times their spread."""


def _pareto(points: list[tuple[float, float]], higher: bool) -> list[tuple[float, float]]:
    front: list[tuple[float, float]] = []
    best = -math.inf if higher else math.inf
    for p, v in sorted(points, key=lambda x: (x[0], -x[1] if higher else x[1])):
        if (v > best) if higher else (v < best):
            front.append((p, v))
            best = v
    return front


def quality_figure(report: Report) -> Any:
    metric = report.metric
    configs = kit.Configs(report.trials)
    scale, unit = (1e6, "millions") if (report.teacher.get("params") or 1e6) >= 1e6 else (1e3, "thousands")
    pts = [(t.params / scale, t.metrics[metric], t) for t in report.finished if t.params]
    teachers = [r for r in report.references if r.kind == "teacher"]
    pruned = [r for r in report.references if r.kind == "pruned" and r.params and metric in r.metrics]
    t_params = (report.teacher.get("params") or 0) / scale
    t_values = [r.metrics[metric] for r in teachers if metric in r.metrics]
    labels = [lab for lab in configs.groups if any(configs.label(t) == lab for _, _, t in pts)]
    n_entries = len(labels) + 2
    xs = [p for p, _, _ in pts] + [r.params / scale for r in pruned]
    span = (max(xs) - min(xs)) if xs else 0.0
    broken = bool(xs and t_params and (t_params - max(xs)) > BREAK_RATIO * max(span, 0.01 * t_params))
    entry_names = [*labels, "pruned, before retraining", "teacher"]
    width = 6.5 + kit.legend_width(entry_names, configs.header)
    fig = kit.figure(width, max(4.6, kit.legend_height(n_entries)))
    if broken:
        ax, ax_t = fig.subplots(1, 2, sharey=True, gridspec_kw={"width_ratios": [6, 1]})
    else:
        ax = fig.subplots()
        ax_t = ax
    lim = kit.robust_range([v for _, v, _ in pts] + t_values)
    handles: list[Any] = []
    names: list[str] = []
    for lab in labels:
        mine = [(p, v) for p, v, t in pts if configs.label(t) == lab]
        kit.clip_points(
            ax, [p for p, _ in mine], [v for _, v in mine], lim, color=configs.color[lab], s=18, zorder=3
        )
        handles.append(ax.scatter([], [], color=configs.color[lab], s=18))
        names.append(lab)
    front = _pareto([(p, v) for p, v, _ in pts], report.higher_is_better)
    if len(front) > 1:
        ax.plot([p for p, _ in front], [v for _, v in front], color="#555555", linestyle="--", lw=1, zorder=2)
    if pruned:
        kit.clip_points(
            ax,
            [r.params / scale for r in pruned],
            [r.metrics[metric] for r in pruned],
            lim,
            **kit.PRUNED_STYLE,
        )
        handles.append(ax.scatter([], [], **kit.PRUNED_STYLE))
        names.append("pruned, before retraining")
    if t_params and t_values:
        kit.clip_points(ax_t, [t_params] * len(t_values), t_values, lim, **kit.TEACHER_STYLE)
        handles.append(ax_t.scatter([], [], **kit.TEACHER_STYLE))
        names.append("teacher")
    elif t_params:
        ax_t.axvline(t_params, color="#999999", lw=1, linestyle=":")
        ax_t.text(
            t_params,
            0.5,
            f"teacher: {metric}\nnot recorded",
            transform=ax_t.get_xaxis_transform(),
            rotation=90,
            ha="right",
            va="center",
            fontsize=7,
            color="#555555",
        )
    ax.set_ylim(*lim)
    if broken:
        pad = max(span * 0.15, 0.002 * t_params)
        ax.set_xlim(min(xs) - pad, max(xs) + pad)
        ax_t.set_xlim(t_params - pad, t_params + pad)
        ax_t.set_xticks([t_params], [f"{t_params:.4g}"])
        ax.spines["right"].set_visible(False)
        ax_t.spines["left"].set_visible(False)
        ax_t.tick_params(axis="y", left=False, labelleft=False)
        marks = {
            "marker": [(-1, -1.5), (1, 1.5)],
            "markersize": 10,
            "linestyle": "none",
            "color": "k",
            "mec": "k",
            "mew": 1,
            "clip_on": False,
        }
        ax.plot([1, 1], [0, 1], transform=ax.transAxes, **marks)
        ax_t.plot([0, 0], [0, 1], transform=ax_t.transAxes, **marks)
        ax_t.set_title("teacher", fontsize=8)
    ax.set_xlabel(f"parameters ({unit})" + ("; the size axis is broken" if broken else ""))
    ax.set_ylabel(f"held-out {metric}")
    if not pts:
        ax.text(0.5, 0.5, "parameter counts unavailable", transform=ax.transAxes, ha="center")
    kit.legend(fig, handles, names, configs.header)
    better = "higher" if report.higher_is_better else "lower"
    kit.title(  # after the legend: the title is fitted beside it
        fig, f"held-out {metric} vs size ({better} is better; dashed: trials no smaller trial beats)", width
    )
    return fig


__all__ = ["quality_figure"]
