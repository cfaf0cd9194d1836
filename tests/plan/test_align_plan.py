"""The align section's stages in the plan: after the trial's distill stage, each the child of the one
before; adding a stage moves no earlier hash; trials that differ only in a later stage share the prefix;
no align section, no align stage and no moved key."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ablate.plan.graph import build_graph
from ablate.plan.stages import ALIGN, trial_kinds, trial_stages
from ablate.spec.validate import load_spec

ROOT = Path(__file__).parents[2]


def _specs(tmp_path: Path) -> Path:
    shutil.copy(ROOT / "specs" / "tiny.yaml", tmp_path)
    for name in ("align_sft.yaml", "align.yaml"):
        shutil.copy(ROOT / "tests" / "run" / "specs" / name, tmp_path)
    (tmp_path / "sweep.yaml").write_text(
        "extends: align.yaml\nname: align-sweep\nsweep:\n  grid:\n    target: [width]\n"
        "    distill.loss: [kld]\n    align.stages.dpo.beta: [0.1, 0.5]\n"
    )
    return tmp_path


def test_align_stages_follow_distill_and_share_prefixes(tmp_path):
    folder = _specs(tmp_path)
    tiny, sft, both = (load_spec(folder / n) for n in ("tiny.yaml", "align_sft.yaml", "align.yaml"))
    plain = {
        t.overrides["target"]: trial_stages(t) for t in tiny.trials if t.overrides["distill.loss"] == "kld"
    }
    one = {t.overrides["target"]: trial_stages(t) for t in sft.trials}
    two = {t.overrides["target"]: trial_stages(t) for t in both.trials}
    for target, stages in two.items():
        assert stages["distill"].hash == plain[target]["distill"].hash  # the same distilled student
        assert stages[f"{ALIGN}0"].parents == (stages["distill"].hash,)
        assert stages[f"{ALIGN}1"].parents == (stages[f"{ALIGN}0"].hash,)
        assert stages[f"{ALIGN}0"].hash == one[target][f"{ALIGN}0"].hash  # adding dpo moved nothing before it
        assert trial_kinds(stages)[-2:] == [f"{ALIGN}0", f"{ALIGN}1"]
        assert not any(k.startswith(ALIGN) for k in plain[target])
    sweep = load_spec(folder / "sweep.yaml")
    graph = build_graph(sweep.trials)
    assert graph.counts()["align"] == 3  # one sft for both betas, one dpo each
    assert {t.key for t in sweep.trials} & {t.key for t in both.trials}  # beta 0.5 is align.yaml's trial


def test_the_plan_counts_each_alignment_stage_once_with_its_tokens_and_flops(tmp_path):
    from ablate.commands.plan import plan_dict

    folder = _specs(tmp_path)
    plan = plan_dict(load_spec(folder / "sweep.yaml"), mfu=0.4)
    rows = {r["stage"]: r for r in plan["align"]}
    assert (rows["sft"]["runs"], rows["dpo"]["runs"]) == (1, 2)  # one sft serves both betas
    assert rows["sft"]["examples"] == 32 and rows["sft"]["tokens_per_run"] > 32 * 100  # byte tokens
    (trial,) = {t["params"] for t in plan["trials"]}
    assert rows["sft"]["flops"] == pytest.approx(6 * trial * rows["sft"]["tokens_per_run"], rel=1e-3)
    assert rows["dpo"]["flops"] == pytest.approx(2 * 8 * trial * rows["dpo"]["tokens_per_run"], rel=1e-3)
    assert plan["total_flops"] >= rows["sft"]["flops"] + rows["dpo"]["flops"]
