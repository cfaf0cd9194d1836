"""`ablate submit` of a trial on two Ray Train workers (DDP and FSDP2, gloo on CPU): recorded like any
trial, and the same losses as the one-process run of the same trial."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from tests.run.conftest import make_workspace, mlflow_client, mlflow_runs, records_of, split_runs, submit_here

pytestmark = pytest.mark.slow

STEPS = 8  # 4k tokens at global batch 8 x seq 64


CORRECTION = """
teacher:
  model: builtin:tiny-mistral
  correction: {tokens: 2k, lr: 1e-3, warmup_steps: 1}
"""


def submit_with(tmp_path, tiny_run, name: str, trial_resources: str, extra: str = ""):
    workspace = make_workspace(tmp_path / name, artifacts_from=tiny_run.workspace)
    spec = (workspace / "workers.yaml").read_text()
    spec = spec.replace("trial: {cpu: 2, gpu: 0, workers: 2, strategy: ddp}", f"trial: {trial_resources}")
    (workspace / "workers.yaml").write_text(spec + extra)
    result = submit_here(workspace, "workers.yaml")
    assert result.ok, result.to_dict()
    shared = {"teacher": 1, "importance": 1, "prune": 1} if extra else {}
    evals = 3 if extra else 1  # a corrected teacher: its and its pruned student's reference evals are new
    assert result.stages_run == {**shared, "distill": 1, "eval": evals}
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
    history = mlflow_client(workspace).get_metric_history(children[trial.key].info.run_id, "train/kl")
    assert sorted(m.step for m in history) == list(range(1, STEPS + 1))


def test_teacher_correction_runs_on_the_trials_workers_and_matches_one_process(tmp_path, tiny_run, ray_local):
    corrected = {}
    for name, resources in (
        ("one", "{cpu: 1, gpu: 0}"),
        ("ddp", "{cpu: 2, gpu: 0, workers: 2, strategy: ddp}"),
    ):
        workspace, trial, facts, _, final = submit_with(tmp_path, tiny_run, name, resources, CORRECTION)
        with records_of(workspace) as records:
            teacher = next(s for s in records.trial_stages(trial.id) if s.kind == "teacher")
        folder = workspace / ".ablate" / "artifacts" / teacher.hash
        info = json.loads((folder / "teacher.json").read_text())
        assert info["corrected"] and info["correction"]["steps"] == 4  # 2k tokens / (8 x 64)
        weights = load_file(folder / "model" / "model.safetensors")
        corrected[name] = (info["correction"]["final_loss"], weights, facts, final)
        assert not (workspace / ".ablate" / "artifacts" / ".work" / teacher.hash).exists()
        ray_train_runs = list((workspace / ".ablate" / "artifacts" / ".tune" / "train").glob("teacher-*"))
        assert len(ray_train_runs) == (1 if name == "ddp" else 0)  # corrected by a TorchTrainer on workers
    (loss_1, w_1, facts_1, final_1), (loss_2, w_2, facts_2, final_2) = corrected["one"], corrected["ddp"]
    assert abs(loss_2 - loss_1) <= 1e-5 * abs(loss_1)
    for key, value in w_1.items():
        assert torch.allclose(w_2[key], value, rtol=1e-4, atol=1e-6), key
    assert facts_2["workers"] == 2 and facts_1["workers"] == 1
    assert final_2["lm_loss"] == pytest.approx(final_1["lm_loss"], rel=1e-4)
