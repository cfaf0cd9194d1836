"""From an experiment's records to a :class:`~ablate.report.model.Report`: trials, findings, best trial and
the recipe ``ablate build`` will use. Plain data, no files written (``markdown.py`` renders it)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import fields
from typing import Any

import numpy as np

from ablate.jsonable import jsonable
from ablate.report.align import align_of
from ablate.report.benchmarks import benchmarks_of
from ablate.report.findings import MIN_PAIRS, findings_for
from ablate.report.metrics import metric_info
from ablate.report.model import BestTrial, Report, ReportError, TrialRow, canon, finished
from ablate.report.practices import PRACTICES
from ablate.report.references import references_for
from ablate.report.search import search_of
from ablate.spec.load import recorded_mapping
from ablate.track.urls import DEFAULT_MLFLOW

DEFAULT_METRIC = "lm_loss"


def _get(d: Any, path: str, default: Any = None) -> Any:
    for part in path.split("."):
        if not isinstance(d, dict) or part not in d:
            return default
        d = d[part]
    return d


class _Params:
    """Parameter counts of target shapes (meta device; cached), from the teacher's architecture config."""

    def __init__(self, teacher_ref: str | None, config_path: str | None):
        self.config = None
        self.cache: dict[str, int | None] = {}
        if teacher_ref is None:
            return
        try:
            from ablate.models.registry import load_config

            self.config = load_config(teacher_ref, config_path)
        except Exception:  # planning data is optional for a report
            if config_path is not None:
                try:
                    from ablate.models.registry import load_config

                    self.config = load_config(teacher_ref)
                except Exception:
                    self.config = None

    @property
    def teacher_layers(self) -> int | None:
        return None if self.config is None else int(self.config.num_hidden_layers)

    def teacher(self) -> int | None:
        return self.count({})

    def count(self, shape: Mapping[str, int]) -> int | None:
        if self.config is None:
            return None
        key = canon(dict(shape))
        if key not in self.cache:
            try:
                from ablate.models.arch import count_parameters, pruned_config

                cfg = pruned_config(self.config, shape) if shape else self.config
                self.cache[key] = int(count_parameters(cfg))
            except Exception:
                self.cache[key] = None
        return self.cache[key]


def _series(records: Any, trial_id: int, metric: str) -> dict[str, list[float]]:
    """Per-step values of one trial: the training objective, tokens, and every held-out ``eval_*`` point
    (step 0: before the first optimizer step, see :mod:`ablate.report.references`)."""
    rows = records.trial_metrics(trial_id, final=False)
    by: dict[str, dict[int, float]] = {}
    for r in rows:
        if r.name in ("loss", "tokens") or r.name.startswith("eval_"):
            by.setdefault(r.name, {})[int(r.step)] = float(r.value)
    evals = sorted(n for n in by if n.startswith("eval_"))
    steps = sorted(set(by.get("loss", {})).union(*(by[n] for n in evals)))
    if not steps:
        return {}
    tokens = by.get("tokens", {})
    out = {
        "step": [float(s) for s in steps],
        "tokens": [tokens.get(s, 0.0 if s == 0 else math.nan) for s in steps],
        "loss": [by.get("loss", {}).get(s, math.nan) for s in steps],
    }
    for name in evals:
        out[name] = [by[name].get(s, math.nan) for s in steps]
    return out


def _shape(config: Mapping[str, Any] | None) -> dict[str, int] | None:
    """A trial's pruned axes: its target's, over those of the targets it was pruned through (lineage)."""
    if not config or not isinstance(config.get("target"), dict):
        return None
    shape: dict[str, int] = {}
    for link in config.get("lineage") or []:
        shape.update(link.get("target") or {})
    return {**shape, **config["target"]}


def _axis_order(spec: Mapping[str, Any], trials: Sequence[Any]) -> list[str]:
    """Override keys in the spec's order: target (when not in the grid), the grid's axes as written, any
    others sorted, seed last. (PostgreSQL's JSONB does not keep key order, so the records cannot say.)"""
    grid = _get(spec, "sweep.grid")
    written = [str(k) for k in grid] if isinstance(grid, dict) else []
    present = sorted({k for t in trials for k in t.overrides})
    order = ([] if "target" in written else ["target"]) + written
    order += [k for k in present if k not in order and k != "seed"]
    return [*order, "seed"]


def _best(trials: Sequence[TrialRow], metric: str, higher: bool) -> BestTrial:
    """Best configuration by the mean over its finished seeds; within it, its best trial."""
    groups: dict[str, list[TrialRow]] = {}
    for t in trials:
        if finished(t, metric):
            ctx = dict(t.config) if t.config is not None else dict(t.overrides)
            ctx.pop("seed", None)
            groups.setdefault(canon(ctx), []).append(t)
    sign = -1.0 if higher else 1.0
    best_group = min(
        groups.values(), key=lambda g: (sign * float(np.mean([t.metrics[metric] for t in g])), g[0].key)
    )
    best = min(best_group, key=lambda t: (sign * t.metrics[metric], t.key))
    row = {f.name: getattr(best, f.name) for f in fields(TrialRow)}
    return BestTrial(
        **row | {"config": None if best.config is None else json.loads(canon(best.config))},
        metric=metric,
        value=best.metrics[metric],
        group_mean=float(np.mean([t.metrics[metric] for t in best_group])),
        seeds=len(best_group),
    )


def _recipe(
    spec: Mapping[str, Any], best: BestTrial, trials: Sequence[TrialRow], metric: str
) -> dict[str, Any]:
    build = spec.get("build") if isinstance(spec.get("build"), dict) else {}
    choice = str(build.get("trial", "best"))
    chosen: TrialRow | None = None
    if choice != "best":
        chosen = next((t for t in trials if t.key == choice), None)
    if chosen is not None:
        key, config, reason = chosen.key, chosen.config, f"build.trial = {choice} in the spec"
        status = chosen.status
    else:
        key, config = best.key, best.config
        reason = f"best {metric} (mean over seeds of its configuration)"
        status = "completed"
        if choice != "best":
            reason += f"; build.trial {choice!r} names no trial of this experiment"
    config = json.loads(canon(config)) if config is not None else {}
    distill = dict(config.get("distill") or {})
    tokens = build.get("tokens")
    if tokens is not None:
        from ablate.spec.units import parse_tokens

        try:
            distill["tokens"] = int(parse_tokens(tokens))
        except Exception:
            distill["tokens"] = tokens
    return jsonable(
        {
            "trial": key,
            "reason": reason,
            "trial_status": status,
            "teacher": config.get("teacher"),
            "target": config.get("target"),
            "importance": config.get("importance"),
            "calibration": config.get("calibration"),
            "data": config.get("data"),
            "distill": distill,
            "seed": config.get("seed"),
            "formats": list(build.get("formats") or ["hf"]),
        }
    )


def build_report(
    records: Any,
    name: str,
    metric: str | None = None,
    *,
    higher: bool | None = None,
    margin: float | None = None,
    ui_base: str | None = None,
) -> Report:
    """Compute the report of experiment ``name`` from ``records`` (an :class:`ablate.track.db.Records`).

    ``metric`` is the final metric every comparison and the best-trial choice use (default: the spec's
    ``report.metric``, else lm_loss). Its direction and margin come from the table of known metrics
    (:mod:`ablate.report.metrics`), overridden by the spec's ``report.higher_is_better`` / ``report.margin``
    when it names the same metric, and by ``higher`` / ``margin``; an unknown metric must be declared.
    ``ui_base`` is the MLflow UI address used for run links (default: the ``tracking.mlflow`` server if it
    is one, else ``http://127.0.0.1:5000``, where ``ablate ui`` serves a local store).

    Raises :class:`ReportError` (exit 2 in the CLI) when the experiment does not exist, has no completed
    trial with a value of ``metric``, or nobody logged ``metric``.
    """
    from ablate.track.db import UnknownExperiment

    exp = records.get_experiment(name)
    if exp is None:
        try:
            records.experiment_summary(name)  # raises with the list of known names
        except UnknownExperiment as e:
            raise ReportError(str(e)) from None
        raise ReportError(f"no experiment named {name!r} in the records")
    summary = records.experiment_summary(name)
    infos = {t.key: t for t in records.trials(name)}
    spec = recorded_mapping(exp.spec_text)
    declared = spec.get("report") if isinstance(spec.get("report"), dict) else {}
    metric = metric or str(declared.get("metric") or DEFAULT_METRIC)
    if declared.get("metric", DEFAULT_METRIC) == metric:
        higher = declared.get("higher_is_better") if higher is None else higher
        margin = declared.get("margin") if margin is None else margin

    logged = sorted({m for t in summary.trials for m in t.final_metrics})
    completed = [t for t in summary.trials if t.status == "completed"]
    if not completed:
        counts = ", ".join(f"{k} {v}" for k, v in summary.counts.items() if v) or "no trials"
        raise ReportError(
            f"experiment {name!r} has no finished trials yet ({counts}); run `ablate submit` on its spec "
            f"and see `ablate status {name}`"
        )
    if metric not in logged:
        raise ReportError(
            f"no trial of {name!r} logged the metric {metric!r}; logged final metrics: "
            f"{', '.join(logged) or 'none'} (pass one of them with --metric)"
        )
    if not any(
        t.final_metrics.get(metric) is not None and math.isfinite(t.final_metrics[metric]) for t in completed
    ):
        raise ReportError(
            f"experiment {name!r} has no completed trial with a finite value of {metric!r}; "
            "see `ablate status " + name + "`"
        )

    first_config = next((i.config for i in infos.values() if i.config), None) or {}
    teacher_ref = _get(first_config, "teacher.model") or _get(spec, "teacher.model")
    params = _Params(teacher_ref, _get(spec, "teacher.config"))

    axis_order = _axis_order(spec, summary.trials)
    rows: list[TrialRow] = []
    series: dict[str, dict[str, list[float]]] = {}
    for t in summary.trials:
        info = infos.get(t.key)
        config = info.config if info is not None else None
        shape = _shape(config)
        s = _series(records, info.id, metric) if info is not None else {}
        if s:
            series[t.key] = s
        done_tokens = [v for v in s.get("tokens", []) if math.isfinite(v)]
        tokens = int(done_tokens[-1]) if done_tokens else _get(config, "distill.tokens")
        rows.append(
            TrialRow(
                id=info.id if info is not None else -1,
                key=t.key,
                status=t.status,
                overrides={k: t.overrides[k] for k in sorted(t.overrides, key=axis_order.index)},
                config=config,
                metrics=dict(sorted(t.final_metrics.items())),
                error=t.error,
                duration_s=t.duration_s,
                mlflow_run_id=t.mlflow_run_id,
                params=params.count(shape) if shape is not None else None,
                tokens=int(tokens) if isinstance(tokens, int | float) else None,
                shape=shape,
            )
        )

    info = metric_info(metric, higher, margin)
    references, recovered = references_for(rows, series, params.teacher(), metric)
    findings = findings_for(
        rows, metric, teacher_layers=params.teacher_layers, higher=info.higher_is_better, margin=margin
    )
    best = _best(rows, metric, info.higher_is_better)
    tested = {f.practice for f in findings if f.practice}
    tracking_uri = str(_get(spec, "tracking.mlflow") or DEFAULT_MLFLOW)
    if ui_base is None:
        ui_base = (
            tracking_uri.rstrip("/")
            if tracking_uri.startswith(("http://", "https://"))
            else ("http://127.0.0.1:5000")
        )
    return Report(
        experiment=name,
        description=str(spec.get("description") or ""),
        spec_text=exp.spec_text,
        spec_hash=exp.spec_hash,
        spec=spec,
        metric=metric,
        higher_is_better=info.higher_is_better,
        trials=rows,
        findings=findings,
        best_trial=best,
        recipe=_recipe(spec, best, rows, metric),
        teacher={
            "model": teacher_ref,
            "params": params.teacher(),
            "layers": params.teacher_layers,
        },
        tracking_uri=tracking_uri,
        mlflow_experiment_id=exp.mlflow_experiment_id,
        mlflow_parent_run_id=exp.mlflow_run_id,
        ui_base=ui_base,
        series=series,
        untested=[p for p in PRACTICES if p.startswith("BP") and p not in tested],
        counts={k: v for k, v in summary.counts.items()},
        compute=_compute(records, name, [i.id for i in infos.values()]),
        margin=info.margin,
        family_size=sum(1 for f in findings if f.n >= MIN_PAIRS),
        benchmarks=benchmarks_of(records, {key: i.id for key, i in infos.items()}),
        search=search_of(records, name, rows, _get(spec, "search")),
        align=align_of(spec, rows, metric),
        references=references,
        recovered=recovered,
    )


def _compute(records: Any, name: str, trial_ids: Sequence[int]) -> dict[str, Any]:
    """Stages the experiment's trials use and the time recorded on them (from the records alone); the naive
    count is each trial's stages as if it ran all of them itself."""
    stages = records.stages(name)
    kinds: dict[str, int] = {}
    seconds = 0.0
    for st in stages:
        kinds[st.kind] = kinds.get(st.kind, 0) + 1
        if (
            st.kind in ("teacher", "importance", "prune")
            and st.status == "completed"
            and st.started_at
            and st.finished_at
        ):
            seconds += (st.finished_at - st.started_at).total_seconds()
    submissions = [
        e.message
        for e in records.events(name, min_level="info", limit=200)
        if e.message.startswith("submission finished")
    ]
    return {
        "stages": kinds,
        "stages_total": len(stages),
        "naive_stages": sum(len(records.trial_stages(i)) for i in trial_ids),
        "stage_seconds": round(seconds, 1),
        "submissions": submissions,
    }
