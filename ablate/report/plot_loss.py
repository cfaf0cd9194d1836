"""Training and held-out loss against training tokens.

The training objective is a different quantity per loss kind (KL to the teacher for ``kld``, cross-entropy
on the data for ``ce`` and ``scratch``), so each kind gets its own panel. Below them, the held-out metric
over tokens: a curve per trial from the evaluations during distillation (``distill.eval_every``; step 0 is
the pruned student before retraining), the teacher as a horizontal line with its point at the end, and the
final value of every trial. One legend, outside, explains the colours of every panel.
"""

from __future__ import annotations

import math
from typing import Any

from ablate.report import plotkit as kit
from ablate.report.model import Report, TrialRow

OBJECTIVES = {
    "kld": "kld: KL(teacher ‖ student)",
    "kld+intermediate": "kld+intermediate: KL + intermediate states",
    "ce": "ce: cross-entropy on the data",
    "scratch": "scratch: cross-entropy, random init",
}
KIND_ORDER = ("kld", "kld+intermediate", "ce", "scratch")


def loss_kind(t: TrialRow) -> str:
    return str(((t.config or {}).get("distill") or {}).get("loss", t.overrides.get("distill.loss", "?")))


def _x(series: dict[str, list[float]]) -> tuple[list[float], str]:
    tokens = series.get("tokens") or []
    if tokens and all(math.isfinite(t) for t in tokens):
        return list(tokens), "training tokens"
    return list(series.get("step") or []), "optimizer step"


def _points(x: list[float], y: list[float]) -> tuple[list[float], list[float]]:
    pts = [(a, b) for a, b in zip(x, y, strict=True) if math.isfinite(a) and math.isfinite(b)]
    return [p[0] for p in pts], [p[1] for p in pts]


def loss_figure(report: Report) -> Any:
    metric = report.metric
    configs = kit.Configs(report.trials)
    eval_key = f"eval_{metric}"
    kinds = sorted(
        {loss_kind(t) for t in report.trials},
        key=lambda k: (k not in KIND_ORDER, KIND_ORDER.index(k) if k in KIND_ORDER else 0, k),
    )
    curves = {
        t.key: _points(*(_x(report.series[t.key])[0], report.series[t.key][eval_key]))
        for t in report.trials
        if eval_key in (report.series.get(t.key) or {})
    }
    has_curves = any(len(xs) > 1 for xs, _ in curves.values())
    n_kinds = max(1, len(kinds))
    n_entries = len(configs.groups) + 2
    entry_names = [*configs.groups, "pruned, before retraining (0 tokens)", "teacher"]
    width = max(7.0, 3.0 * n_kinds) + kit.legend_width(entry_names, configs.header)
    fig = kit.figure(width, max(7.0, kit.legend_height(n_entries)))
    mosaic = [kinds or ["none"], ["held"] * n_kinds]
    axes = fig.subplot_mosaic(mosaic, height_ratios=[1, 1.25])
    xlabel = "training tokens"
    for kind in kinds:
        ax = axes[kind]
        positive = True
        for t in report.trials:
            s = report.series.get(t.key) or {}
            if loss_kind(t) != kind or not s:
                continue
            x, xlabel = _x(s)
            xs, ys = _points(x, s.get("loss", []))
            if xs:
                ax.plot(xs, ys, color=configs.of(t), lw=1.1)
                positive = positive and min(ys) > 0
        if positive and ax.lines:
            ax.set_yscale("log")
        ax.set_title(OBJECTIVES.get(kind, kind), fontsize=8)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel("training objective" + (" (log)" if positive and ax.lines else ""), fontsize=8)
        if not ax.lines:
            ax.text(0.5, 0.5, "no steps recorded", transform=ax.transAxes, ha="center", fontsize=8)
    ax = axes["held"]
    finals = [(t.tokens or 0, t.metrics[metric], t) for t in report.finished]
    teachers = [r.metrics[metric] for r in report.references if r.kind == "teacher" and metric in r.metrics]
    pruned = [r.metrics[metric] for r in report.references if r.kind == "pruned" and metric in r.metrics]
    values = [v for _, v, _ in finals] + teachers
    if has_curves:
        values += [v for _, ys in curves.values() for v in ys[1:]]
    lim = kit.robust_range(values)
    if has_curves:
        for t in report.trials:
            xs, ys = curves.get(t.key, ([], []))
            if len(xs) > 1:
                ax.plot(xs, ys, color=configs.of(t), lw=1.1, marker=".", markersize=4)
    for lab in configs.groups:
        mine = [(x, v) for x, v, t in finals if configs.label(t) == lab]
        if mine:
            kit.clip_points(
                ax, [x for x, _ in mine], [v for _, v in mine], lim, color=configs.color[lab], s=22, zorder=4
            )
    x_end = max([x for x, _, _ in finals] + [1.0])
    if pruned:
        kit.clip_points(ax, [0.0] * len(pruned), pruned, lim, **kit.PRUNED_STYLE)
    for v in teachers:
        ax.axhline(v, color="#222222", lw=0.8, linestyle=":", zorder=1)
    if teachers:
        kit.clip_points(ax, [x_end] * len(teachers), teachers, lim, **kit.TEACHER_STYLE)
    ax.set_ylim(*lim)
    ax.set_xlim(-0.03 * x_end, 1.05 * x_end)
    better = "higher" if report.higher_is_better else "lower"
    how = (
        "curves: evaluations during distillation"
        if has_curves
        else "dots: final values only (no evaluations during distillation were recorded: distill.eval_every)"
    )
    ax.set_title(
        kit.wrap(
            f"held-out {metric} over training tokens ({better} is better); {how}",
            int((width - kit.legend_width(entry_names, configs.header)) * 11),
        ),
        fontsize=8,
    )
    ax.set_xlabel("training tokens")
    ax.set_ylabel(f"held-out {metric}")
    handles = [ax.scatter([], [], color=configs.color[lab], s=22) for lab in configs.groups]
    names = list(configs.groups)
    if pruned:
        handles.append(ax.scatter([], [], **kit.PRUNED_STYLE))
        names.append("pruned, before retraining (0 tokens)")
    if teachers:
        handles.append(ax.scatter([], [], **kit.TEACHER_STYLE))
        names.append("teacher")
    kit.legend(fig, handles, names, configs.header)
    return fig


__all__ = ["loss_figure"]
