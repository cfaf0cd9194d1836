"""Which model `ablate build` makes: the experiment, the chosen trial, and the exact stages behind it.

A build starts from a spec file (its trials, tracking and build sections) or from an experiment name
(the trials are rebuilt from the configs the results database recorded for them, and their keys are
checked against the recorded ones, so the stage hashes are those the executor used). The recipe is the
chosen trial's stage chain, teacher -> importance -> prune -> distill -> eval, plus, when `build.tokens`
is larger than the trial's budget, a final distill stage that is the trial's with only `tokens`
changed (so it has its own hash and is itself reused by the next build) and its eval stage.

The best trial is, for now, the completed trial with the lowest final `lm_loss`; `choose_best` switches
to the report's choice (`ablate.report.build_report(...).best_trial`) once that module provides it.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ablate.errors import AblateError
from ablate.plan.stages import (
    ROUND,
    TEACHER_BENCHMARK,
    TOKENIZE,
    Stage,
    align_stages,
    benchmark_stage,
    trial_stages,
)
from ablate.spec.load import recorded_mapping
from ablate.spec.schema import TRIAL_SECTIONS, Build, Evaluation, Spec, Tracking
from ablate.spec.sweep import Trial, stable_hash
from ablate.spec.units import format_tokens, parse_tokens
from ablate.track.urls import DEFAULT_DB, absolute_sqlite, absolute_store, sqlite_missing

log = logging.getLogger(__name__)

METRIC = "lm_loss"
SEARCH = "search"  # build.trial: the winner a spec's search recorded
LINK_ORDER = ("importance", "prune", "distill")  # the stages of one round, in the order they run


class BuildError(AblateError):
    """The build cannot proceed (nothing finished to build, unknown trial, output folder in the way)."""


@dataclass
class Source:
    """Where the experiment's definition and records come from."""

    name: str
    spec_path: Path | None
    spec_text: str
    base_dir: str
    db_url: str
    artifacts: str
    build: Build
    mlflow: str = ""  # the experiment's MLflow store (tracking.mlflow), where the build is logged
    teacher_config_path: str | None = None
    trials: list[Trial] = field(default_factory=list)  # from the spec file (empty in name mode)

    def records(self, create: bool = False):
        """The results database, or None when it does not exist yet (and `create` is False)."""
        from ablate.track.db import connect

        if not create and sqlite_missing(self.db_url):
            return None
        return connect(self.db_url)


def open_source(name_or_spec: str, db: str | None = None, artifacts: str | None = None) -> Source:
    """A spec file path, or the name of an experiment in the results database (`db`)."""
    path = Path(name_or_spec)
    if path.is_file() or name_or_spec.endswith((".yaml", ".yml")):
        if not path.is_file():
            raise BuildError(f"spec file '{name_or_spec}' does not exist")
        from ablate.spec.validate import load_spec

        loaded = load_spec(path)
        spec = loaded.spec
        config_path = None
        if spec.teacher.config:
            from ablate.spec.validate import resolve_relative

            config_path = resolve_relative(path, spec.teacher.config)
        return Source(
            name=spec.name,
            spec_path=path,
            spec_text=path.read_text(),
            base_dir=str(path.parent.resolve()),
            db_url=absolute_sqlite(db or spec.tracking.db),
            artifacts=absolute_store(artifacts or spec.tracking.artifacts),
            build=spec.build,
            mlflow=absolute_sqlite(spec.tracking.mlflow),
            teacher_config_path=config_path,
            trials=list(loaded.trials),
        )
    db_url = absolute_sqlite(db or DEFAULT_DB)
    if sqlite_missing(db_url):
        raise BuildError(
            f"'{name_or_spec}' is neither a spec file nor an experiment in a results database: there is no "
            f"database at {db_url.removeprefix('sqlite:///')}; pass the spec file, or --db with the spec's tracking.db"
        )
    from ablate.track.db import connect

    records = connect(db_url)
    info = records.get_experiment(name_or_spec)
    if info is None:
        known = ", ".join(e.name for e in records.list_experiments()) or "none"
        raise BuildError(
            f"no experiment named '{name_or_spec}' in {records.redacted_url} (known: {known}); "
            "pass the spec file or the name `ablate status` shows"
        )
    raw = recorded_mapping(info.spec_text)
    tracking = _section(Tracking, raw.get("tracking"))
    build = _section(Build, raw.get("build"))
    return Source(
        name=info.name,
        spec_path=None,
        spec_text=info.spec_text,
        base_dir=str(Path.cwd()),
        db_url=db_url,
        artifacts=absolute_store(artifacts or tracking.artifacts),
        build=build,
        mlflow=absolute_sqlite(tracking.mlflow),
    )


def _section(model, value):
    try:
        return model.model_validate(value or {})
    except Exception:  # noqa: BLE001 - a recorded spec that no longer validates falls back to defaults
        return model()


def _targets_of(target: str, config: dict[str, Any]) -> dict[str, Any]:
    """The spec targets a recorded config implies: its own, and the ones it was pruned through (its
    `lineage`, named TARGET~0, TARGET~1, ...: keys leave names out, so any names rebuild the key)."""
    lineage = config.get("lineage") or [{"target": config["target"], "chain": False}]
    targets: dict[str, Any] = {}
    previous: str | None = None
    for i, link in enumerate(lineage):
        name = target if i == len(lineage) - 1 else f"{target}~{i}"
        targets[name] = {**link["target"], **({"from": previous, "chain": link["chain"]} if previous else {})}
        previous = name
    return targets


def trial_from_record(
    experiment: str,
    key: str,
    overrides: dict[str, Any],
    config: dict[str, Any],
    evaluation: dict[str, Any] | None = None,
) -> Trial:
    """The Trial a recorded trial config describes, checked to hash to the recorded key. `evaluation`: the
    recorded spec's `eval` section (its benchmarks; not part of a trial key), so a build by experiment
    name benchmarks the built model as a build from the spec file does."""
    target = str(overrides.get("target") or "target")
    data = {
        "name": experiment,
        **{k: config[k] for k in TRIAL_SECTIONS},
        "targets": _targets_of(target, config),
        **({"eval": evaluation} if evaluation else {}),
    }
    if config.get("align"):  # recorded as a list in order (sweep.resolved_config): the spec's mapping again
        align = config["align"]
        stages = {s["name"]: {k: v for k, v in s.items() if k != "name"} for s in align["stages"]}
        data["align"] = {"stages": stages, "chat_template": align.get("chat_template")}
    try:
        spec = Spec.model_validate(data)
    except Exception as exc:  # noqa: BLE001
        raise BuildError(
            f"trial {key}: its recorded config no longer validates ({exc}); build from the spec file"
        ) from exc
    trial = Trial(key, dict(overrides), target, int(config["seed"]), spec)
    if stable_hash(trial.resolved()) != key:
        raise BuildError(
            f"trial {key}: its recorded config hashes to another key (the spec schema changed since it ran); "
            "build from the spec file"
        )
    return trial


@dataclass
class Candidate:
    key: str
    status: str
    metrics: dict[str, float]
    trial: Trial | None


def candidates(source: Source, records) -> dict[str, Candidate]:
    """Every trial known to the spec or the records, with its recorded status and final metrics."""
    out: dict[str, Candidate] = {t.key: Candidate(t.key, "not run", {}, t) for t in source.trials}
    if records is None or records.get_experiment(source.name) is None:
        return out
    summary = {t.key: t for t in records.experiment_summary(source.name).trials}
    evaluation = recorded_mapping(source.spec_text).get("eval") if source.spec_text else None
    try:
        Evaluation.model_validate(evaluation or {})
    except ValueError:  # a section this version no longer reads: the build then runs no benchmark
        evaluation = None
    for info in records.trials(source.name):
        s = summary.get(info.key)
        status, metrics = (s.status, dict(s.final_metrics)) if s else (info.status, {})
        trial = out[info.key].trial if info.key in out else None
        if trial is None and info.config:
            try:
                trial = trial_from_record(source.name, info.key, info.overrides, info.config, evaluation)
            except BuildError as exc:  # an old trial: only an error if it is the one chosen
                log.warning("%s", exc)
        out[info.key] = Candidate(info.key, status, metrics, trial)
    return out


def search_choice(records, experiment: str, pool: dict[str, Candidate]) -> tuple[str, str]:
    """(trial key, why) for `build.trial: search`: the search's recorded winner, as its first completed
    retraining trial (seeds in the spec's order; picking the luckiest seed would flatter it)."""
    rows = records.search_candidates(experiment) if records is not None else []
    won = next((r for r in rows if r.winner), None)
    if won is None:
        raise BuildError(
            f"build.trial is 'search' but experiment '{experiment}' has no search winner recorded; run "
            "`ablate submit SPEC` with its search section first"
        )
    done = [k for k in won.trial_keys if k in pool and pool[k].status == "completed"]
    if not done:
        raise BuildError(f"the search's winner {won.name} has no completed trial (trials: {won.trial_keys})")
    return done[0], f"the search's winner {won.name} ({won.params:,} parameters; one-shot rank {won.rank})"


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def choose_best(
    records, experiment: str, pool: dict[str, Candidate], metric: str = METRIC
) -> tuple[str, str]:
    """(trial key, why): the report's best trial when ablate.report provides one, else the completed
    trial with the lowest final `metric`."""
    report_choice = _report_choice(records, experiment, metric)
    if report_choice is not None and report_choice in pool and pool[report_choice].status == "completed":
        return report_choice, f"best trial of the report (`ablate report {experiment}`)"
    done = [c for c in pool.values() if c.status == "completed" and _finite(c.metrics.get(metric))]
    if not done:
        statuses = ", ".join(f"{c.key} {c.status}" for c in pool.values()) or "no trials recorded"
        raise BuildError(
            f"experiment '{experiment}' has no finished trial with a final {metric} ({statuses}); "
            "run `ablate submit SPEC` first, or see what the build would do with --dry-run"
        )
    best = min(done, key=lambda c: (c.metrics[metric], c.key))
    return best.key, f"lowest final {metric} ({best.metrics[metric]:.4f}) of {len(done)} completed trial(s)"


def _report_choice(records, experiment: str, metric: str) -> str | None:
    """The report's best trial; None without records, without the report module, or when the report
    cannot be made (then the fallback rule decides, and explains an empty experiment itself)."""
    if records is None:
        return None
    try:
        from ablate.report import build_report  # type: ignore[attr-defined]
    except ImportError:
        return None
    try:
        report = build_report(records, experiment, metric)
    except AblateError as exc:
        log.info("no best trial from the report: %s", exc)
        return None
    best = getattr(report, "best_trial", None)
    if best is None:
        return None
    return best if isinstance(best, str) else getattr(best, "key", None)


@dataclass
class Recipe:
    """The chosen trial and the stages that make the final model."""

    source: Source
    trial: Trial
    chosen_by: str
    status: str
    trial_metrics: dict[str, float]
    stages: dict[str, Stage]  # the trial's own chain
    final_distill: Stage
    final_eval: Stage
    trial_tokens: int
    tokens: int  # of the final distillation
    formats: list[str]
    pool: dict[str, Candidate] = field(default_factory=dict)
    benchmarks: list[Stage] = field(default_factory=list)  # the final model's and the teacher's (eval.tasks)
    align: list[Stage] = field(default_factory=list)  # the alignment stages after the final distill (align)

    @property
    def final_model(self) -> Stage:
        """The stage whose model is built: the last alignment stage, else the final distill."""
        return self.align[-1] if self.align else self.final_distill

    @property
    def extra_distill(self) -> bool:
        return self.final_distill.hash != self.stages["distill"].hash

    @property
    def id(self) -> str:
        """Identity of what the build produces: the final distill and eval stages."""
        return stable_hash(
            [self.final_distill.hash, self.final_eval.hash, *(s.hash for s in [*self.align, *self.benchmarks])], 16
        )

    @property
    def chain(self) -> list[Stage]:
        """Every stage the final model needs, in the order they run: the trial's tokenize, teacher,
        importance and prune stages, then the final distill and eval (the trial's own when no longer
        run was asked for)."""
        rounds = sorted(
            ((k, s) for k, s in self.stages.items() if k.startswith(ROUND)),
            key=lambda item: (int(item[0][len(ROUND) :].split(":")[0]), LINK_ORDER.index(item[1].kind)),
        )
        return [
            *(s for k, s in sorted(self.stages.items()) if k.startswith(TOKENIZE)),
            self.stages["teacher"],
            *(s for _, s in rounds),  # the targets it is pruned through first (rounds and chains)
            self.stages["importance"],
            self.stages["prune"],
            self.final_distill,
            self.final_eval,
            *self.align,
            *self.benchmarks,
        ]

    def parents(self, stage: Stage) -> dict[str, Stage]:
        by_hash = {
            s.hash: s
            for s in [*self.stages.values(), self.final_distill, self.final_eval, *self.align, *self.benchmarks]
        }
        return {by_hash[h].kind: by_hash[h] for h in stage.parents}

    def default_out(self) -> Path:
        return Path("builds") / self.source.name / f"{self.trial.key}-{format_tokens(self.tokens)}"

    def describe(self) -> dict[str, Any]:
        return {
            "experiment": self.source.name,
            "trial": self.trial.key,
            "chosen_by": self.chosen_by,
            "overrides": self.trial.overrides,
            "target": {self.trial.target: self.trial.shape},
            "trial_tokens": self.trial_tokens,
            "tokens": self.tokens,
            "extra_distill": self.extra_distill,
            "recipe_id": self.id,
            "stages": [{"kind": s.kind, "hash": s.hash, "parents": list(s.parents)} for s in self.chain],
        }


def resolve(
    source: Source,
    trial: str | None = None,
    tokens: str | int | None = None,
    dry_run: bool = False,
) -> Recipe:
    """The recipe to build: trial `trial` (a key, 'best', or 'search' for the search's winner; default
    the spec's build.trial)."""
    records = source.records()
    pool = candidates(source, records)
    wanted = trial or source.build.trial
    if wanted == "best":
        try:
            key, why = choose_best(records, source.name, pool)
        except BuildError:
            if not dry_run or not pool:
                raise
            key = next(iter(pool))
            why = (
                f"no finished trial yet: the recipe of trial {key} is shown (of {len(pool)}); the real build "
                "uses the best completed one"
            )
    elif wanted == SEARCH:
        key, why = search_choice(records, source.name, pool)
    else:
        if wanted not in pool:
            known = ", ".join(pool) or "none"
            raise BuildError(
                f"unknown trial '{wanted}' in experiment '{source.name}' (known trials: {known})"
            )
        key, why = wanted, "named with --trial"
        if pool[wanted].status != "completed" and not dry_run:
            raise BuildError(
                f"trial {wanted} has not finished (status: {pool[wanted].status}); run `ablate submit SPEC` "
                "first, or see the plan with --dry-run"
            )
    chosen = pool[key]
    if chosen.trial is None:
        raise BuildError(f"trial {key} has no recorded config; build from the spec file")
    stages = trial_stages(chosen.trial, str(source.spec_path.parent) if source.spec_path else None)
    trial_tokens = int(stages["distill"].config["distill"]["tokens"])
    wanted_tokens = tokens if tokens is not None else source.build.tokens
    if wanted_tokens is None:
        final_tokens = trial_tokens
    else:
        try:
            final_tokens = parse_tokens(wanted_tokens)
        except ValueError as exc:
            raise BuildError(f"--tokens: {exc}") from exc
    final_distill, final_eval = stages["distill"], stages["eval"]
    if final_tokens > trial_tokens:
        config = dict(stages["distill"].config)
        config["distill"] = {**config["distill"], "tokens": final_tokens}
        final_distill = Stage("distill", config, stages["distill"].parents)
        final_eval = Stage("eval", dict(stages["eval"].config), (final_distill.hash, stages["teacher"].hash))
    else:
        final_tokens = trial_tokens
    base_dir = str(source.spec_path.parent) if source.spec_path else None
    # the trial's alignment stages, after the final distill (the trial's own when no longer run was asked)
    align = align_stages(chosen.trial.resolved(), final_distill, chosen.trial.seed, base_dir)
    final_model, role = (align[-1], "aligned") if align else (final_distill, "student")
    benchmarks = [
        stage
        for task in chosen.trial.spec.eval.tasks
        for stage in (
            stages[TEACHER_BENCHMARK + task],
            benchmark_stage(chosen.trial.spec, task, final_model, role, base_dir),
        )
    ]
    return Recipe(
        source=source,
        benchmarks=benchmarks,
        align=align,
        trial=chosen.trial,
        chosen_by=why,
        status=chosen.status,
        trial_metrics=chosen.metrics,
        stages=stages,
        final_distill=final_distill,
        final_eval=final_eval,
        trial_tokens=trial_tokens,
        tokens=final_tokens,
        formats=list(source.build.formats),
        pool=pool,
    )
