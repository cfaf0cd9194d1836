"""What ablate's records are called in MLflow: readable run names and metric names.

The SQL records keep their own names (per-step ``loss``, ``lr``, ``kl``; final ``lm_loss``, which the
report reads); only what goes to MLflow is renamed, here, so that MLflow's views compare like with like:

- a trial's run is named after what its sweep varied (``width-kld-s0``), not its key;
- the per-step objective gets the name of what it measures: ``train/kl`` for ``kld``, ``train/ce`` for
  ``ce`` and ``scratch`` (both train on the data alone), ``train/kl_intermediate`` for the weighted sum of
  ``kld+intermediate`` (whose parts are ``train/kl`` and ``train/intermediate``). A plain ``loss`` would put
  KL and cross-entropy on one axis, and MLflow's compare view would plot them together;
- held-out metrics are ``eval/<name>`` (periodic and final), the rest of training ``train/<name>``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from ablate.spec.sweep import SEED_AXIS, stable_hash
from ablate.spec.units import format_tokens

__all__ = [
    "MAX_RUN_NAME",
    "OBJECTIVE_METRIC",
    "eval_metric",
    "metric_name",
    "mlflow_rows",
    "trial_run_name",
]

MAX_RUN_NAME = 96  # long enough for several axes; MLflow's run table shows about this much
MAX_PART = 32
OBJECTIVE_METRIC = {
    "kld": "train/kl",
    "ce": "train/ce",
    "scratch": "train/ce",
    "kld+intermediate": "train/kl_intermediate",
}
_TRAIN = {"lr", "tokens", "grad_norm", "kl", "ce", "intermediate"}
_UNSAFE = re.compile(r"[^A-Za-z0-9._+=]+")


def _part(path: str, value: Any) -> str:
    """One axis value, short: a string as it is, a number or flag with its field's name."""
    leaf = path.rsplit(".", 1)[-1]
    if isinstance(value, bool):
        text = leaf if value else f"no_{leaf}"
    elif isinstance(value, int) and leaf.endswith("tokens"):
        text = f"{leaf}={format_tokens(value)}"
    elif isinstance(value, (int, float)):
        text = f"{leaf}={value:g}"
    elif isinstance(value, str):
        text = value
    elif value is None:
        text = f"{leaf}=none"
    else:  # a mapping or a list: its hash, which tells two values apart
        text = f"{leaf}={stable_hash(value, 6)}"
    text = _UNSAFE.sub("_", text).strip("_") or leaf
    return text[:MAX_PART]


def trial_run_name(overrides: Mapping[str, Any]) -> str:
    """``width-kld-s0``: the trial's sweep values in axis order (target first), its seed last.

    Unique among the trials of one spec as long as no value is cut short; MlflowMirror adds a piece of the
    trial key to a name another trial's run already has (the same values after the spec changed)."""
    parts = [_part(path, value) for path, value in overrides.items() if path != SEED_AXIS]
    seed = f"-s{overrides[SEED_AXIS]}" if SEED_AXIS in overrides else ""
    body = "-".join(parts)[: MAX_RUN_NAME - len(seed)].rstrip("-_")
    return (body + seed).strip("-") or "trial"


def eval_metric(name: str) -> str:
    """A held-out metric's MLflow name: ``lm_loss`` -> ``eval/lm_loss``, ``task/acc`` -> ``eval/task/acc``."""
    return f"eval/{name}"


def metric_name(name: str, objective: str | None) -> str | None:
    """The MLflow name of a recorded per-step or final value of a trial trained with ``objective``
    (its distill.loss); None for a value that repeats another (the logit part of a plain objective)."""
    if name == "loss":
        return OBJECTIVE_METRIC.get(objective or "", "train/loss")
    if name in ("kl", "ce") and OBJECTIVE_METRIC.get(objective or "") == f"train/{name}":
        return None  # the objective itself, already logged under this name
    if name in _TRAIN:
        return f"train/{name}"
    if name.startswith("eval_"):
        return eval_metric(name[len("eval_") :])
    return name


def mlflow_rows(
    rows: Iterable[tuple[str, int, float]], objective: str | None
) -> list[tuple[str, int, float]]:
    """Recorded ``(name, step, value)`` rows with their MLflow names (see :func:`metric_name`)."""
    out = []
    for name, step, value in rows:
        renamed = metric_name(name, objective)
        if renamed is not None:
            out.append((renamed, step, value))
    return out
