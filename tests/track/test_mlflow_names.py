"""What ablate's records are called in MLflow: run names from the sweep's values, metric names that keep
KL and cross-entropy apart."""

from __future__ import annotations

from pathlib import Path

from ablate.spec.validate import load_spec
from ablate.track.mlflow_names import metric_name, mlflow_rows, trial_run_name

SPECS = Path(__file__).parents[2] / "specs"


def test_tiny_trials_get_readable_unique_names():
    trials = load_spec(SPECS / "tiny.yaml").trials
    names = {t.key: trial_run_name(t.overrides) for t in trials}
    assert sorted(names.values()) == ["depth-ce-s0", "depth-kld-s0", "width-ce-s0", "width-kld-s0"]
    assert names["196127d3db11"] == "width-kld-s0"  # the key the issue saw as a run name


def test_numbers_flags_and_mappings_carry_their_field_name():
    name = trial_run_name(
        {
            "target": "width",
            "distill.lr": 3e-4,
            "distill.tokens": 20000,
            "distill.activation_checkpointing": False,
            "importance.width": {"method": "magnitude"},
            "distill.loss": "kld+intermediate",
            "data.corpus": "hf:o/d",
            "seed": 12,
        }
    )
    parts = name.split("-")
    assert parts[:4] == ["width", "lr=0.0003", "tokens=20k", "no_activation_checkpointing"]
    assert parts[4].startswith("width=") and len(parts[4]) == len("width=") + 6
    assert parts[5:] == ["kld+intermediate", "hf_o_d", "s12"]
    long = trial_run_name({"target": "t", "x.y": "v" * 30, "x.z": "w" * 30, "x.w": "u" * 40, "seed": 0})
    assert len(long) == 96 and long.startswith("t-vvv") and long.endswith("uuu-s0")  # the seed is kept


def test_objective_metrics_are_named_by_what_they_measure():
    step = [("loss", 3, 2.0), ("kl", 3, 2.0), ("lr", 3, 0.1), ("grad_norm", 3, 1.0), ("eval_lm_loss", 3, 4.0)]
    assert mlflow_rows(step, "kld") == [
        ("train/kl", 3, 2.0),
        ("train/lr", 3, 0.1),
        ("train/grad_norm", 3, 1.0),
        ("eval/lm_loss", 3, 4.0),
    ]
    assert metric_name("loss", "ce") == metric_name("loss", "scratch") == "train/ce"
    assert metric_name("ce", "ce") is None and metric_name("tokens", "ce") == "train/tokens"
    # kld+intermediate: the weighted sum has its own name, its KL part is comparable with kld's
    assert metric_name("loss", "kld+intermediate") == "train/kl_intermediate"
    assert metric_name("kl", "kld+intermediate") == "train/kl"
    assert metric_name("intermediate", "kld+intermediate") == "train/intermediate"
    assert metric_name("eval_pydoc_cloze/acc", "kld") == "eval/pydoc_cloze/acc"
    assert metric_name("loss", None) == "train/loss"
