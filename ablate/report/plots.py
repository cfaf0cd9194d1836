"""The report's figures as PNG bytes, byte-identical for the same report.

``loss_vs_tokens.png`` (:mod:`ablate.report.plot_loss`), ``quality_vs_params.png``
(:mod:`ablate.report.plot_quality`) and one figure per finding (here); what they share (canvas, style,
legends outside the axes, a value axis that survives an outlier) is :mod:`ablate.report.plotkit`. Every
text element lies inside the figure (tests/report/test_figures.py checks it at 50 trials).
"""

from __future__ import annotations

import math
from typing import Any

from ablate.report import plotkit as kit
from ablate.report.labels import Labels, short_axis_names
from ablate.report.model import CLEAR, FEW, Finding, Report
from ablate.report.pairing import MISSING, lookup, varying_keys

__all__ = [
    "finding_figure",
    "finding_file",
    "finding_png",
    "loss_png",
    "quality_png",
    "render_plots",
    "LOSS_PNG",
    "QUALITY_PNG",
]

LOSS_PNG = "loss_vs_tokens.png"
FINDING_PREFIX = "finding_"
QUALITY_PNG = "quality_vs_params.png"
MAX_PAIR_LABELS = 16
"""Above this many pairs the bars are not labelled one by one."""


def loss_png(report: Report) -> bytes:
    from ablate.report.plot_loss import loss_figure

    with kit.rc():
        return kit.png(loss_figure(report))


def quality_png(report: Report) -> bytes:
    from ablate.report.plot_quality import quality_figure

    with kit.rc():
        return kit.png(quality_figure(report))


def finding_figure(finding: Finding, labels: Labels | None = None) -> Any:
    """One bar per pair, sorted: metric(A) - metric(B); the dashed line is the mean, the band its 95%
    t interval (from 3 pairs on). Pairs are labelled by what tells them apart when there are few enough.
    Long values (a settings block) are shown by their code from ``labels`` (the report's key lists them)."""
    f = finding
    short = labels.short.get(f.axis, f.axis) if labels else f.axis
    a = labels.value(f.axis, f.a) if labels else f.label_a
    b = labels.value(f.axis, f.b) if labels else f.label_b
    fig = kit.figure(7.5, 4.2)
    ax = fig.subplots()
    order = sorted(range(len(f.pairs)), key=lambda i: (f.pairs[i].diff, i))
    diffs = [f.pairs[i].diff for i in order]
    better_a = [(d > 0) == f.higher_is_better and d != 0 for d in diffs]
    colors = [kit.COLORS[0] if w else kit.COLORS[1] for w in better_a]
    xs = list(range(len(diffs)))
    ax.bar(xs, diffs, color=colors, width=0.7, zorder=2)
    ax.axhline(0, color="black", lw=0.8, zorder=3)
    if diffs:
        lo, hi = f.ci
        if math.isfinite(lo) and math.isfinite(hi):
            ax.axhspan(lo, hi, color="#888888", alpha=0.25, lw=0, zorder=1)
        ax.axhline(f.mean_diff, color="#333333", lw=1.2, linestyle="--", zorder=3)
    ticks, header = _pair_labels(f, order)
    if ticks is not None:
        many = len(xs) > 4 or max((len(t) for t in ticks), default=0) > 14
        ax.set_xticks(xs, ticks, fontsize=7, rotation=30 if many else 0, ha="right" if many else "center")
        ax.set_xlabel(f"pairs, by {header}" if header else "pairs", fontsize=8)
    else:
        ax.set_xticks([])
        ax.set_xlabel(f"{len(xs)} pairs, sorted", fontsize=8)
    ax.set_ylabel(f"Δ {f.metric} (A − B)", fontsize=8)
    if f.verdict == CLEAR:
        verdict = f"clear win: {labels.value(f.axis, f.winner) if labels else f.winner}"
    elif f.verdict == FEW:
        verdict = f"too few pairs ({f.n})"
    else:
        verdict = f.verdict
    better = "higher" if f.higher_is_better else "lower"
    interval = (
        f", 95% t interval [{f.ci[0]:+.4g}, {f.ci[1]:+.4g}], Holm p {f.p_adjusted:.2g}"
        if math.isfinite(f.ci[0])
        else ""
    )
    scope = "" if f.scope == "all pairs" else f" ({f.scope})"
    title = (
        f"{short}: A = {a} vs B = {b}{scope}\n{verdict}; mean Δ {f.mean_diff:+.4g}{interval}\n"
        f"blue: A better, orange: B better ({better} {f.metric} wins)"
    )
    ax.set_title(kit.wrap(title, 95), fontsize=8)
    return fig


def finding_png(finding: Finding, labels: Labels | None = None) -> bytes:
    with kit.rc():
        return kit.png(finding_figure(finding, labels))


def _pair_labels(f: Finding, order: list[int]) -> tuple[list[str] | None, str]:
    """What distinguishes the pairs from each other (the values of the context that vary, by short
    names), or None when there are too many pairs to label."""
    if len(f.pairs) > MAX_PAIR_LABELS:
        return None, ""
    contexts = [f.pairs[i].context for i in order]
    keys = varying_keys(contexts)
    short = short_axis_names(keys)
    out = []
    for c in contexts:
        parts = []
        for k in keys:
            v = lookup(c, k)
            if v is not MISSING:
                parts.append(_context_label(k, v))
        out.append(" / ".join(parts) if parts else "pair")
    return out, " / ".join(short[k] for k in keys)


def _context_label(key: str, value: Any) -> str:
    """A short tick label: a target by its shape, any other settings block by whether it is on."""
    from ablate.report.model import fmt_value

    if isinstance(value, dict):
        return _shape_label(value) if key == "target" else "on"
    if value is None and key != "target":
        return "off"
    return fmt_value(value)[:16]


def _shape_label(shape: dict[str, Any]) -> str:
    short = {
        "hidden_size": "h",
        "intermediate_size": "ffn",
        "num_attention_heads": "heads",
        "num_hidden_layers": "L",
    }
    return " ".join(f"{short.get(k, k)}{v}" for k, v in shape.items())


def finding_file(index: int, finding: Finding) -> str:
    """The figure of the report's ``index``-th finding (the markdown links it by this name)."""
    return f"{FINDING_PREFIX}{index:02d}_{finding.slug}.png"


def render_plots(report: Report) -> dict[str, bytes]:
    """Every figure of the report: file name -> PNG bytes (finding figures named by :func:`finding_file`)."""
    out = {LOSS_PNG: loss_png(report), QUALITY_PNG: quality_png(report)}
    labels = Labels(report.trials)
    for i, f in enumerate(report.findings, 1):
        out[finding_file(i, f)] = finding_png(f, labels)
    return out
