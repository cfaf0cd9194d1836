"""`ablate submit` of a trial with a teacher correction on two Ray Train workers (DDP and FSDP2, gloo on
CPU): recorded like any trial, and the same corrected teacher and the same losses as the one-process run of
the same trial (one submission per strategy covers both trainings)."""

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


def submit_with(tmp_path, tiny_run, name: str, trial_resources: str):
    """workers.yaml with a teacher correction (2k tokens) on `trial_resources`: the correction trains on the
    trial's workers like the distillation, so both are compared with the one-process run."""
    workspace = make_workspace(tmp_path / name, artifacts_from=tiny_run.workspace)
    spec = (workspace / "workers.yaml").read_text()
    spec = spec.replace("trial: {cpu: 2, gpu: 0, workers: 2, strategy: ddp}", f"trial: {trial_resources}")
    (workspace / "workers.yaml").write_text(spec + CORRECTION)
    result = submit_here(workspace, "workers.yaml")
    assert result.ok, result.to_dict()
    # a corrected teacher is new, and so are its importance, the pruned student and both reference evals
    assert result.stages_run == {"teacher": 1, "importance": 1, "prune": 1, "distill": 1, "eval": 3}
    with records_of(workspace) as records:
        (trial,) = records.trials("tiny-workers")
        stages = {s.kind: s for s in records.trial_stages(trial.id) if s.kind in ("distill", "teacher")}
        artifacts = workspace / ".ablate" / "artifacts"
        facts = json.loads((artifacts / stages["distill"].hash / "result.json").read_text())
        teacher = artifacts / stages["teacher"].hash
        info = json.loads((teacher / "teacher.json").read_text())
        assert info["corrected"] and info["correction"]["steps"] == 4  # 2k tokens / (8 x 64)
        assert not (artifacts / ".work" / stages["teacher"].hash).exists()
        ray_train_runs = list((artifacts / ".tune" / "train").glob("teacher-*"))
        assert len(ray_train_runs) == (0 if "workers" not in trial_resources else 1)  # a TorchTrainer's
        corrected = (info["correction"]["final_loss"], load_file(teacher / "model" / "model.safetensors"))
        steps = [s for s, _ in records.metric_series(trial.id, "loss")]
        return workspace, trial, facts, steps, records.final_metrics(trial.id), corrected


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, tiny_run, ray_local):
    return submit_with(tmp_path_factory.mktemp("single"), tiny_run, "single", "{cpu: 1, gpu: 0}")


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_a_trial_and_its_teacher_correction_on_two_workers_match_one_process(
    strategy, tmp_path, tiny_run, one_process
):
    workspace, trial, facts, steps, final, (loss, weights) = submit_with(
        tmp_path, tiny_run, strategy, f"{{cpu: 2, gpu: 0, workers: 2, strategy: {strategy}}}"
    )
    _, single_trial, single_facts, _, single_final, (single_loss, single_weights) = one_process
    # the corrected teacher: the same last loss and weights as corrected in one process
    assert abs(loss - single_loss) <= 1e-5 * abs(single_loss)
    for key, value in single_weights.items():
        assert torch.allclose(weights[key], value, rtol=1e-4, atol=1e-6), key
    assert trial.key == single_trial.key  # resources are not part of what a trial computes
    assert trial.status == "completed"
    assert facts["workers"] == 2 and facts["strategy"] == strategy
    assert single_facts["workers"] == 1 and single_facts["strategy"] == "single"
    assert facts["tokens"] == single_facts["tokens"] == STEPS * 8 * 64
    assert steps == list(range(1, STEPS + 1))  # rank 0's per-step reports reached the records, once each
    # The two teachers differ by float rounding (corrected on two workers and on one), so the students'
    # losses (a KL of ~5e-3) agree to a few 1e-5 relative, not to the last bit; a wrong batch split or
    # gradient average moves them by 1e-2 or more.
    for step, (a, b) in enumerate(zip(facts["loss_curve"], single_facts["loss_curve"], strict=True), start=1):
        assert abs(a - b) <= 5e-5 * abs(b), f"step {step}: {a} ({strategy}) vs {b} (one process)"
    # The published student is a plain model, evaluated once: the eval matches the one-process trial's.
    assert "lm_loss" in single_final and set(final) == set(single_final)
    for name, value in single_final.items():
        assert final[name] == pytest.approx(value, rel=1e-4, abs=1e-6), name
    parents, children = split_runs(mlflow_runs(workspace, "tiny-workers"))
    assert len(parents) == 1 and list(children) == [trial.key]
    history = mlflow_client(workspace).get_metric_history(children[trial.key].info.run_id, "train/kl")
    assert sorted(m.step for m in history) == list(range(1, STEPS + 1))
