"""The report's alignment section: every trial after each alignment stage (the held-out metrics that stage
is judged by, and what it cost), and for each swept axis whether the base ranking (the report's metric,
after distillation) survives each stage, as paired findings on that stage's metric.

Mistral-NeMo-Minitron's instruct model is its base after two SFT and two preference stages; the question
an ablation asks here is whether the better base (width vs depth, kld vs ce) is still the better model
once aligned, and what each stage buys.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from ablate.report.findings import findings_for
from ablate.report.model import TrialRow

# The metric each kind of stage is judged by after it (the first is its finding's), in the order shown.
STAGE_METRICS = {"sft": ("instruct_loss",), "dpo": ("pref_margin", "pref_win_rate")}
STAGE_METRICS["ipo"] = STAGE_METRICS["dpo"]
ALIGNED = "aligned/"  # the aligned model's benchmark metrics: aligned/TASK/METRIC


def align_of(spec: Mapping[str, Any], trials: Sequence[TrialRow], base_metric: str) -> dict[str, Any]:
    """The alignment as the report shows it (empty without an align section): its stages in order, each
    trial's values after each stage, and the paired findings of each stage's metric next to the base's."""
    section = spec.get("align") if isinstance(spec, Mapping) else None
    if not isinstance(section, Mapping) or not section.get("stages"):
        return {}
    stages = [{"name": name, "method": s.get("method")} for name, s in section["stages"].items()]
    finished = [t for t in trials if t.status == "completed"]
    rows = []
    for t in finished:
        row: dict[str, Any] = {"key": t.key, "label": t.label, base_metric: t.metrics.get(base_metric)}
        for s in stages:
            for m in (*STAGE_METRICS.get(s["method"], ()), "train_seconds", "train_tokens", "train_flops"):
                row[f"{s['name']}/{m}"] = t.metrics.get(f"{s['name']}/{m}")
            first = STAGE_METRICS.get(s["method"], ("",))[0]
            row[f"{s['name']}/before/{first}"] = t.metrics.get(f"{s['name']}/before/{first}")
        rows.append(row)
    # the aligned model's benchmarks (eval.tasks: aligned/TASK/METRIC) beside the distilled student's (TASK/METRIC)
    benchmarks = sorted({m for t in finished for m in t.metrics if m.startswith(ALIGNED) and "_stderr" not in m})
    for row, t in zip(rows, finished, strict=True):
        for m in benchmarks:
            row[m], row[m[len(ALIGNED) :]] = t.metrics.get(m), t.metrics.get(m[len(ALIGNED) :])
    metrics = [base_metric] + [f"{s['name']}/{STAGE_METRICS[s['method']][0]}" for s in stages] + benchmarks
    survival: list[dict[str, Any]] = []
    by_metric = {m: _findings(finished, m) for m in metrics}
    for f in by_metric[base_metric]:
        if f.scope != "all pairs":
            continue
        entry = {"axis": f.axis, "a": f.a, "b": f.b, "by_metric": []}
        for m in metrics:
            match = next(
                (g for g in by_metric[m] if (g.axis, g.a, g.b, g.scope) == (f.axis, f.a, f.b, f.scope)), None
            )
            if match is not None:
                entry["by_metric"].append(
                    {
                        "metric": m,
                        "n": match.n,
                        "mean_diff": match.mean_diff,
                        "p_adjusted": match.p_adjusted,
                        "verdict": match.verdict,
                        # within the tie margin: no leader (the survival question is about who leads)
                        "leader": match.leader if abs(match.mean_diff) > match.margin else None,
                        "wins_a": match.wins_a,
                        "wins_b": match.wins_b,
                    }
                )
        leaders = [e["leader"] for e in entry["by_metric"]]
        entry["survives"] = (
            None if None in leaders or len(leaders) < len(metrics) else len(set(map(str, leaders))) == 1
        )
        survival.append(entry)
    return {"stages": stages, "rows": rows, "metrics": metrics, "benchmarks": benchmarks, "survival": survival}


def _findings(trials: Sequence[TrialRow], metric: str) -> list[Any]:
    with_metric = [t for t in trials if not math.isnan(t.metrics.get(metric, math.nan))]
    return findings_for(with_metric, metric) if len(with_metric) >= 2 else []


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float) and abs(value) >= 1e5:
        return f"{value:.2e}"
    return f"{value:.{digits}g}" if isinstance(value, float) else str(value)


def align_section(align: Mapping[str, Any], labels: Mapping[str, str]) -> list[str]:
    """## Alignment: the per-trial table after each stage, what each stage cost, and the survival table."""
    if not align:
        return []
    stages, metrics = align["stages"], align["metrics"]
    chain = " -> ".join(f"{s['name']} ({s['method']})" for s in stages)
    lines = [
        "## Alignment",
        "",
        f"After distillation every trial's student went through {chain}. Each stage is judged on records no "
        "stage trained on: `instruct_loss` (mean negative log-likelihood per token of the assistant's held-out "
        "answers; lower is better), `pref_margin` (mean log p(chosen) - log p(rejected) over held-out pairs) and "
        "`pref_win_rate` (share of those pairs where the chosen answer is the likelier; higher is better).",
        "",
    ]
    head = ["trial", metrics[0]]
    for s in stages:
        first = STAGE_METRICS[s["method"]][0]
        head += [f"{s['name']}: {first} before", *(f"{s['name']}: {m}" for m in STAGE_METRICS[s["method"]])]
        head.append(f"{s['name']}: seconds")
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in align["rows"]:
        cells = [labels.get(row["key"], row["key"]), _fmt(row[metrics[0]])]
        for s in stages:
            first = STAGE_METRICS[s["method"]][0]
            cells.append(_fmt(row.get(f"{s['name']}/before/{first}")))
            cells += [_fmt(row.get(f"{s['name']}/{m}")) for m in STAGE_METRICS[s["method"]]]
            cells.append(_fmt(row.get(f"{s['name']}/train_seconds"), 3))
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Compute per stage (mean over trials):", ""]
    lines += [
        "| stage | method | seconds | training tokens | FLOPs (6N per token, 8N with a reference) |",
        "|---|---|---|---|---|",
    ]
    for s in stages:
        cols = [
            _mean([r.get(f"{s['name']}/train_{k}") for r in align["rows"]])
            for k in ("seconds", "tokens", "flops")
        ]
        lines.append(
            f"| {s['name']} | {s['method']} | {_fmt(cols[0], 3)} | {_fmt(cols[1], 3)} | {_fmt(cols[2], 3)} |"
        )
    if align.get("benchmarks"):
        names = align["benchmarks"]
        lines += ["", "Benchmarks (`eval.tasks`) of each trial's distilled student and of its aligned model:", ""]
        head = ["trial", *(f"{m[len(ALIGNED) :]} distilled | {m[len(ALIGNED) :]} aligned" for m in names)]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * (1 + 2 * len(names))]
        for row in align["rows"]:
            cells = [labels.get(row["key"], row["key"])]
            cells += [f"{_fmt(row.get(m[len(ALIGNED) :]))} | {_fmt(row.get(m))}" for m in names]
            lines.append("| " + " | ".join(cells) + " |")
    if align["survival"]:
        lines += [
            "",
            "Does the base ranking survive alignment? Each swept axis's paired comparison (A - B, Holm-adjusted "
            "within each metric's comparisons) on the base metric and on each stage's metric:",
            "",
            "| comparison | " + " | ".join(metrics) + " | survives |",
            "|---|" + "---|" * (len(metrics) + 1),
        ]
        for entry in align["survival"]:
            cells = [f"{entry['axis']}: {entry['a']} vs {entry['b']}"]
            for m in metrics:
                e = next((x for x in entry["by_metric"] if x["metric"] == m), None)
                cells.append(_cell(e))
            survives = {True: "yes", False: "**no**", None: "-"}[entry["survives"]]
            lines.append("| " + " | ".join(cells) + f" | {survives} |")
        lines += [
            "",
            '"survives": the same value leads on every metric (a leader within the metric\'s tie margin counts '
            "as none). With fewer than 3 pairs a comparison has no verdict; its leader is still shown.",
        ]
    return lines


def _cell(e: Mapping[str, Any] | None) -> str:
    if e is None:
        return "-"
    leader = "tie" if e["leader"] is None else f"{e['leader']} ahead"
    p = "" if math.isnan(e["p_adjusted"]) else f", p {e['p_adjusted']:.2g}"
    return (
        f"{leader} ({e['wins_a']}-{e['wins_b']} of {e['n']}, mean {e['mean_diff']:+.3g}{p}; {e['verdict']})"
    )


def _mean(values: Sequence[Any]) -> float | None:
    got = [v for v in values if v is not None and not math.isnan(v)]
    return sum(got) / len(got) if got else None
