"""Where a spec's tracking settings point: the default locations (the schema's, written once) and the
absolute forms every process uses (a relative `sqlite:///x.db` or artifact folder is relative to where
`ablate` runs; it is pinned before Ray workers change directories)."""

from __future__ import annotations

from pathlib import Path

from ablate.spec.schema import Tracking

_DEFAULTS = Tracking()
DEFAULT_DB: str = _DEFAULTS.db
DEFAULT_MLFLOW: str = _DEFAULTS.mlflow
DEFAULT_ARTIFACTS: str = _DEFAULTS.artifacts
_SQLITE = "sqlite:///"


def absolute_store(path_or_url: str) -> str:
    """An artifact store location: URLs as they are, local paths made absolute."""
    return path_or_url if "://" in path_or_url else str(Path(path_or_url).expanduser().resolve())


def absolute_sqlite(url: str) -> str:
    """`sqlite:///relative.db` pinned to an absolute path; any other URL as it is."""
    if url.startswith(_SQLITE) and not url.startswith(_SQLITE + "/"):
        return _SQLITE + str(Path(url[len(_SQLITE) :]).resolve())
    return url


# MLflow 3.17's UI picks GenAI or model-training views from a global switch (browser storage, default
# GenAI), not from the experiment's mlflow.experimentKind tag; a link overrides it with this query.
MODEL_TRAINING_VIEW = "workflowType=machine_learning"


def model_training_view(url: str) -> str:
    """An MLflow UI link (``.../#/route?query``) that opens in the model-training view."""
    return url + ("&" if "?" in url.rsplit("#", 1)[-1] else "?") + MODEL_TRAINING_VIEW


def experiment_url(base: str, experiment_id: str | None = None) -> str:
    """The MLflow UI's page of an experiment (its runs table), or the experiment list."""
    route = f"#/experiments/{experiment_id}" if experiment_id else "#/experiments"
    return model_training_view(f"{base.rstrip('/')}/{route}")


def sqlite_missing(url: str) -> bool:
    """True for a file-backed SQLite URL whose file does not exist (opening it would create it)."""
    return url.startswith(_SQLITE) and not Path(url[len(_SQLITE) :]).exists()


__all__ = [
    "DEFAULT_ARTIFACTS",
    "DEFAULT_DB",
    "DEFAULT_MLFLOW",
    "MODEL_TRAINING_VIEW",
    "absolute_sqlite",
    "experiment_url",
    "model_training_view",
    "absolute_store",
    "sqlite_missing",
]
