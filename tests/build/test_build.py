"""`ablate build` on a finished tiny experiment: export, reuse, recipe choice, bad input."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ablate.build import pipeline
from ablate.build.export import MANIFEST, check_out
from ablate.build.recipe import BuildError, open_source, resolve
from ablate.data.corpus import token_splits
from ablate.models.arch import count_parameters, pruned_config
from ablate.models.registry import tiny_mistral_config
from ablate.models.tokenizer import byte_tokenizer
from ablate.run import stage_runners

from .conftest import submit_in_process, write_spec

FRESH = r"""
import json, math, sys
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
import torch.nn.functional as F

folder, tokens_file, batch_size = sys.argv[1], sys.argv[2], int(sys.argv[3])
tokenizer = AutoTokenizer.from_pretrained(folder)
model = AutoModelForCausalLM.from_pretrained(folder).eval()
prompt = tokenizer("The Python standard library", return_tensors="pt")
out = model.generate(**prompt, max_new_tokens=12, min_new_tokens=12, do_sample=False)
text = tokenizer.decode(out[0], skip_special_tokens=True)
ids = torch.tensor(json.load(open(tokens_file)))
nll, n = 0.0, 0
with torch.inference_mode():
    for start in range(0, len(ids), batch_size):
        batch = ids[start:start + batch_size]
        logits = model(input_ids=batch, use_cache=False).logits
        nll += F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), batch[:, 1:].flatten(), reduction="sum").item()
        n += batch[:, 1:].numel()
print(json.dumps({
    "ablate_imported": any(m == "ablate" or m.startswith("ablate.") for m in sys.modules),
    "params": sum(p.numel() for p in model.parameters()),
    "text": text,
    "new_tokens": out.shape[1] - prompt["input_ids"].shape[1],
    "lm_loss": nll / n,
    "dtype": str(model.dtype),
}))
"""


def _build(tiny, tmp_path, **kwargs):
    kwargs.setdefault("throughput", False)
    kwargs.setdefault("reports_dir", tmp_path / "reports")
    return pipeline.build(open_source(str(tiny.spec_path)), **kwargs)


def _planned(tiny, key: str) -> int:
    trial = next(t for t in tiny.loaded.trials if t.key == key)
    return count_parameters(pruned_config(tiny_mistral_config(), trial.shape))


def test_build_exports_a_model_plain_transformers_loads_and_generates(tiny, tmp_path):
    out = tmp_path / "build"
    result = _build(tiny, tmp_path, out=out, throughput=True, batch_sizes=(1,), lengths=((8, 4),))
    model_dir = Path(result.model_dir)
    for name in ("model.safetensors", "config.json", "generation_config.json", "tokenizer.json", "README.md"):
        assert (model_dir / name).is_file(), name
    assert (out / MANIFEST).is_file() and (out / "trtllm" / "commands.sh").is_file()
    card = (model_dir / "README.md").read_text()  # the card ends with the throughput table (TTFT, TPOT)
    assert card.count("## Generation throughput") == 1 and "| student | fp32 | 1 | 8 | 4 |" in card
    assert "TPOT / roofline" in card and "not a serving measurement" in card
    # the tiny spec builds 4k tokens > the trials' 2k: one longer distillation, then its eval
    assert result.tokens == 4000 and result.trial_tokens == 2000
    assert result.params["student"] == result.params["planned"] == _planned(tiny, result.trial)
    recorded = json.loads((tiny.store.local_path(result.stages[-1]["hash"]) / "metrics.json").read_text())
    assert result.metrics["lm_loss"] == pytest.approx(recorded["lm_loss"], abs=1e-12)

    # re-evaluate in a fresh interpreter that never imports ablate
    splits = token_splits(byte_tokenizer(), "builtin:pydoc", 64, 2000, 16)
    tokens_file = tmp_path / "eval.json"
    tokens_file.write_text(json.dumps(splits.eval.tolist()))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [sys.executable, "-c", FRESH, str(model_dir), str(tokens_file), "8"],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    fresh = json.loads(proc.stdout.strip().splitlines()[-1])
    assert fresh["ablate_imported"] is False
    assert fresh["new_tokens"] == 12 and fresh["text"].startswith("The Python standard library")
    assert fresh["params"] == result.params["planned"]
    assert abs(fresh["lm_loss"] - recorded["lm_loss"]) < 1e-4

    card = (model_dir / "README.md").read_text()
    trial = next(t for t in tiny.loaded.trials if t.key == result.trial)
    teacher = tiny_mistral_config().to_dict()
    for needed in (
        "builtin:tiny-mistral",  # teacher
        *(f"{axis} {teacher[axis]} -> {value}" for axis, value in trial.shape.items()),  # pruned axes
        "batch aggregation l2",  # importance settings
        "loss `",  # distillation recipe
        "4k for this final model",  # tokens
        "| teacher |",  # evaluation table against the teacher
        "name: tiny",  # the spec
    ):
        assert needed in card, needed
    assert f"{recorded['lm_loss']:.4f}" in card
    assert "| teacher | 205.9k | - |" in card and "| student (this build) | " in card

    report = Path(result.report).read_text()
    assert "## Quality against the teacher" in report and "## Generation throughput" in report
    assert "| student | fp32 | 1 | 8 | 4 |" in report and "| teacher | fp32 | 1 | 8 | 4 |" in report
    assert "TensorRT-LLM is not installed here" in report


def test_building_twice_reuses_every_stage(tiny, tmp_path, monkeypatch):
    out = tmp_path / "build"
    first = _build(tiny, tmp_path, out=out)
    assert {s["kind"] for s in first.stages} == {
        "tokenize",
        "teacher",
        "importance",
        "prune",
        "distill",
        "eval",
    }
    before = (out / MANIFEST).read_text()

    def refuse(*args, **kwargs):
        raise AssertionError("a stage ran on the second build")

    monkeypatch.setattr(stage_runners, "RUNNERS", {k: refuse for k in stage_runners.RUNNERS})
    monkeypatch.setattr("ablate.build.export.export_model", refuse)
    second = _build(tiny, tmp_path, out=out)
    assert second.stages_run == 0 and second.stages_reused == 6
    assert second.export_reused and second.recipe_id == first.recipe_id
    assert (out / MANIFEST).read_text() == before
    assert second.metrics == first.metrics and second.params == first.params


def test_final_distillation_is_its_own_stage(tiny):
    source = open_source(str(tiny.spec_path))
    longer = resolve(source, tokens="4k")
    same = resolve(source, tokens="2k")
    trial = longer.stages["distill"]
    assert longer.extra_distill and longer.final_distill.hash != trial.hash
    assert longer.final_distill.parents == trial.parents
    changed = {
        k
        for k in trial.config["distill"]
        if trial.config["distill"][k] != longer.final_distill.config["distill"][k]
    }
    assert changed == {"tokens"} and longer.final_distill.config["distill"]["tokens"] == 4000
    assert longer.final_eval.parents == (longer.final_distill.hash, longer.stages["teacher"].hash)
    # at (or below) the trial's budget, the build is the trial's own model
    assert not same.extra_distill and same.final_distill.hash == trial.hash
    assert not resolve(source, tokens="1k").extra_distill
    assert same.id != longer.id


def test_build_at_trial_budget_runs_nothing_and_matches_the_recorded_loss(tiny, tmp_path):
    result = _build(tiny, tmp_path, out=tmp_path / "b", tokens="2k")
    assert result.stages_run == 0
    summary = {t.key: t for t in tiny.records.experiment_summary("tiny").trials}
    assert result.metrics["lm_loss"] == pytest.approx(
        summary[result.trial].final_metrics["lm_loss"], abs=1e-9
    )


def test_build_is_logged_to_the_experiments_mlflow_store(tiny, tmp_path):
    """Metrics (its eval first), card, report and checkpoint path in a run nested under the experiment's
    parent run; the same recipe built again logs to the same run; without a store, nothing is created."""
    from ablate.track.mlflow import MlflowMirror
    from ablate.track.mlflow_names import trial_run_name

    store = f"sqlite:///{tmp_path}/mlflow.db"
    spec = tmp_path / "tiny.yaml"
    spec.write_text(tiny.spec_path.read_text().replace(f"sqlite:///{tiny.root}/mlflow.db", store))
    mirror = MlflowMirror(store, "tiny")
    parent = mirror.parent_run()  # what `ablate submit` made
    said: list[str] = []
    kwargs = {"out": tmp_path / "b", "tokens": "2k", "throughput": False, "reports_dir": tmp_path / "r"}
    result = pipeline.build(open_source(str(spec)), say=said.append, **kwargs)
    run = mirror.client.get_run(result.mlflow_run)
    trial = next(t for t in tiny.loaded.trials if t.key == result.trial)
    assert (
        run.info.run_name == f"build-{trial_run_name(trial.overrides)}-2k" and run.info.status == "FINISHED"
    )
    tags, metrics, params = run.data.tags, run.data.metrics, run.data.params
    assert tags["mlflow.parentRunId"] == parent and tags["ablate.role"] == "build"
    assert tags["ablate.checkpoint"] == result.model_dir and result.model_dir in tags["mlflow.note.content"]
    assert list(metrics)[0] == "eval/lm_loss" and metrics["eval/lm_loss"] == result.metrics["lm_loss"]
    assert metrics["teacher/lm_loss"] == result.teacher_metrics["lm_loss"]
    assert metrics["params/student"] == result.params["student"] == int(params["student.params"])
    assert params["recipe"] == result.recipe_id and params["trial"] == result.trial
    artifacts = {
        a.path
        for folder in ("card", "report", "build")
        for a in mirror.client.list_artifacts(run.info.run_id, folder)
    }
    assert {"card/README.md", "report/build.md", "build/build.json", "build/plan.json"} <= artifacts
    assert any(f"MLflow: build run {run.info.run_id}" in line for line in said)

    again = pipeline.build(open_source(str(spec)), **kwargs)
    assert again.export_reused and again.mlflow_run == run.info.run_id
    assert len(mirror.client.search_runs([mirror.experiment_id])) == 2  # the parent and the build

    said.clear()
    missing = pipeline.build(open_source(str(tiny.spec_path)), say=said.append, **kwargs)
    assert missing.mlflow_run == "" and not (tiny.root / "mlflow.db").exists()
    assert any("MLflow: no store at" in line for line in said)


def test_best_is_the_lowest_final_lm_loss_and_trial_can_be_named(tiny, monkeypatch):
    source = open_source(str(tiny.spec_path))
    summary = tiny.records.experiment_summary("tiny").trials
    best = min(summary, key=lambda t: t.final_metrics["lm_loss"])
    recipe = resolve(source)  # the report's choice when ablate.report is there, else the same rule here
    assert recipe.trial.key == best.key
    monkeypatch.setitem(sys.modules, "ablate.report", None)  # without the report module
    recipe = resolve(source)
    assert recipe.trial.key == best.key and "lowest final lm_loss" in recipe.chosen_by
    other = next(t.key for t in summary if t.key != best.key)
    named = resolve(source, trial=other)
    assert named.trial.key == other and named.chosen_by == "named with --trial"


def test_best_follows_the_report_when_it_names_one(tiny, monkeypatch):
    import types

    summary = tiny.records.experiment_summary("tiny").trials
    worst = max(summary, key=lambda t: t.final_metrics["lm_loss"]).key
    fake = types.ModuleType("ablate.report")
    fake.build_report = lambda records, name, metric: types.SimpleNamespace(best_trial=worst)
    monkeypatch.setitem(sys.modules, "ablate.report", fake)
    recipe = resolve(open_source(str(tiny.spec_path)))
    assert recipe.trial.key == worst and "report" in recipe.chosen_by


def test_build_by_experiment_name_is_the_same_recipe(tiny, tmp_path):
    by_spec = resolve(open_source(str(tiny.spec_path)))
    by_name = resolve(open_source("tiny", db=tiny.db, artifacts=str(tiny.artifacts)))
    assert by_name.id == by_spec.id and by_name.trial.key == by_spec.trial.key
    assert [s.hash for s in by_name.chain] == [s.hash for s in by_spec.chain]


def test_build_by_experiment_name_benchmarks_as_the_recorded_spec_asks(tiny):
    """The recorded spec's eval section is not part of a trial key, but its benchmarks are part of a build."""
    import dataclasses

    source = open_source("tiny", db=tiny.db, artifacts=str(tiny.artifacts))
    assert not resolve(source).benchmarks  # tiny.yaml has no eval.tasks
    asked = dataclasses.replace(source, spec_text=source.spec_text + "\neval: {tasks: [pydoc_cloze]}\n")
    recipe = resolve(asked)
    assert [(s.config["model"], s.config["task"]) for s in recipe.benchmarks] == [
        ("teacher", "pydoc_cloze"),
        ("student", "pydoc_cloze"),
    ]
    assert recipe.trial.key == resolve(source).trial.key


# --- bad input: clear errors, nothing overwritten ----------------------------------------------------


def test_no_finished_trial_is_an_error(tmp_path):
    spec = write_spec(tmp_path, name="unfinished")
    submit_in_process(spec, run=set())  # registered, nothing ran
    out = tmp_path / "out"
    with pytest.raises(BuildError, match="no finished trial"):
        pipeline.build(open_source(str(spec)), out=out, reports_dir=tmp_path / "reports")
    assert not out.exists() and not (tmp_path / "reports").exists()
    # never submitted at all: the same error, and the database is not created by asking
    fresh = tmp_path / "never"
    fresh.mkdir()
    with pytest.raises(BuildError, match="no finished trial"):
        resolve(open_source(str(write_spec(fresh, name="never"))))
    assert not (fresh / "ablate.db").exists()


def test_unknown_trial_key_is_an_error(tiny):
    with pytest.raises(BuildError, match="unknown trial 'nope'.*known trials"):
        resolve(open_source(str(tiny.spec_path)), trial="nope")


def test_unknown_experiment_name_is_an_error(tiny, tmp_path):
    with pytest.raises(BuildError, match="no experiment named 'nope'.*known: tiny"):
        open_source("nope", db=tiny.db)
    with pytest.raises(BuildError, match="no database"):
        open_source("nope", db=f"sqlite:///{tmp_path}/missing.db")


def test_foreign_output_folder_is_refused_and_left_alone(tiny, tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(BuildError, match="not an ablate build"):
        _build(tiny, tmp_path, out=out)
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and (out / "notes.txt").read_text() == "mine"
    file_out = tmp_path / "a-file"
    file_out.write_text("x")
    with pytest.raises(BuildError, match="not a directory"):
        _build(tiny, tmp_path, out=file_out)
    assert not (tmp_path / "reports").exists()


def test_output_folder_of_another_recipe_is_refused_and_left_alone(tiny, tmp_path):
    out = tmp_path / "b"
    first = _build(tiny, tmp_path, out=out, tokens="2k")
    snapshot = {p.relative_to(out): p.stat().st_mtime_ns for p in out.rglob("*")}
    with pytest.raises(BuildError, match="another recipe"):
        _build(tiny, tmp_path, out=out, tokens="4k")
    assert {p.relative_to(out): p.stat().st_mtime_ns for p in out.rglob("*")} == snapshot
    assert check_out(out, first.recipe_id)["recipe_id"] == first.recipe_id


def test_bad_token_budget_is_an_error(tiny):
    with pytest.raises(BuildError, match="--tokens"):
        resolve(open_source(str(tiny.spec_path)), tokens="lots")


def test_teacher_is_evaluated_on_the_same_split(tiny, tmp_path):
    result = _build(tiny, tmp_path, out=tmp_path / "b", tokens="2k")
    assert math.isfinite(result.teacher_metrics["lm_loss"]) and result.teacher_metrics["tokens"] > 0
    assert result.teacher_metrics["lm_loss"] != result.metrics["lm_loss"]


def test_build_leases_and_records_its_stages_like_a_submission(tiny, tmp_path):
    """A stage another live submission holds is waited for, not run twice; then the build claims it
    (one more attempt) and records it completed, with no lease left behind."""
    import threading

    from sqlalchemy import select

    from ablate.track.db import Stage as StageRow
    from ablate.track.leases import Leases

    source = open_source(str(tiny.spec_path))
    final = resolve(source, tokens="3k").final_distill
    tiny.records.upsert_stage(final.hash, final.kind, final.config, final.parents)
    other = Leases(tiny.records)
    assert other.claim_stage(final.hash).state == "claimed"
    timer = threading.Timer(1.5, other.unclaim_stage, args=(final.hash,))
    timer.start()
    said: list[str] = []
    try:
        result = _build(tiny, tmp_path, out=tmp_path / "leased", tokens="3k", say=said.append)
    finally:
        timer.cancel()
    assert any("being run by another submission" in line and final.hash in line for line in said)
    actions = {s["hash"]: s["action"] for s in result.stages}
    assert [(s["kind"], s["action"]) for s in result.stages] == [
        ("tokenize", "reused"),
        ("teacher", "reused"),
        ("importance", "reused"),
        ("prune", "reused"),
        ("distill", "run"),
        ("eval", "run"),
    ]
    assert actions[final.hash] == "run"
    with tiny.records._read() as s:
        rows = {r.hash: r for r in s.scalars(select(StageRow).where(StageRow.hash.in_(list(actions))))}
    assert all(r.status == "completed" and r.lease_owner is None for r in rows.values())
    assert rows[final.hash].attempts == 2  # the other submission's claim, then the build's


def test_a_failing_stage_is_recorded_failed_and_stops_the_build(tiny, tmp_path, monkeypatch):
    def broken(stage, ctx):
        raise RuntimeError("the disk is full")

    monkeypatch.setitem(stage_runners.RUNNERS, "distill", broken)
    final = resolve(open_source(str(tiny.spec_path)), tokens="5k").final_distill
    with pytest.raises(RuntimeError, match="the disk is full"):
        _build(tiny, tmp_path, out=tmp_path / "failed", tokens="5k")
    info = tiny.records.get_stage(final.hash)
    assert info.status == "failed" and info.error == "RuntimeError: the disk is full"
    events = [e.message for e in tiny.records.events("tiny", min_level="error")]
    assert f"distill stage {final.hash} failed: RuntimeError: the disk is full" in events
