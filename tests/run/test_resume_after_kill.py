"""SIGKILL the submitting process in the middle of a distillation; submitting again resumes it.

The first submission runs as `ablate submit` in its own session (it starts its own local Ray, whose
raylet, GCS and workers share that session); the test kills the whole session once the records show
per-step metrics past a checkpoint, checks that nothing of it survives, then submits again in-process.
"""

from __future__ import annotations

import json

import pytest

from tests.run.conftest import (
    make_workspace,
    mlflow_client,
    mlflow_runs,
    records_of,
    split_runs,
    submit_here,
    submit_then_kill,
)

pytestmark = pytest.mark.slow

CHECKPOINT_EVERY = 10
KILL_PAST_STEP = 2 * CHECKPOINT_EVERY + 5  # two checkpoints written, the third not yet


def _progress(workspace) -> dict[str, int]:
    """Trial key -> last step recorded, once the experiment exists (else empty)."""
    db = workspace / ".ablate" / "ablate.db"
    if not db.exists():
        return {}
    try:
        with records_of(workspace) as records:
            if records.get_experiment("tiny-kill") is None:
                return {}
            return {
                t.key: max((s for s, _ in records.metric_series(t.id, "loss")), default=0)
                for t in records.trials("tiny-kill")
            }
    except Exception:  # noqa: BLE001 - the database may be mid-migration while the submission starts
        return {}


def test_sigkill_mid_distillation_then_resume(tiny_run, tmp_path):
    # The shared stages are copied from the session's tiny workspace: only the distillations run.
    workspace = make_workspace(tmp_path / "ws", artifacts_from=tiny_run.workspace)

    def mid_distillation() -> dict[str, int] | None:
        steps = _progress(workspace)
        return steps if len(steps) == 2 and min(steps.values()) >= KILL_PAST_STEP else None

    at_kill = submit_then_kill(
        workspace, "kill.yaml", mid_distillation, tmp_path / "first-submit.log", 300, "--json"
    )
    recorded = _progress(workspace)
    with records_of(workspace) as records:
        trials = records.trials("tiny-kill")
        assert {t.status for t in trials} == {"running"}  # what a killed driver leaves behind
    parents, children = split_runs(mlflow_runs(workspace, "tiny-kill"))
    assert len(parents) == 1 and len(children) == 2
    first_runs = {k: r.info.run_id for k, r in children.items()}

    result = submit_here(workspace, "kill.yaml")
    assert result.ok, result.to_dict()
    assert result.stages_run == {"distill": 2, "eval": 2}
    assert result.stages_reused == {"tokenize": 1, "teacher": 1, "importance": 1, "prune": 1, "eval": 2}

    client = mlflow_client(workspace)
    parents, children = split_runs(mlflow_runs(workspace, "tiny-kill"))
    assert len(parents) == 1 and {k: r.info.run_id for k, r in children.items()} == first_runs
    with records_of(workspace) as records:
        events = [e.message for e in records.events("tiny-kill")]
        assert any("recovered after an interrupted submission: 2 trial(s)" in m for m in events)
        for trial in records.trials("tiny-kill"):
            assert trial.status == "completed" and trial.attempts == 2
            distill = next(s for s in records.trial_stages(trial.id) if s.kind == "distill")
            facts = json.loads(
                (workspace / ".ablate" / "artifacts" / distill.hash / "result.json").read_text()
            )
            steps = facts["steps"]
            resumed = facts["resumed_from_step"]
            # Not from step 0: from the last checkpoint, at or after the second (the records had shown
            # a step past it before the kill; the checkpoint is written before its step is reported).
            assert resumed is not None and resumed % CHECKPOINT_EVERY == 0, facts
            assert 2 * CHECKPOINT_EVERY <= resumed < steps, (resumed, recorded, at_kill)
            assert any(f"resumed from its checkpoint at step {resumed}" in m for m in events)
            assert [s for s, _ in records.metric_series(trial.id, "loss")] == list(range(1, steps + 1))
            history = client.get_metric_history(first_runs[trial.key], "train/ce")  # kill.yaml: loss ce
            assert sorted(m.step for m in history) == list(range(1, steps + 1))  # each step once
            assert not (workspace / ".ablate" / "artifacts" / ".work" / distill.hash).exists()
