"""The align section on real Ray, SQLite and MLflow (tests/run/specs/align_sft.yaml, align.yaml): the tiny
spec's kld students through SFT on the shipped instruction set, then the same plus DPO on the shipped
preference set. SFT lowers the held-out instruction loss, DPO raises the held-out chosen-over-rejected
margin, adding the DPO stage runs only it, and a re-submit runs nothing."""

from __future__ import annotations

import shutil

import pytest

from tests.run.conftest import make_workspace, mlflow_runs, records_of, split_runs, submit_here

pytestmark = pytest.mark.slow


def _finals(workspace, experiment):
    with records_of(workspace) as records:
        return {t.overrides["target"]: records.final_metrics(t.id) for t in records.trials(experiment)}


def test_sft_then_dpo_after_distillation_run_once_and_measure_what_they_train(tiny_run, tmp_path):
    workspace = make_workspace(tmp_path / "ws")
    # the tiny spec's artifacts: its kld trials are these trials' distilled students, so only alignment runs
    shutil.copytree(tiny_run.workspace / ".ablate" / "artifacts", workspace / ".ablate" / "artifacts")

    first = submit_here(workspace, "align_sft.yaml")
    assert first.ok and first.stages_run == {"align": 2}, first.to_dict()
    for target, m in _finals(workspace, "align-sft").items():
        assert m["sft/instruct_loss"] < m["sft/before/instruct_loss"] - 0.05, target
        assert m["sft/train_tokens"] > 0 and m["sft/train_seconds"] > 0

    second = submit_here(workspace, "align.yaml")  # the same stages plus dpo: only dpo runs
    assert second.ok and second.stages_run == {"align": 2}, second.to_dict()
    assert second.stages_reused.get("align") == 2
    finals = _finals(workspace, "align")
    for target, m in finals.items():
        assert m["dpo/pref_margin"] > m["dpo/before/pref_margin"], target
        assert m["dpo/before/instruct_loss"] == pytest.approx(
            m["sft/instruct_loss"]
        )  # the same model, measured twice
        assert m["dpo/train_flops"] > m["sft/train_flops"]  # pairs of answers and the reference's forward

    again = submit_here(workspace, "align.yaml")
    assert again.ok and not again.stages_run and again.stages_reused["align"] == 4

    _, runs = split_runs(mlflow_runs(workspace, "align"))
    for run in runs.values():
        # held-out values as eval/NAME (after each stage), the training loss per step as STAGE/loss
        assert {
            "eval/sft/instruct_loss",
            "eval/dpo/pref_margin",
            "eval/dpo/pref_win_rate",
            "dpo/loss",
        } <= set(run.data.metrics)

    # the report: each trial after each stage, and whether the base ranking survives each stage
    from ablate.report.markdown import render_markdown
    from ablate.report.records import build_report

    with records_of(workspace) as records:
        report = build_report(records, "align")
    assert [s["name"] for s in report.align["stages"]] == ["sft", "dpo"]
    assert report.align["metrics"] == ["lm_loss", "sft/instruct_loss", "dpo/pref_margin"]
    (survival,) = report.align["survival"]  # target: width vs depth, on all three metrics
    assert survival["axis"] == "target" and len(survival["by_metric"]) == 3
    text = render_markdown(report)
    assert "## Alignment" in text and "Does the base ranking survive alignment?" in text
    assert f"| {finals['width']['dpo/pref_margin']:.4g} |" in text

    # the build exports the aligned model (the last stage's weights, with its chat template) and its card
    # names every stage; at the trial's own budget it runs no stage
    from contextlib import chdir

    import torch

    from ablate.build.pipeline import build
    from ablate.build.recipe import open_source, resolve
    from ablate.models.registry import load_model
    from ablate.run.artifacts import ArtifactStore

    with chdir(workspace):
        by_spec = resolve(open_source("align.yaml"), trial="best", tokens="2k")
        by_name = resolve(open_source("align"), trial="best", tokens="2k")  # from the recorded configs
        assert [s.hash for s in by_name.chain] == [s.hash for s in by_spec.chain]
        assert [s.kind for s in by_spec.chain][-2:] == ["align", "align"]
        built = build(open_source("align.yaml"), trial="best", tokens="2k", out=str(workspace / "built"))
    assert built.stages_run == 0, built.stages
    card = (workspace / "built" / "model" / "README.md").read_text()
    assert "## Alignment" in card and "1. **sft**" in card and "2. **dpo**" in card
    with records_of(workspace) as records:
        (trial,) = [t for t in records.trials("align") if t.key == built.trial]
        last = [s for s in records.trial_stages(trial.id) if s.kind == "align"]
    dpo = next(s for s in last if s.config["stage"]["name"] == "dpo")
    store = ArtifactStore(str(workspace / ".ablate" / "artifacts"))
    aligned, _ = load_model(str(store.local_path(dpo.hash) / "model"))
    exported, tokenizer = load_model(str(workspace / "built" / "model"))
    for a, b in zip(aligned.state_dict().values(), exported.state_dict().values(), strict=True):
        assert torch.equal(a, b.to(a.dtype))
    assert "<|im_start|>assistant" in tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
