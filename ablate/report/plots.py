"""The report's figures as PNG bytes, byte-identical for the same report.

matplotlib's object API with the Agg canvas (no pyplot, no global backend switch); the PNG carries no
``Software`` version or timestamp (``metadata={"Software": None}``) and the SVG hash salt is fixed, so
regenerating a report on the same records gives the same files.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

from ablate.report.model import CLEAR, FEW, Finding, Report, TrialRow, fmt_value
from ablate.report.pairing import MISSING, lookup, varying_keys

__all__ = [
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
DPI = 100
RC = {
    "svg.hashsalt": "ablate-report",
    "font.family": "DejaVu Sans",
    "font.size": 9,
    "axes.titlesize": 10,
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
LINESTYLES = ("-", "--", "-.", ":")


def _figure(width: float, height: float, ncols: int = 1) -> tuple[Any, list[Any]]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]
    return fig, axes


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def _rc():
    import matplotlib

    return matplotlib.rc_context(RC)


def _finite(xs: Sequence[float]) -> bool:
    return any(math.isfinite(x) for x in xs)


def _x(series: dict[str, list[float]]) -> tuple[list[float], str]:
    tokens = series.get("tokens") or []
    if tokens and all(math.isfinite(t) for t in tokens):
        return list(tokens), "training tokens"
    return list(series.get("step") or []), "optimizer step"


def _palette(n: int) -> list[str]:
    from matplotlib import colormaps

    if n <= len(COLORS):
        return list(COLORS[:n])
    cmap = colormaps["tab20"]
    return [cmap(i % 20) for i in range(n)]


class _Configs:
    """Trials grouped by configuration (overrides without the seed), with a colour and a short label each:
    only the axes that vary between trials, values joined by ' / ' under a header naming the axes."""

    def __init__(self, trials: Sequence[TrialRow]):
        axes: list[str] = []
        for t in trials:
            for k in t.overrides:
                if k != "seed" and k not in axes:
                    axes.append(k)
        self.axes = [a for a in axes if len({repr(t.overrides.get(a)) for t in trials}) > 1] or axes[:1]
        self.header = " / ".join(self.axes) if self.axes else "trial"
        self.groups: dict[str, list[TrialRow]] = {}
        for t in trials:
            self.groups.setdefault(self.label(t), []).append(t)
        colors = _palette(len(self.groups))
        self.color = {lab: colors[i] for i, lab in enumerate(self.groups)}

    def label(self, t: TrialRow) -> str:
        if not self.axes:
            return t.key[:8]
        return " / ".join(fmt_value(t.overrides.get(a)) for a in self.axes)


def _loss_kind(t: TrialRow) -> str:
    return str(((t.config or {}).get("distill") or {}).get("loss", t.overrides.get("distill.loss", "?")))


def loss_png(report: Report) -> bytes:
    """Left: each trial's training objective against training tokens (colour = configuration, line style =
    loss kind; seeds share a colour). Right: the held-out metric, as curves against tokens when the trials
    logged ``eval_<metric>`` during training, else its final value per configuration (dots: seeds, bar:
    mean), best first."""
    metric = report.metric
    configs = _Configs(report.trials)
    finished = report.finished
    eval_key = f"eval_{metric}"
    has_eval = any(_finite((report.series.get(t.key) or {}).get(eval_key, [])) for t in report.trials)
    n_rows = len({configs.label(t) for t in finished}) if not has_eval else 0
    height = max(4.0, 1.6 + 0.26 * n_rows)
    with _rc():
        fig, (ax_train, ax_eval) = _figure(11.0, height, 2)
        kinds = sorted({_loss_kind(t) for t in report.trials})
        style = {k: LINESTYLES[i % len(LINESTYLES)] for i, k in enumerate(kinds)}
        xlabel = "training tokens"
        positive = True
        for t in report.trials:
            s = report.series.get(t.key) or {}
            if s and _finite(s.get("loss", [])):
                x, xlabel = _x(s)
                color = configs.color[configs.label(t)]
                ax_train.plot(x, s["loss"], color=color, linestyle=style[_loss_kind(t)], lw=1.2)
                positive = positive and min(v for v in s["loss"] if math.isfinite(v)) > 0
        if positive and ax_train.lines:
            ax_train.set_yscale("log")
        ax_train.set_title("training objective (KL for kld, CE for ce/scratch)")
        ax_train.set_xlabel(xlabel)
        ax_train.set_ylabel("training loss" + (" (log scale)" if positive and ax_train.lines else ""))
        if len(kinds) > 1:
            from matplotlib.lines import Line2D

            handles = [Line2D([], [], color="#444444", linestyle=style[k]) for k in kinds]
            ax_train.legend(handles, kinds, title="distill.loss", fontsize=7, title_fontsize=7)
        better = "higher" if report.higher_is_better else "lower"
        if has_eval:
            for t in report.trials:
                s = report.series.get(t.key) or {}
                if _finite(s.get(eval_key, [])):
                    x, _ = _x(s)
                    pts = [(a, b) for a, b in zip(x, s[eval_key], strict=True) if math.isfinite(b)]
                    ax_eval.plot(
                        [p[0] for p in pts],
                        [p[1] for p in pts],
                        color=configs.color[configs.label(t)],
                        marker=".",
                    )
            ax_eval.set_xlabel("training tokens")
            ax_eval.set_ylabel(metric)
            ax_eval.set_title(f"held-out {metric} during training ({better} is better)")
        else:
            groups = {}
            for t in finished:
                groups.setdefault(configs.label(t), []).append(t.metrics[metric])
            sign = -1.0 if report.higher_is_better else 1.0
            order = sorted(groups, key=lambda lab: (sign * sum(groups[lab]) / len(groups[lab]), lab))
            order.reverse()  # best at the top
            for y, lab in enumerate(order):
                vals = groups[lab]
                mean = sum(vals) / len(vals)
                ax_eval.barh(y, mean, color=configs.color[lab], alpha=0.35, height=0.7)
                ax_eval.scatter(vals, [y] * len(vals), color=configs.color[lab], s=12, zorder=3)
            ax_eval.set_yticks(range(len(order)), order, fontsize=7)
            lo = min(min(v) for v in groups.values()) if groups else 0.0
            hi = max(max(v) for v in groups.values()) if groups else 1.0
            pad = (hi - lo) * 0.15 or abs(hi) * 0.05 or 0.1
            ax_eval.set_xlim(lo - pad, hi + pad)
            ax_eval.set_xlabel(f"held-out {metric} after training ({better} is better)")
            ax_eval.set_ylabel(configs.header, fontsize=8)
            tokens = sorted({t.tokens for t in finished if t.tokens})
            when = f"after {tokens[0]} tokens" if len(tokens) == 1 else "at the end of training"
            ax_eval.set_title(f"held-out {metric} {when}\n(dots: seeds; bars: their mean; best at the top)")
        return _png(fig)


def quality_png(report: Report) -> bytes:
    """The Pareto view: held-out metric against student parameters, one point per finished trial (colour =
    configuration), with the front of trials that no smaller trial beats."""
    metric = report.metric
    configs = _Configs(report.trials)
    pts = [(t.params, t.metrics[metric], t) for t in report.finished if t.params]
    with _rc():
        fig, (ax,) = _figure(8.0, 4.6)
        labels = [lab for lab in configs.groups if any(configs.label(t) == lab for _, _, t in pts)]
        for lab in labels:
            xs = [p / 1e6 for p, _, t in pts if configs.label(t) == lab]
            ys = [v for _, v, t in pts if configs.label(t) == lab]
            ax.scatter(xs, ys, color=configs.color[lab], label=lab, zorder=3, s=16)
        front = _pareto([(p, v) for p, v, _ in pts], report.higher_is_better)
        if len(front) > 1:
            ax.plot([p / 1e6 for p, _ in front], [v for _, v in front], color="#555555", linestyle="--", lw=1)
        if report.teacher.get("params"):
            ax.axvline(report.teacher["params"] / 1e6, color="#999999", lw=1, linestyle=":")
            ax.annotate(
                "teacher",
                (report.teacher["params"] / 1e6, 1),
                xycoords=("data", "axes fraction"),
                rotation=90,
                va="top",
                ha="right",
                fontsize=7,
                color="#666666",
            )
        ax.set_xlabel("student parameters (millions)")
        ax.set_ylabel(f"held-out {metric}")
        better = "higher" if report.higher_is_better else "lower"
        ax.set_title(f"quality vs size ({better} is better; dashed: the front)")
        if not pts:
            ax.text(0.5, 0.5, "parameter counts unavailable", transform=ax.transAxes, ha="center")
        elif len(labels) <= 24:
            fig.legend(
                *ax.get_legend_handles_labels(),
                title=configs.header,
                fontsize=6,
                title_fontsize=7,
                loc="outside right upper",
                frameon=False,
            )
        return _png(fig)


def _pareto(points: list[tuple[int, float]], higher: bool) -> list[tuple[int, float]]:
    front: list[tuple[int, float]] = []
    best = -math.inf if higher else math.inf
    for p, v in sorted(points, key=lambda x: (x[0], -x[1] if higher else x[1])):
        if (v > best) if higher else (v < best):
            front.append((p, v))
            best = v
    return front


def finding_png(finding: Finding) -> bytes:
    """One bar per pair, sorted: metric(A) - metric(B); the dashed line is the mean, the band its 95%
    t interval (from 3 pairs on). Pairs are labelled by what tells them apart when there are few enough."""
    f = finding
    with _rc():
        fig, (ax,) = _figure(7.0, 3.8)
        order = sorted(range(len(f.pairs)), key=lambda i: (f.pairs[i].diff, i))
        diffs = [f.pairs[i].diff for i in order]
        better_a = [(d > 0) == f.higher_is_better and d != 0 for d in diffs]
        colors = [COLORS[0] if b else COLORS[1] for b in better_a]
        xs = list(range(len(diffs)))
        ax.bar(xs, diffs, color=colors, width=0.7)
        ax.axhline(0, color="black", lw=0.8)
        if diffs:
            lo, hi = f.ci
            if math.isfinite(lo) and math.isfinite(hi):
                ax.axhspan(lo, hi, color="#888888", alpha=0.25, lw=0)
            ax.axhline(f.mean_diff, color="#333333", lw=1.2, linestyle="--")
        labels, header = _pair_labels(f, order)
        if labels is not None:
            ax.set_xlabel(header, fontsize=7)
            ax.set_xticks(
                xs,
                labels,
                fontsize=7,
                rotation=30 if len(xs) > 4 else 0,
                ha="right" if len(xs) > 4 else "center",
            )
        else:
            ax.set_xticks([])
            ax.set_xlabel(f"{len(xs)} pairs, sorted")
        ax.set_ylabel(f"{f.metric}({f.label_a}) − {f.metric}({f.label_b})", fontsize=8)
        if f.verdict == CLEAR:
            verdict = f"clear win: {fmt_value(f.winner)}"
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
        ax.set_title(
            f"{f.title}\n{verdict}; mean {f.mean_diff:+.4g}{interval}\n"
            f"blue: {f.label_a} better, orange: {f.label_b} better ({better} {f.metric} wins)",
            fontsize=8,
        )
        return _png(fig)


def _pair_labels(f: Finding, order: list[int]) -> tuple[list[str] | None, str]:
    """What distinguishes the pairs from each other (the values of the context that vary), or None when
    there are too many pairs to label."""
    if len(f.pairs) > 16:
        return None, ""
    contexts = [f.pairs[i].context for i in order]
    keys = varying_keys(contexts)
    out = []
    for c in contexts:
        parts = []
        for k in keys:
            v = lookup(c, k)
            if v is not MISSING:
                parts.append(_context_label(k, v))
        out.append(" / ".join(parts) if parts else "pair")
    return out, " / ".join(keys)


def _context_label(key: str, value: Any) -> str:
    """A short tick label: a target by its shape, any other settings block by whether it is on."""
    if isinstance(value, dict):
        return _shape_label(value) if key == "target" else "on"
    if value is None and key != "target":
        return "off"
    return fmt_value(value)[:24]


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
    for i, f in enumerate(report.findings, 1):
        out[finding_file(i, f)] = finding_png(f)
    return out
