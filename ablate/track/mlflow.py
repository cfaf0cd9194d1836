"""The MLflow mirror of the records: one parent run per experiment, one nested child run per trial.

Written from the driver process only (docs/architecture.md: parallel writers lock an SQLite store). Runs are
found again by tag on every later submission, never created anew:

- parent: tags ``ablate.role=parent`` and ``ablate.experiment=<name>``;
- child: tags ``ablate.role=trial``, ``ablate.trial_key=<key>``, ``mlflow.parentRunId=<parent>`` (which is
  what nests it under the parent in the MLflow UI); its run name is what the sweep varied
  (ablate.track.mlflow_names), with a piece of the key added when another run under the parent has it;
- build: tags ``ablate.role=build``, ``ablate.recipe=<recipe id>``, nested the same way (``ablate build``).

The experiment is tagged ``mlflow.experimentKind=custom_model_development``, the kind MLflow 3's UI
gives experiments of model training (it opens those on their runs table, not the GenAI overview) where it
reads the tag; MLflow 3.17's UI takes a global switch instead, which the links ablate prints set
(ablate.track.urls.model_training_view).

All metric, param and tag writes go through ``MlflowClient.log_batch`` in chunks within MLflow's limits.

Several submissions may write to one store at once. What must happen once across processes (MLflow
creating its schema in a fresh store, finding or creating the parent and a child run) runs under
:func:`store_lock`: a file lock beside a SQLite store, a PostgreSQL advisory lock, or a file lock in the
local cache for other stores. A metric point (name, step) a run already has is never logged again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ablate.errors import RunError
from ablate.secrets import redact_text, redact_url
from ablate.track.urls import DEFAULT_MLFLOW

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_TRACKING_URI", "MlflowMirror", "mlflow_status"]

DEFAULT_TRACKING_URI = DEFAULT_MLFLOW
TAG_ROLE = "ablate.role"
TAG_EXPERIMENT = "ablate.experiment"
TAG_TRIAL_KEY = "ablate.trial_key"
TAG_PARENT = "mlflow.parentRunId"
TAG_RUN_NAME = "mlflow.runName"
TAG_RECIPE = "ablate.recipe"
# The experiment kind MLflow 3's UI reads (ExperimentKind in its frontend) to open an experiment on its
# runs table rather than the GenAI overview, where the UI's global GenAI / model-training switch is off.
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"

# MLflow's own batch limits (mlflow.utils.validation)
MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_TAGS_PER_BATCH = 100
MAX_PARAM_VAL_LENGTH = 6000
MAX_TAG_VAL_LENGTH = 8000

_STATUS = {
    "completed": "FINISHED",
    "failed": "FAILED",
    "cancelled": "KILLED",
    "running": "RUNNING",
    "pending": "SCHEDULED",
}


def mlflow_status(status: str) -> str:
    """An ablate trial status (or an MLflow status) as an MLflow run status."""
    s = _STATUS.get(status.lower(), status.upper())
    if s not in {"RUNNING", "SCHEDULED", "FINISHED", "FAILED", "KILLED"}:
        raise ValueError(f"unknown run status {status!r}")
    return s


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _str(value: Any, limit: int) -> str:
    s = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    s = redact_text(s)  # params and tags leave the process: no password of a URL or a spec goes with them
    if len(s) > limit:
        log.warning("MLflow value truncated to %d characters: %s...", limit, s[:60])
        s = s[: limit - 3] + "..."
    return s


def _chunks(items: Sequence[Any], n: int) -> Iterable[Sequence[Any]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


def _prepare_tracking_uri(uri: str) -> str:
    """Create the parent folder of a local SQLite store; make a relative SQLite path absolute."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        path = Path(uri[len("sqlite:///") :]).expanduser().resolve()
        uri = f"sqlite:///{path}"
    if uri.startswith("sqlite:////"):
        Path(uri[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    elif uri.startswith(("postgres://", "postgresql://")):
        uri = "postgresql+psycopg://" + uri.split("://", 1)[1]  # psycopg 3 is what ablate installs
    return uri


LOCK_TIMEOUT_S = 600.0  # MLflow's migrations of a fresh store take seconds; a stuck holder is reported


@contextmanager
def store_lock(tracking_uri: str) -> Iterator[None]:
    """Serialise, across processes, what must happen once per MLflow store (its schema, run creation)."""
    if tracking_uri.startswith("postgresql"):
        with _pg_advisory_lock(tracking_uri):
            yield
        return
    from filelock import FileLock, Timeout

    if tracking_uri.startswith("sqlite:////"):
        path = Path(tracking_uri[len("sqlite:///") :].split("?", 1)[0] + ".lock")
    else:  # a file store, a server: serialise at least the submissions of this machine
        digest = hashlib.sha256(tracking_uri.encode()).hexdigest()[:16]
        path = Path("~/.cache/ablate/locks").expanduser() / f"mlflow-{digest}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with FileLock(str(path), timeout=LOCK_TIMEOUT_S):
            yield
    except Timeout:
        raise RunError(
            f"waited {LOCK_TIMEOUT_S:.0f}s for {path}, held by another ablate process using the MLflow "
            "store; if none is running, delete that file"
        ) from None


@contextmanager
def _pg_advisory_lock(tracking_uri: str) -> Iterator[None]:
    """A session advisory lock keyed by database and schema, on a connection of its own."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    engine = create_engine(tracking_uri, poolclass=NullPool)
    key = "SELECT hashtextextended('ablate-mlflow:' || current_database() || ':' || coalesce(current_schema(), ''), 0)"
    try:
        with engine.connect() as conn:
            conn.execute(text(f"SELECT pg_advisory_lock(({key}))"))
            conn.commit()
            try:
                yield
            finally:
                conn.execute(text(f"SELECT pg_advisory_unlock(({key}))"))
                conn.commit()
    finally:
        engine.dispose()


class MlflowMirror:
    """Mirror one ablate experiment into MLflow at ``tracking_uri``.

    ``artifact_location`` defaults, for a local SQLite store, to ``mlartifacts/`` next to the database file
    (instead of MLflow's ``./mlruns`` in whatever folder the driver runs from).
    """

    def __init__(
        self,
        tracking_uri: str | None = DEFAULT_TRACKING_URI,
        experiment_name: str = "ablate",
        *,
        artifact_location: str | None = None,
    ) -> None:
        from mlflow.tracking import MlflowClient

        self.tracking_uri = _prepare_tracking_uri(tracking_uri or DEFAULT_TRACKING_URI)
        self.experiment_name = experiment_name
        if artifact_location is None and self.tracking_uri.startswith("sqlite:////"):
            artifact_location = (Path(self.tracking_uri[len("sqlite:///") :]).parent / "mlartifacts").as_uri()
        self.artifact_location = artifact_location
        try:
            with store_lock(self.tracking_uri):  # a fresh store: one process creates MLflow's schema
                self.client = MlflowClient(tracking_uri=self.tracking_uri)
                self.client._tracking_client.store  # noqa: B018 - opens the store (and migrates it) now
        except RunError:
            raise
        except Exception as e:
            raise RunError(
                f"cannot open the MLflow store {redact_url(self.tracking_uri)}: {redact_text(str(e))}; "
                "check tracking.mlflow"
            ) from None
        self._lock = threading.RLock()
        self._experiment_id: str | None = None
        self._parent_id: str | None = None
        self._children: dict[str, str] = {}
        self._logged: dict[str, set[tuple[str, int]]] = {}  # run id -> (metric, step) points it has

    def __repr__(self) -> str:
        return f"MlflowMirror({redact_url(self.tracking_uri)!r}, {self.experiment_name!r})"

    # ------------------------------------------------------------------ experiment and runs
    @property
    def experiment_id(self) -> str:
        """The MLflow experiment named like the ablate experiment (created, or restored, on first use)."""
        with self._lock:
            if self._experiment_id is None:
                with store_lock(self.tracking_uri):
                    self._experiment_id = self._get_or_create_experiment()
            return self._experiment_id

    def _get_or_create_experiment(self) -> str:
        from mlflow.exceptions import MlflowException

        exp = self.client.get_experiment_by_name(self.experiment_name)
        if exp is None:
            try:
                return self.client.create_experiment(
                    self.experiment_name,
                    artifact_location=self.artifact_location,
                    tags={TAG_EXPERIMENT: self.experiment_name, TAG_EXPERIMENT_KIND: EXPERIMENT_KIND},
                )
            except MlflowException:  # created concurrently
                exp = self.client.get_experiment_by_name(self.experiment_name)
                if exp is None:
                    raise
        if exp.lifecycle_stage == "deleted":
            self.client.restore_experiment(exp.experiment_id)
        if TAG_EXPERIMENT_KIND not in exp.tags:  # made before ablate set it; a kind chosen in the UI stays
            self.client.set_experiment_tag(exp.experiment_id, TAG_EXPERIMENT_KIND, EXPERIMENT_KIND)
        return exp.experiment_id

    def _search(self, filter_string: str, max_results: int = 1000) -> list[Any]:
        runs: list[Any] = []
        token = None
        while True:
            page = self.client.search_runs(
                [self.experiment_id],
                filter_string=filter_string,
                max_results=max_results,
                order_by=["attributes.start_time ASC"],
                page_token=token,
            )
            runs.extend(page)
            token = page.token
            if not token:
                return runs

    def parent_run(self) -> str:
        """The id of the experiment's parent run: found by tag, created only if there is none."""
        with self._lock:
            if self._parent_id is not None:
                return self._parent_id
            experiment_id = self.experiment_id
            with store_lock(self.tracking_uri):  # found or created by one submission at a time
                runs = self._search(
                    f"tags.`{TAG_ROLE}` = 'parent' and tags.`{TAG_EXPERIMENT}` = {_quote(self.experiment_name)}"
                )
                if runs:
                    if len(runs) > 1:
                        log.warning(
                            "%d parent runs for %s; using the oldest", len(runs), self.experiment_name
                        )
                    self._parent_id = runs[0].info.run_id
                else:
                    run = self.client.create_run(
                        experiment_id,
                        run_name=self.experiment_name,
                        tags={TAG_ROLE: "parent", TAG_EXPERIMENT: self.experiment_name},
                    )
                    self._parent_id = run.info.run_id
                    self._logged[self._parent_id] = set()
            return self._parent_id

    def _load_children(self) -> None:
        parent = self.parent_run()
        for run in self._search(f"tags.`{TAG_PARENT}` = {_quote(parent)} and tags.`{TAG_ROLE}` = 'trial'"):
            key = run.data.tags.get(TAG_TRIAL_KEY)
            if key and key not in self._children:
                self._children[key] = run.info.run_id

    def child_run(
        self,
        trial_key: str,
        params: Mapping[str, Any] | None = None,
        tags: Mapping[str, Any] | None = None,
        *,
        run_name: str | None = None,
        first_metrics: Sequence[tuple[str, int, float]] = (),
    ) -> str:
        """The id of the trial's run, nested under the parent; reused on re-runs.

        A new run is named ``run_name`` (default: the trial key), or ``run_name-<key prefix>`` when another
        run under the parent has that name, and gets ``first_metrics`` before anything else: MLflow keeps
        a run's metrics in the order they first came, and its compare view preselects the first one all
        runs share. ``params`` are logged once (MLflow params are immutable: a param already on the run
        is kept, a different value is reported and skipped); ``tags`` (e.g. stage hashes) are set every
        time.
        """
        with self._lock:
            if not self._children:
                self._load_children()
            run_id = self._children.get(trial_key)
            created = False
            if run_id is None:
                run_id, created = self._nested_run(
                    TAG_TRIAL_KEY, trial_key, "trial", run_name or trial_key, {TAG_TRIAL_KEY: trial_key}
                )
                self._children[trial_key] = run_id
        if created and first_metrics:
            self.log_step_metrics(run_id, first_metrics)
        self.add_params(run_id, params, f"trial {trial_key}", created)
        if tags:
            self.set_tags(run_id, tags)
        return run_id

    def build_run(
        self,
        recipe_id: str,
        run_name: str,
        params: Mapping[str, Any] | None = None,
        tags: Mapping[str, Any] | None = None,
    ) -> str:
        """The id of the run of ``ablate build``'s recipe ``recipe_id``, nested under the parent: found
        by tag (a second build of the recipe logs to the same run), else created."""
        with self._lock:
            run_id, created = self._nested_run(
                TAG_RECIPE, recipe_id, "build", run_name, {TAG_RECIPE: recipe_id}
            )
        self.add_params(run_id, params, f"build {recipe_id}", created)
        if tags:
            self.set_tags(run_id, tags)
        return run_id

    def _nested_run(
        self, key_tag: str, key: str, role: str, run_name: str, tags: Mapping[str, str]
    ) -> tuple[str, bool]:
        """(run id, created): the run under the parent whose ``key_tag`` is ``key``, or a new one named
        ``run_name`` (made unique under the parent with a piece of ``key``)."""
        parent = self.parent_run()
        with store_lock(self.tracking_uri):  # two submissions never create one trial's run twice
            found = self._search(
                f"tags.`{key_tag}` = {_quote(key)} and tags.`{TAG_PARENT}` = {_quote(parent)}"
            )
            if found:
                return found[0].info.run_id, False
            if run_name != key and self.client.search_runs(
                [self.experiment_id],
                filter_string=f"attributes.run_name = {_quote(run_name)} and tags.`{TAG_PARENT}` = {_quote(parent)}",
                max_results=1,
            ):
                run_name = f"{run_name}-{key[:6]}"
            run = self.client.create_run(
                self.experiment_id,
                run_name=run_name,
                tags={TAG_PARENT: parent, TAG_ROLE: role, TAG_EXPERIMENT: self.experiment_name, **tags},
            )
            self._logged[run.info.run_id] = set()
            return run.info.run_id, True

    def add_params(
        self, run_id: str, params: Mapping[str, Any] | None, what: str = "run", created: bool = False
    ) -> None:
        """Log the params the run does not have yet (MLflow's are immutable); one it has with another value
        is reported (naming ``what``) and kept. ``created``: the run is new, so it has none."""
        if not params:
            return
        existing = {} if created else dict(self.client.get_run(run_id).data.params)
        new = {}
        for k, v in params.items():
            sv = _str(v, MAX_PARAM_VAL_LENGTH)
            if k not in existing:
                new[k] = sv
            elif existing[k] != sv:
                log.warning("%s: param %s is %r in MLflow, not %r; kept", what, k, existing[k], sv)
        self.log_params(run_id, new)

    def children(self) -> dict[str, str]:
        """Trial key -> run id of every child run of the parent (searched afresh)."""
        with self._lock:
            self._children.clear()
            self._load_children()
            return dict(self._children)

    # ------------------------------------------------------------------ writes
    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        """Log params in batches (values stringified, JSON for non-strings)."""
        from mlflow.entities import Param

        items = [Param(str(k), _str(v, MAX_PARAM_VAL_LENGTH)) for k, v in params.items()]
        for chunk in _chunks(items, MAX_PARAMS_TAGS_PER_BATCH):
            self.client.log_batch(run_id, params=chunk, synchronous=True)

    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        """Set tags in batches (e.g. ``{"ablate.stage.prune": hash}``)."""
        from mlflow.entities import RunTag

        items = [RunTag(str(k), _str(v, MAX_TAG_VAL_LENGTH)) for k, v in tags.items()]
        for chunk in _chunks(items, MAX_PARAMS_TAGS_PER_BATCH):
            self.client.log_batch(run_id, tags=chunk, synchronous=True)

    def _points(self, run_id: str) -> set[tuple[str, int]]:
        """The (metric, step) points the run has: read from MLflow once, then kept up to date here."""
        with self._lock:
            points = self._logged.get(run_id)
            if points is None:
                points = set()
                for name in self.client.get_run(run_id).data.metrics:
                    points.update((name, m.step) for m in self.client.get_metric_history(run_id, name))
                self._logged[run_id] = points
            return points

    def log_step_metrics(self, run_id: str, rows: Iterable[Any]) -> int:
        """Log per-step values: ``(name, step, value)`` or ``(name, step, value, timestamp_ms)`` tuples, or
        mappings with those keys; one ``log_batch`` per 1000 values. A point (name, step) the run already
        has is skipped (a resumed trial reports steps again; a trial recorded again after its records were
        lost logs its curves again): MLflow appends, so it would show every such point twice. Returns the
        number logged."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        points = self._points(run_id)
        metrics = []
        for row in rows:
            if isinstance(row, Mapping):
                name, step, value, ts = row["name"], row["step"], row["value"], row.get("timestamp", now)
            elif len(row) == 4:
                name, step, value, ts = row
            else:
                (name, step, value), ts = row, now
            point = (str(name), int(step))
            with self._lock:
                if point in points:
                    continue
                points.add(point)
            metrics.append(Metric(point[0], float(value), int(ts), point[1]))
        for chunk in _chunks(metrics, MAX_METRICS_PER_BATCH):
            self.client.log_batch(run_id, metrics=chunk, synchronous=True)
        return len(metrics)

    def log_final_metrics(self, run_id: str, metrics: Mapping[str, float], *, step: int = 0) -> int:
        """Log the trial's final values (eval loss, perplexity, ...) at ``step`` in one batch.

        Non-finite values are logged as they are (MLflow stores NaN and infinities)."""
        rows = [(k, step, v) for k, v in metrics.items() if v is not None and not isinstance(v, bool)]
        skipped = [k for k, v in metrics.items() if v is None or isinstance(v, bool)]
        if skipped:
            log.debug("not logging non-numeric final metrics %s", skipped)
        return self.log_step_metrics(run_id, rows) if rows else 0

    def set_status(self, run_id: str, status: str) -> None:
        """Set a run's status without ending it (e.g. back to RUNNING when a trial is retried)."""
        self.client.update_run(run_id, status=mlflow_status(status))

    def set_terminated(self, run_id: str, status: str = "FINISHED") -> None:
        """End a run: ``status`` is an MLflow status or an ablate trial status (completed -> FINISHED,
        failed -> FAILED, cancelled -> KILLED)."""
        self.client.set_terminated(run_id, status=mlflow_status(status))

    def log_artifact(self, run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
        """Upload a file or a whole folder (e.g. the report) to the run's artifacts."""
        p = Path(path)
        if p.is_dir():
            self.client.log_artifacts(run_id, str(p), artifact_path)
        elif p.is_file():
            self.client.log_artifact(run_id, str(p), artifact_path)
        else:
            raise RunError(f"cannot log artifact {p}: no such file or folder")
