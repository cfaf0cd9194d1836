"""`ablate submit` of a trial on two Ray Train workers (DDP and FSDP2, gloo on CPU): recorded like any
trial, and the same losses as the one-process run of the same trial."""

from __future__ import annotations

import json

import pytest

from tests.run.conftest import make_workspace, mlflow_client, mlflow_runs, records_of, split_runs, submit_here

pytestmark = pytest.mark.slow

STEPS = 8  # 4k tokens at global batch 8 x seq 64


def submit_with(tmp_path, tiny_run, name: str, trial_resources: str):
    workspace = make_workspace(tmp_path / name, artifacts_from=tiny_run.workspace)
    spec = (workspace / "workers.yaml").read_text()
    spec = spec.replace("trial: {cpu: 2, gpu: 0, workers: 2, strategy: ddp}", f"trial: {trial_resources}")
    (workspace / "workers.yaml").write_text(spec)
    result = submit_here(workspace, "workers.yaml")
    assert result.ok, result.to_dict()
    assert result.stages_run == {"distill": 1, "eval": 1}
    with records_of(workspace) as records:
        (trial,) = records.trials("tiny-workers")
        distill = next(s for s in records.trial_stages(trial.id) if s.kind == "distill")
        facts = json.loads((workspace / ".ablate" / "artifacts" / distill.hash / "result.json").read_text())
        steps = [s for s, _ in records.metric_series(trial.id, "loss")]
        return workspace, trial, facts, steps, records.final_metrics(trial.id)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, tiny_run, ray_local):
    return submit_with(tmp_path_factory.mktemp("single"), tiny_run, "single", "{cpu: 1, gpu: 0}")


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_a_trial_on_two_workers_is_recorded_and_matches_one_process(
    strategy, tmp_path, tiny_run, one_process
):
    workspace, trial, facts, steps, final = submit_with(
        tmp_path, tiny_run, strategy, f"{{cpu: 2, gpu: 0, workers: 2, strategy: {strategy}}}"
    )
    _, single_trial, single_facts, _, single_final = one_process
    assert trial.key == single_trial.key  # resources are not part of what a trial computes
    assert trial.status == "completed"
    assert facts["workers"] == 2 and facts["strategy"] == strategy
    assert single_facts["workers"] == 1 and single_facts["strategy"] == "single"
    assert facts["tokens"] == single_facts["tokens"] == STEPS * 8 * 64
    assert steps == list(range(1, STEPS + 1))  # rank 0's per-step reports reached the records, once each
    for step, (a, b) in enumerate(zip(facts["loss_curve"], single_facts["loss_curve"], strict=True), start=1):
        assert abs(a - b) <= 1e-5 * abs(b), f"step {step}: {a} ({strategy}) vs {b} (one process)"
    # The published student is a plain model, evaluated once: the eval matches the one-process trial's.
    assert "lm_loss" in single_final and set(final) == set(single_final)
    for name, value in single_final.items():
        assert final[name] == pytest.approx(value, rel=1e-4, abs=1e-6), name
    parents, children = split_runs(mlflow_runs(workspace, "tiny-workers"))
    assert len(parents) == 1 and list(children) == [trial.key]
    history = mlflow_client(workspace).get_metric_history(children[trial.key].info.run_id, "loss")
    assert sorted(m.step for m in history) == list(range(1, STEPS + 1))
