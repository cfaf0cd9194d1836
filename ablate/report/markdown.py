"""``reports/<experiment>/report.md`` and its figures.

:func:`render_markdown` turns a :class:`~ablate.report.findings.Report` into the markdown text
(:mod:`ablate.report.write` writes it with the figures). Nothing in the output depends on when or where it
was generated, so the same records give byte-identical files.
"""

from __future__ import annotations

import math
from typing import Any

import yaml

from ablate.report.align import align_section
from ablate.report.benchmarks import benchmarks_section
from ablate.report.findings import MIN_PAIRS, RULE_ROWS, RULES_NOTE
from ablate.report.labels import Labels
from ablate.report.model import AGREES, CLEAR, DISAGREES, Finding, Report, TrialRow, fmt_value
from ablate.report.plots import LOSS_PNG, QUALITY_PNG, finding_file
from ablate.report.practices import MAPPING_ROWS, PRACTICES, shape_kind
from ablate.report.search import search_section
from ablate.spec.units import format_duration

__all__ = ["REPORT_MD", "render_markdown"]

REPORT_MD = "report.md"
METRIC_COLUMNS = (
    ("lm_loss", "LM loss"),
    ("perplexity", "perplexity"),
    ("kl_to_teacher", "KL to teacher"),
    ("top1_agreement", "top-1 agreement"),
)


# ====================================================================== formatting


def _num(v: float | None, digits: int = 4) -> str:
    if v is None or not isinstance(v, int | float):
        return "-"
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3):
        return f"{v:.{digits - 1}e}"
    return f"{v:.{digits}g}" if abs(v) >= 1 else f"{v:.{digits}f}"


def _signed(v: float) -> str:
    if math.isnan(v):
        return "nan"
    if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3):
        return f"{v:+.3e}"
    return f"{v:+.4f}"


def _params(p: int | None) -> str:
    if not p:
        return "-"
    if p >= 1e9:
        return f"{p / 1e9:.2f}B"
    if p >= 1e6:
        return f"{p / 1e6:.2f}M"
    if p >= 1e3:
        return f"{p / 1e3:.1f}k"
    return str(p)


def _tokens(n: int | None) -> str:
    if n is None:
        return "-"
    for div, suf in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= div:
            v = n / div
            return f"{v:.3g}{suf}"
    return str(n)


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _shape(shape: dict[str, Any] | None) -> str:
    if not shape:
        return "-"
    return ", ".join(f"{k}={v}" for k, v in shape.items())


def _link(text: str, url: str | None) -> str:
    return f"[{text}]({url})" if url else text


# ====================================================================== sections


def _spec_section(r: Report) -> list[str]:
    cfg = next((t.config for t in r.trials if t.config), None) or {}
    spec = r.spec
    lines = ["## Spec", "", "| | |", "|---|---|"]

    def row(k: str, v: str) -> None:
        lines.append(f"| {k} | {_cell(v)} |")

    teacher = cfg.get("teacher") or spec.get("teacher") or {}
    t_extra = []
    if r.teacher.get("params"):
        t_extra.append(f"{_params(r.teacher['params'])} params")
    if r.teacher.get("layers"):
        t_extra.append(f"{r.teacher['layers']} layers")
    row("teacher", f"`{teacher.get('model', '?')}`" + (f" ({', '.join(t_extra)})" if t_extra else ""))
    corr = teacher.get("correction")
    row(
        "teacher correction", "off" if not corr else ", ".join(f"{k} {fmt_value(v)}" for k, v in corr.items())
    )
    data = cfg.get("data") or {}
    if data:
        row(
            "data",
            f"`{data.get('corpus')}`, sequence {data.get('seq_len')}, held-out {_tokens(data.get('eval_tokens'))} tokens",
        )
    cal = cfg.get("calibration") or {}
    if cal:
        row("calibration", f"{cal.get('samples')} samples, batch {cal.get('batch_size')}")
    imp = cfg.get("importance") or {}
    if imp:
        w, d = imp.get("width") or {}, imp.get("depth") or {}
        row(
            "importance",
            f"width: {w.get('method')} (batch {w.get('batch_agg')}, seq {w.get('seq_agg')}, "
            f"MLP at {w.get('mlp_site')}, heads by {w.get('head_aggregation', 'token_l2')}); "
            f"depth: {d.get('method')}"
            + (f" by {d.get('contiguous_metric', 'lm_loss')}" if d.get("method") == "contiguous" else ""),
        )
    targets: dict[str, TrialRow] = {}
    for t in r.trials:
        name = t.overrides.get("target")
        if isinstance(name, str):
            targets.setdefault(name, t)
    if targets:
        row(
            "targets",
            "; ".join(
                f"**{n}**: {_shape(t.shape)} ({shape_kind(t.shape) or '?'}, {_params(t.params)} params)"
                for n, t in targets.items()
            ),
        )
    dist = cfg.get("distill") or {}
    if dist:
        row(
            "distillation",
            f"loss {dist.get('loss')}, temperature {fmt_value(dist.get('temperature'))}, "
            f"{_tokens(dist.get('tokens'))} tokens, LR {fmt_value(dist.get('lr'))} → "
            f"{fmt_value(dist.get('min_lr'))} ({dist.get('schedule')}, {dist.get('warmup_steps')} warm-up steps), "
            f"global batch {dist.get('global_batch')} (micro {dist.get('micro_batch')})",
        )
    swept: dict[str, list[str]] = {}
    seeds: list[str] = []
    for t in r.trials:
        for k, v in t.overrides.items():
            if k == "seed":
                if fmt_value(v) not in seeds:
                    seeds.append(fmt_value(v))
                continue
            vals = swept.setdefault(k, [])
            if fmt_value(v) not in vals:
                vals.append(fmt_value(v))
    row("sweep", "; ".join(f"`{k}`: {', '.join(v)}" for k, v in swept.items()) or "(none)")
    row("seeds", ", ".join(seeds) or "-")
    row("trials", ", ".join(f"{k} {v}" for k, v in r.counts.items() if v))
    row("spec hash", f"`{r.spec_hash}`")
    lines += ["", "The swept settings override the values above per trial (see the trial table)."]
    return lines


def _metric_columns(r: Report) -> list[tuple[str, str]]:
    cols = list(METRIC_COLUMNS)
    if r.metric not in {c for c, _ in cols}:
        cols.insert(0, (r.metric, r.metric))
    return cols


def _trials_section(r: Report) -> list[str]:
    cols = _metric_columns(r)
    labels = Labels(r.trials)
    head = [
        "key",
        "overrides",
        "params",
        "tokens",
        *[f"{label}" for _, label in cols],
        "recovered",
        "status",
        "time",
    ]
    numeric = {"params", "tokens", "recovered", *(label for _, label in cols)}
    lines = [
        "## Trials",
        "",
        f"Metrics are measured on the held-out split after distillation. **{r.metric}** is the primary metric "
        f"({'higher' if r.higher_is_better else 'lower'} is better); the best trial is in bold. "
        "Keys link to the trial's MLflow run. The first rows are what the students are measured against: the "
        "teacher, and each pruned student before any retraining (one-shot). *recovered* is the share of the "
        f"gap between a trial's pruned student and its teacher on {r.metric} that retraining closed (1: as "
        "good as the teacher; 0: no better than pruning alone).",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---:" if h in numeric else "---" for h in head) + "|",
    ]
    for ref in r.references:
        cells = [f"*{_cell(ref.label)}*", "", _params(ref.params), "0" if ref.kind == "pruned" else "-"]
        cells += [_num(ref.metrics.get(c)) for c, _ in cols]
        cells += ["-", "reference", "-"]
        lines.append("| " + " | ".join(cells) + " |")
    for t in r.trials:
        key = _link(f"`{t.key}`", r.run_url(t.mlflow_run_id))
        if t.key == r.best_trial.key:
            key = f"**{key}**"
        cells = [key, _cell(labels.overrides(t)), _params(t.params), _tokens(t.tokens)]
        cells += [_num(t.metrics.get(c)) for c, _ in cols]
        rec = r.recovered.get(t.key)
        cells += [
            "-" if rec is None else f"{rec:.0%}",
            t.status,
            "-" if t.duration_s is None else format_duration(t.duration_s),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    missing = [ref for ref in r.references if ref.missing]
    if missing:
        lines += ["", "Not in the records:", ""]
        lines += [f"- *{_cell(ref.label)}*: {ref.missing}." for ref in missing]
    lines += _key_table(labels)
    failed = [t for t in r.trials if t.error]
    if failed:
        lines += ["", "Errors:", ""]
        for t in failed:
            first = (t.error or "").strip().splitlines()[0] if (t.error or "").strip() else ""
            lines.append(f"- `{t.key}` ({t.status}): {_cell(first[:300])}")
    return lines


def _key_table(labels: Labels) -> list[str]:
    """The short names the trial table and the figures use, and what each stands for."""
    rows = labels.key_rows()
    if not rows:
        return []
    lines = ["", "Short names in the table and the figures:", "", "| short | stands for |", "|---|---|"]
    lines += [f"| `{_cell(short)}` | `{_cell(full)}` |" for short, full in rows]
    return lines


def _search_section(r: Report) -> list[str]:
    return search_section(r.search)


def _align_section(r: Report) -> list[str]:
    short = Labels(r.trials)
    return align_section(r.align, {t.key: f"`{t.key}` ({_cell(short.overrides(t))})" for t in r.trials})


def _benchmarks_section(r: Report) -> list[str]:
    """Rows named as in the trial table: key and short overrides (long values by the key table's code)."""
    short = Labels(r.trials)
    labels = {t.key: f"`{t.key}` ({_cell(short.overrides(t))})" for t in r.trials}
    return benchmarks_section(r.benchmarks, labels, str(r.teacher.get("model")))


def _agreement(f: Finding) -> str:
    if f.agreement is None:
        return "-"
    mark = {AGREES: "✅ agrees", DISAGREES: "❌ disagrees"}.get(f.agreement, "❔ inconclusive")
    return mark


def _verdict(f: Finding) -> str:
    if f.verdict == CLEAR:
        return f"**clear win: {fmt_value(f.winner)}**"
    return f.verdict


def _interval(f: Finding) -> str:
    if f.n < MIN_PAIRS or math.isnan(f.ci[0]):
        return "-"
    return f"[{_signed(f.ci[0])}, {_signed(f.ci[1])}]"


def _p(f: Finding) -> str:
    if f.n < MIN_PAIRS or math.isnan(f.p_value):
        return "-"
    return f"{f.p_adjusted:.2g}" if f.p_adjusted >= 1e-4 else "<1e-4"


def _settings(f: Finding) -> str:
    if f.n < 2:
        return "one pair"
    return "seed replicates" if not f.settings else "over " + ", ".join(f.settings)


def _findings_section(r: Report) -> list[str]:
    better = "higher" if r.higher_is_better else "lower"
    lines = [
        "## Findings",
        "",
        f"Primary metric **{r.metric}** ({better} is better; differences within {_num(r.margin)} "
        f"count as ties{' (relative)' if r.metric == 'perplexity' else ''}). "
        + (
            f"This report makes **{r.family_size}** comparison{'s' if r.family_size != 1 else ''} with a "
            "test; the p column is Holm-adjusted over all of them."
            if r.family_size
            else f"No comparison of this report has {MIN_PAIRS} pairs yet, so none has a test or a verdict."
        ),
        "",
        "| how | rule |",
        "|---|---|",
        *(f"| {a} | {b} |" for a, b in RULE_ROWS),
        "",
        RULES_NOTE,
        "",
        "Checks against the papers (*disagrees*: the other side is a clear win; *inconclusive*: anything else):",
        "",
        "| comparison | tests | *agrees* when |",
        "|---|---|---|",
        *(f"| {a} | {b} | {c} |" for a, b, c in MAPPING_ROWS),
        "",
    ]
    if not r.findings:
        lines += [
            "No paired comparisons: the experiment sweeps no axis with at least two finished values that "
            "share everything else.",
            "",
        ]
    else:
        lines += [
            "| # | comparison (A vs B) | pairs | pairs are | wins A / B / tie | mean Δ (A − B) | 95% t interval | p (Holm) | verdict | paper | this experiment |",
            "|---:|---|---:|---|---|---:|---|---:|---|---|---|",
        ]
        for i, f in enumerate(r.findings, 1):
            paper = PRACTICES[f.practice].title if f.practice else "-"
            lines.append(
                f"| {i} | [{_cell(f.title)}](#finding-{i}) | {f.n} | {_cell(_settings(f))} | "
                f"{f.wins_a} / {f.wins_b} / {f.ties} | {_signed(f.mean_diff)} | {_interval(f)} | {_p(f)} | "
                f"{_verdict(f)} | {paper} | {_agreement(f)} |"
            )
        lines.append("")
        for i, f in enumerate(r.findings, 1):
            lines += _finding_block(r, i, f)
    if r.untested:
        lines += ["### Best practices this experiment does not test", ""]
        for pid in r.untested:
            p = PRACTICES[pid]
            lines.append(f"- {p.title.capitalize()}: {p.claim}")
        lines.append("")
    return lines


def _statistics_sentence(f: Finding) -> str:
    if f.n < MIN_PAIRS:
        return f"Mean Δ = {_signed(f.mean_diff)}; no interval or test below {MIN_PAIRS} pairs: {_verdict(f)}."
    return (
        f"Mean Δ = {_signed(f.mean_diff)}, 95% t interval {_interval(f)}, paired t-test p = {f.p_value:.2g} "
        f"(Holm-adjusted over {f.family_size} comparison{'s' if f.family_size != 1 else ''}: "
        f"{f.p_adjusted:.2g}): {_verdict(f)}."
    )


def _needed_sentence(f: Finding) -> str:
    if f.verdict == CLEAR or f.pairs_needed is None:
        return ""
    more = f"more than {f.pairs_needed - 1}" if f.pairs_needed > 1000 else f"about {f.pairs_needed}"
    over = f" over {f.family_size} comparisons" if f.family_size > 1 else ""
    return (
        f" If the true difference were the size seen here, with this spread, {more} pairs (more seeds) would "
        f"give an 80% chance of a clear win (5% error rate{over}); this finding has {f.n}."
    )


def _finding_block(r: Report, i: int, f: Finding) -> list[str]:
    better = "higher" if f.higher_is_better else "lower"
    lead = (
        f"A = `{f.label_a}`, B = `{f.label_b}`; {f.n} pair{'s' if f.n != 1 else ''}"
        f"{'' if f.scope == 'all pairs' else ' (' + f.scope + ')'}. "
        f"A won {f.wins_a}, B won {f.wins_b}, {f.ties} tied ({better} {f.metric} wins; ties within "
        f"{_num(f.margin)}). {_statistics_sentence(f)}{_needed_sentence(f)}"
    )
    lines = [f'<a id="finding-{i}"></a>', "", f"### {i}. {f.title}", "", lead, ""]
    if f.settings:
        lines += [
            f"The pairs are not all replicates: they differ in {', '.join(f'`{k}`' for k in f.settings)}, so "
            "the verdict is about the average effect over these settings; the table shows each setting's "
            "difference.",
            "",
        ]
    if f.practice:
        p = PRACTICES[f.practice]
        lines += [f"*{p.title.capitalize()}*: {p.claim} → **{_agreement(f)}**. {f.explanation}", ""]
    elif f.explanation:
        lines += [f.explanation, ""]
    if f.note and f.note != f.explanation:
        lines += [f.note, ""]
    if f.extra.get("disagreement"):
        lines += [f.extra["disagreement"], ""]
    setting_col = bool(f.settings)
    lines += [
        "| pair | A trial | B trial |" + (" setting |" if setting_col else "") + " A | B | Δ |",
        "|---:|---|---|" + ("---|" if setting_col else "") + "---:|---:|---:|",
    ]
    for j, p in enumerate(f.pairs, 1):
        setting = ""
        if setting_col:
            setting = " " + _cell(", ".join(f"{k}={_setting_value(r, p, k)}" for k in f.settings)) + " |"
        lines.append(
            f"| {j} | `{p.key_a}` | `{p.key_b}` |{setting} {_num(p.value_a)} | {_num(p.value_b)} | "
            f"{_signed(p.diff)} |"
        )
    lines += ["", f"![{_cell(f.title)}]({finding_file(i, f)})", ""]
    return lines


def _setting_value(r: Report, pair: Any, key: str) -> str:
    """A pair's value of a setting, the target by its name (its shape is in the spec table)."""
    from ablate.report.pairing import MISSING, lookup

    if key == "target":
        trial = next((t for t in r.trials if t.key == pair.key_a), None)
        if trial is not None and isinstance(trial.overrides.get("target"), str):
            return trial.overrides["target"]
    v = lookup(pair.context, key)
    if v is MISSING:
        return "-"
    return _shape(v) if isinstance(v, dict) else fmt_value(v)


def _plots_section(r: Report) -> list[str]:

    return [
        "## Plots",
        "",
        f"Training objective and held-out {r.metric} against training tokens, per trial:",
        "",
        f"![loss vs tokens]({LOSS_PNG})",
        "",
        f"Held-out {r.metric} against student size (the Pareto view; dashed: trials no smaller trial beats):",
        "",
        f"![quality vs parameters]({QUALITY_PNG})",
        "",
    ]


def _best_section(r: Report) -> list[str]:
    b = r.best_trial
    over = ", ".join(f"{k}={fmt_value(v)}" for k, v in b.overrides.items())
    seeds = f", mean {_num(b.group_mean)} over its {b.seeds} seeds" if b.seeds > 1 else ""
    lines = [
        "## Best trial and the build recipe",
        "",
        f"Best trial: **`{b.key}`** ({_cell(over)}): {r.metric} {_num(b.value)}{seeds}, "
        f"{_params(b.params)} params. "
        + ", ".join(f"{label} {_num(b.metrics.get(c))}" for c, label in METRIC_COLUMNS if c in b.metrics)
        + ".",
        "",
        "The choice is the configuration with the best mean over its finished seeds, then its best seed.",
        "",
    ]
    if r.run_url(b.mlflow_run_id):
        lines += [f"MLflow run: {r.run_url(b.mlflow_run_id)}", ""]
    rec = r.recipe
    lines += [
        f"`ablate build {r.experiment}` will start from trial `{rec['trial']}` ({rec['reason']}) with this recipe:",
        "",
        "```yaml",
        yaml.safe_dump(rec, sort_keys=False, default_flow_style=False, allow_unicode=True).rstrip(),
        "```",
        "",
    ]
    return lines


def _compute_section(r: Report) -> list[str]:
    c = r.compute
    if not c:
        return []
    per_kind = ", ".join(f"{k} {n}" for k, n in c["stages"].items())
    lines = [
        "## Compute",
        "",
        f"The trials use {c['stages_total']} stages ({per_kind}) where running every trial on its own would "
        f"take {c['naive_stages']}. Trials (distillation + evaluation) ran for "
        f"{sum(t.duration_s or 0 for t in r.trials) / 60:.1f} min in all; shared stages (teacher, importance, "
        f"prune) recorded {c['stage_seconds'] / 60:.1f} min. Stages another experiment had already made were "
        "reused, not rerun.",
        "",
    ]
    if c["submissions"]:
        lines += ["Submissions, as each recorded itself:", ""]
        lines += [f"- {m}" for m in c["submissions"]]
    return lines


def _mlflow_section(r: Report) -> list[str]:
    from ablate.report.model import _redact

    lines = ["## MLflow", ""]
    if not r.mlflow_experiment_id:
        return lines + ["This experiment has no MLflow mirror recorded.", ""]
    local = not r.tracking_uri.startswith(("http://", "https://"))
    lines.append(f"Tracking store `{_redact(r.tracking_uri)}`, experiment id {r.mlflow_experiment_id}.")
    if local:
        lines.append(
            f"The links open in the MLflow UI that `ablate ui {r.experiment}` starts at {r.ui_base} "
            "(from the folder the experiment was submitted in)."
        )
    lines.append("")
    compare = r.compare_url()
    if compare:
        lines += [f"- [all trials in the run-comparison view]({compare})"]
    if r.mlflow_parent_run_id:
        lines += [f"- [experiment parent run]({r.run_url(r.mlflow_parent_run_id)})"]
    for t in r.trials:
        if t.mlflow_run_id:
            lines.append(f"- [`{t.key}`]({r.run_url(t.mlflow_run_id)}): {_cell(t.label)} ({t.status})")
    lines.append("")
    return lines


def render_markdown(report: Report) -> str:
    r = report
    lines = [f"# {r.experiment}: ablation report", ""]
    if r.description:
        lines += [r.description, ""]
    b = r.best_trial
    n_clear = sum(f.verdict == CLEAR for f in r.findings)
    best = next((t for t in r.trials if t.key == b.key), None)
    best_overrides = (
        Labels(r.trials).overrides(best)
        if best is not None
        else ", ".join(f"{k}={fmt_value(v)}" for k, v in b.overrides.items())
    )
    lines += [
        f"{len(r.finished)} of {len(r.trials)} trials finished. Best trial `{b.key}` "
        f"({_cell(best_overrides)}): "
        f"{r.metric} {_num(b.value)}. {len(r.findings)} paired comparison{'s' if len(r.findings) != 1 else ''}, "
        f"{n_clear} with a clear winner.",
        "",
        f"Generated by `ablate report {r.experiment} --metric {r.metric}` from the experiment's records; "
        "regenerating it on the same records gives the same files.",
        "",
    ]
    for section in (
        _spec_section,
        _trials_section,
        _benchmarks_section,
        _search_section,
        _findings_section,
        _align_section,
        _plots_section,
        _best_section,
        _compute_section,
        _mlflow_section,
    ):
        lines += section(r)
        if lines[-1] != "":
            lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"
