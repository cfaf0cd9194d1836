"""Records with known effects, inserted directly through Records (no engine run): the test bed of the
report's statistics and best-practice verdicts.

Held-out LM loss of a trial = 3.0 + effects + noise (normal, sd 0.005, seeded), with these effects:

- target: depth +0.2 over width (the two targets are within 2% in size) -> clear win width, best practice 4 agrees;
- distill.loss: ce +0.3 and scratch +1.0 over kld; kld+intermediate -0.1 on the depth target (4 -> 2 layers,
  heavy depth pruning) and +0 on the width target -> BP5, 40x and BP6 agree, BP7 agrees (equivalent within
  the spec's report.margin 0.02: the 95% interval of kld+intermediate's advantage stays below it);
- importance.width.batch_agg: mean is +-0.01 around l2 with balanced signs -> no real difference;
- distill.tokens: 8000 is 0.05 better than 2000, but only two pairs exist (a third trial failed) -> too few pairs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import yaml

from ablate.spec.schema import Spec
from ablate.spec.sweep import resolved_config, set_path, stable_hash

SPEC_TEXT = """\
name: known
description: Constructed records with known effects (tests).
teacher: {model: "builtin:tiny-mistral"}
data: {corpus: "builtin:pydoc", seq_len: 64, eval_tokens: 2k}
calibration: {samples: 16, batch_size: 8}
targets:
  width: {hidden_size: 48, intermediate_size: 64}
  depth: {num_hidden_layers: 2}
distill: {loss: kld, tokens: 2k, lr: 1e-3, min_lr: 1e-4, warmup_steps: 2, global_batch: 8, micro_batch: 4}
sweep:
  grid:
    target: [width, depth]
    distill.loss: [kld, ce, kld+intermediate, scratch]
    importance.width.batch_agg: [l2, mean]
    distill.tokens: [2k, 8k]
  seeds: [0, 1, 2]
tracking: {mlflow: "sqlite:///.ablate/mlflow.db"}
build: {trial: best, tokens: 16k, formats: [hf]}
report: {metric: lm_loss, margin: 0.02}
"""

TARGETS = ("width", "depth")
LOSSES = ("kld", "ce", "kld+intermediate", "scratch")
AGGS = ("l2", "mean")
SEEDS = (0, 1, 2)
NOISE_SD = 0.005
TEACHER_LOSS = 2.6
"""The teacher's held-out LM loss (the eval stage's final metric teacher_lm_loss)."""
PRUNED_LOSS = {"width": 5.0, "depth": 6.5}
"""Held-out LM loss of each pruned student before retraining (step 0 of the evaluations in distillation)."""


@dataclass
class Known:
    name: str
    truth: dict[str, float] = field(default_factory=dict)
    """trial key -> noise-free LM loss."""
    keys: dict[tuple, str] = field(default_factory=dict)
    """(target, loss, agg, tokens, seed) -> trial key."""
    failed_key: str = ""
    pending_key: str = ""


def effect(target: str, loss: str, agg: str, tokens: int, seed: int) -> float:
    v = 3.0
    v += 0.2 if target == "depth" else 0.0
    v += {"kld": 0.0, "ce": 0.3, "kld+intermediate": -0.1 if target == "depth" else 0.0, "scratch": 1.0}[loss]
    if agg == "mean":
        v += 0.01 * (1 + 0.1 * seed) * (-1) ** (seed + LOSSES.index(loss))
    if tokens == 8000:
        v -= 0.05
    return v


def _metrics(lm_loss: float) -> dict[str, float]:
    return {
        "lm_loss": lm_loss,
        "perplexity": math.exp(lm_loss),
        "kl_to_teacher": lm_loss - 2.5,
        "top1_agreement": 0.5 - 0.1 * (lm_loss - 3.0),
    }


def build_known(records, name: str = "known", *, mlflow: bool = True) -> Known:
    """Insert the experiment `name` (50 completed trials, one failed, one pending) into `records`."""
    raw = yaml.safe_load(SPEC_TEXT.replace("name: known", f"name: {name}"))
    raw.pop("sweep")
    spec_text = SPEC_TEXT.replace("name: known", f"name: {name}")
    records.upsert_experiment(name, spec_text, stable_hash(spec_text, 16))
    records.upsert_stage("teacher0" + name, "teacher", {"model": "builtin:tiny-mistral"})
    if mlflow:
        records.set_experiment_mlflow(name, "7", "parent0run")
    rng = np.random.default_rng(1234)
    known = Known(name)
    points = [(t, lo, a, 2000, s) for t in TARGETS for lo in LOSSES for a in AGGS for s in SEEDS]
    points += [("width", "kld", "l2", 8000, 0), ("width", "kld", "l2", 8000, 1)]
    failed = ("width", "kld", "l2", 8000, 2)
    pending = ("depth", "kld", "l2", 8000, 0)
    for i, point in enumerate([*points, failed, pending]):
        target, loss, agg, tokens, seed = point
        trial_raw = set_path(raw, "distill.loss", loss)
        trial_raw = set_path(trial_raw, "importance.width.batch_agg", agg)
        trial_raw = set_path(trial_raw, "distill.tokens", tokens)
        config = resolved_config(Spec.model_validate(trial_raw), target, seed)
        key = stable_hash(config)
        overrides = {
            "target": target,
            "distill.loss": loss,
            "importance.width.batch_agg": agg,
            "distill.tokens": tokens,
            "seed": seed,
        }
        info = records.upsert_trial(name, key, overrides, config=config, stages=["teacher0" + name])
        known.keys[point] = key
        if mlflow:
            records.set_trial_mlflow_run(info.id, f"run{i:03d}")
        if point == pending:
            known.pending_key = key
            continue
        records.set_trial_status(info.id, "running")
        steps = tokens // 512
        truth = effect(*point)
        pruned = PRUNED_LOSS[target] + (4.0 if loss == "scratch" else 0.0)  # scratch starts from random
        records.log_metrics(
            info.id,
            [("tokens", s, 512.0 * s) for s in range(1, steps + 1)]
            + [
                ("loss", s, 2.0 / s + (0.5 if loss in ("ce", "scratch") else 0.0))
                for s in range(1, steps + 1)
            ]
            # held-out evaluations during distillation (distill.eval_every = 2), step 0 before training
            + [
                (f"eval_{k}", s, v)
                for s in sorted({*range(0, steps + 1, 2), steps})
                for k, v in _metrics(truth + (pruned - truth) * (1 - s / steps) ** 2).items()
            ],
        )
        if point == failed:
            known.failed_key = key
            records.set_trial_status(
                info.id, "failed", error="TrainError: loss is nan at step 3\ntraceback..."
            )
            continue
        known.truth[key] = truth
        final = _metrics(truth + float(rng.normal(0.0, NOISE_SD)))
        records.log_final_metrics(info.id, {**final, "teacher_lm_loss": TEACHER_LOSS})
        records.set_trial_status(info.id, "completed")
    return known
