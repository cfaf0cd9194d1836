"""SIGKILL a submission in the middle of an alignment stage; submitting again resumes the stage from its
last checkpoint (its work folder, taken over from the dead run), not from step 0."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.run.conftest import (
    make_workspace,
    records_of,
    submit_here,
    submit_then_kill,
)

pytestmark = pytest.mark.slow


def test_sigkill_mid_alignment_then_resume(tiny_run, tmp_path):
    workspace = make_workspace(tmp_path / "ws")
    # the tiny spec's artifacts hold this trial's distilled student: only the SFT stage runs
    shutil.copytree(tiny_run.workspace / ".ablate" / "artifacts", workspace / ".ablate" / "artifacts")
    work = workspace / ".ablate" / "artifacts" / ".work"

    def checkpointed() -> bool:
        return any(work.glob("align-*/checkpoint-4"))

    submit_then_kill(
        workspace, "align_kill.yaml", checkpointed, tmp_path / "first-submit.log", 400, "--quiet"
    )

    result = submit_here(workspace, "align_kill.yaml")
    assert result.ok and result.stages_run == {"align": 1}, result.to_dict()
    with records_of(workspace) as records:
        (trial,) = records.trials("align-kill")
        (stage,) = [s for s in records.trial_stages(trial.id) if s.kind == "align"]
        finals = records.final_metrics(trial.id)
    facts = json.loads((workspace / ".ablate" / "artifacts" / stage.hash / "align.json").read_text())
    assert facts["steps"] == 12 and 4 <= facts["resumed_from_step"] < 12, facts
    assert len(facts["loss_curve"]) == 12  # the steps before the kill come back with the checkpoint
    assert finals["sft/instruct_loss"] < finals["sft/before/instruct_loss"]
    assert not list(work.glob(f"{stage.hash}*"))  # the work folder goes once the stage is published
