"""`ablate build SPEC --dry-run` on the 8B recipe: config, card skeleton, stages and commands; no weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoConfig

from ablate.build import pipeline
from ablate.build.recipe import open_source
from ablate.models.arch import count_parameters

SPEC = Path(__file__).parents[2] / "specs" / "mistral-nemo-minitron-8b.yaml"
MN_MINITRON_8B = 8_414_105_600


@pytest.fixture
def no_weights(monkeypatch):
    """Any attempt to read weights fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("a dry run touched weights")

    monkeypatch.setattr("ablate.models.registry.load_model", refuse)
    monkeypatch.setattr("ablate.run.in_process.run_stage", refuse)
    monkeypatch.setattr("transformers.AutoModelForCausalLM.from_pretrained", refuse)


def test_dry_run_of_the_8b_recipe(tmp_path, monkeypatch, no_weights):
    monkeypatch.chdir(tmp_path)  # the spec's relative tracking paths land here (and must stay empty)
    out = tmp_path / "mn8b"
    result = pipeline.build(open_source(str(SPEC)), out=out, dry_run=True)
    config = AutoConfig.from_pretrained(out / "model")
    assert (config.hidden_size, config.intermediate_size, config.num_hidden_layers) == (4096, 11520, 40)
    assert (config.num_attention_heads, config.num_key_value_heads, config.head_dim) == (32, 8, 128)
    assert config.vocab_size == 131072
    assert count_parameters(config) == MN_MINITRON_8B
    assert result.params == {"teacher": 12_247_782_400, "student": MN_MINITRON_8B, "planned": MN_MINITRON_8B}
    assert not list(out.rglob("*.safetensors")) and not (tmp_path / ".ablate").exists()

    card = (out / "model" / "README.md").read_text()
    for needed in (
        "Dry run",
        "mistralai/Mistral-Nemo-Base-2407",
        "hidden_size 5120 -> 4096, intermediate_size 14336 -> 11520",
        "Teacher correction",
        "127B tokens",
        "batch aggregation l2, sequence aggregation mean",
        "peak LR 0.0001, min LR 4.5e-07, 60 warm-up steps, cosine",
        "global batch 768",
        "380B",
        "name: mistral-nemo-minitron-8b",
    ):
        assert needed in card, needed

    plan = json.loads((out / "plan.json").read_text())
    assert [s["kind"] for s in plan["stages"]] == ["tokenize", "teacher", "importance", "prune", "distill", "eval"]
    assert all(s["action"] == "would run" for s in plan["stages"])
    by_kind = {s["kind"]: s for s in plan["stages"]}
    assert by_kind["distill"]["config"]["distill"]["tokens"] == 380_000_000_000
    assert by_kind["teacher"]["config"]["correction"]["tokens"] == 127_000_000_000

    commands = (out / "trtllm" / "commands.sh").read_text()
    model_dir = str(out.resolve() / "model")
    assert f"STUDENT={model_dir}" in commands
    assert f"/{by_kind['teacher']['hash']}/model" in commands  # the corrected teacher's checkpoint
    assert (
        "python -m ablate.build.trtllm engines --model student=$STUDENT --model teacher=$TEACHER" in commands
    )
    for line in (
        "examples/models/core/llama/convert_checkpoint.py --model_dir $STUDENT",
        "--qformat fp8 --kv_cache_dtype fp8",
        "trtllm-build --checkpoint_dir $OUT/checkpoints/student-fp8",
        "trtllm-build --checkpoint_dir $OUT/checkpoints/teacher-bf16",
        "trtllm-bench --model $TEACHER",
    ):
        assert line in commands, line

    report = Path(result.report).read_text()
    assert result.report.endswith("reports/mistral-nemo-minitron-8b/build-dry-run.md")
    assert "8,414,105,600" in report and "would run" in report


def test_dry_run_twice_and_then_a_real_build_may_replace_it(tmp_path, monkeypatch, no_weights):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "mn8b"
    first = pipeline.build(open_source(str(SPEC)), out=out, dry_run=True)
    second = pipeline.build(open_source(str(SPEC)), out=out, dry_run=True)
    assert first.recipe_id == second.recipe_id
    manifest = json.loads((out / "build.json").read_text())
    assert manifest["dry_run"] is True and manifest["recipe_id"] == first.recipe_id
