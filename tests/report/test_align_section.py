"""The report's alignment section on trial rows with known values: three pairs of width vs depth where
width leads on the base loss and after SFT, and depth leads after DPO and on the aligned benchmark: the
ranking does not survive, and the section says so with the paired numbers."""

from __future__ import annotations

import pytest

from ablate.report.align import align_of, align_section
from ablate.report.model import TrialRow

SPEC = {"align": {"stages": {"sft": {"method": "sft"}, "dpo": {"method": "dpo"}}}}


def _row(i: int, target: str, seed: int, shift: float) -> TrialRow:
    width = target == "width"
    metrics = {
        "lm_loss": 3.0 + (0 if width else 0.2) + shift,
        "sft/instruct_loss": 2.0 + (0 if width else 0.1) + shift,
        "sft/before/instruct_loss": 2.5,
        "dpo/pref_margin": 1.0 + (0 if width else 0.5) + shift,
        "dpo/pref_win_rate": 0.6,
        "dpo/before/pref_margin": 0.9,
        "sft/train_seconds": 10.0,
        "dpo/train_seconds": 20.0,
        "pydoc_cloze/acc": 0.5,
        "aligned/pydoc_cloze/acc": 0.5 + (0 if width else 0.05) + shift / 10,
    }
    return TrialRow(
        id=i,
        key=f"k{i}",
        status="completed",
        overrides={"target": target, "seed": seed},
        config=None,
        metrics=metrics,
        error=None,
        duration_s=1.0,
        mlflow_run_id=None,
        params=None,
        tokens=None,
        shape=None,
    )


def test_the_base_ranking_does_not_survive_dpo():
    rows = [_row(2 * s + (t == "depth"), t, s, 0.01 * s) for s in range(3) for t in ("width", "depth")]
    align = align_of(SPEC, rows, "lm_loss")
    assert align["metrics"] == ["lm_loss", "sft/instruct_loss", "dpo/pref_margin", "aligned/pydoc_cloze/acc"]
    (entry,) = align["survival"]
    leaders = {e["metric"]: e["leader"] for e in entry["by_metric"]}
    assert leaders == {
        "lm_loss": "width",
        "sft/instruct_loss": "width",
        "dpo/pref_margin": "depth",
        "aligned/pydoc_cloze/acc": "depth",
    }
    assert entry["survives"] is False
    by = {e["metric"]: e for e in entry["by_metric"]}
    assert by["dpo/pref_margin"]["mean_diff"] == pytest.approx(-0.5)  # width - depth
    assert by["dpo/pref_margin"]["n"] == 3 and by["dpo/pref_margin"]["wins_b"] == 3
    text = "\n".join(align_section(align, {}))
    assert "| target: width vs depth |" in text and "| **no** |" in text
    assert "pydoc_cloze/acc distilled | pydoc_cloze/acc aligned" in text
    assert "| sft | sft | 10 |" in text  # the mean cost of each stage


def test_no_align_section_no_alignment():
    assert align_of({}, [_row(0, "width", 0, 0)], "lm_loss") == {}
    assert align_section({}, {}) == []
