"""TensorRT-LLM: the one-line notice and exact commands here, and the LLM-API calls against a stand-in."""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path

import pytest
from transformers import AutoConfig

from ablate.build import pipeline, trtllm
from ablate.build.recipe import open_source


def test_not_installed_here_and_says_so_in_one_line(tmp_path):
    assert not trtllm.available()  # TensorRT-LLM is not installable on these machines
    line = trtllm.unavailable_line(tmp_path / "commands.sh")
    assert "\n" not in line and "TensorRT-LLM is not installed" in line and str(tmp_path) in line


def test_commands_cover_every_engine_and_measurement():
    script = trtllm.commands(
        {"student": "/b/model", "teacher": "org/teacher"},
        "/b/trtllm",
        {"student": "mistral", "teacher": "qwen2"},
        batch_sizes=(1, 8),
        lengths=((128, 128), (512, 64)),
    )
    assert script.startswith("#!/usr/bin/env bash") and "set -euo pipefail" in script
    assert "--batch-sizes 1,8 --lengths 128:128,512:64" in script
    assert "examples/models/core/llama/convert_checkpoint.py --model_dir $STUDENT" in script
    assert "examples/models/core/qwen/convert_checkpoint.py --model_dir $TEACHER" in script
    assert "--max_batch_size 8 --max_input_len 512 --max_seq_len 576" in script
    for label in ("student", "teacher"):
        for precision in ("bf16", "fp8"):
            assert f"--output_dir $OUT/engines/{label}-{precision}" in script
            for data in ("128-128", "512-64"):
                for b in (1, 8):
                    assert (
                        f"--engine_dir $OUT/engines/{label}-{precision} --dataset $OUT/dataset-{data}.jsonl --max_batch_size {b} "
                        in script
                    )
    assert script.count("prepare_dataset.py --stdout") == 2
    completed = subprocess.run(["bash", "-n"], input=script, text=True, capture_output=True)
    assert completed.returncode == 0, completed.stderr


def test_module_cli_refuses_engines_without_tensorrt_llm(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "ablate.build.trtllm", "engines", "--model", "student=x", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2 and "tensorrt_llm is not importable" in proc.stderr


class FakeLLM:
    """Records how ablate drives TensorRT-LLM's LLM API."""

    made: list[dict] = []

    def __init__(self, model, dtype="auto", build_config=None, quant_config=None, **kwargs):
        self.args = {
            "model": model,
            "dtype": dtype,
            "build_config": build_config,
            "quant_config": quant_config,
        }
        FakeLLM.made.append(self.args)

    def save(self, engine_dir):
        Path(engine_dir, "rank0.engine").write_text("engine")

    def generate(self, prompts, params):
        return [
            types.SimpleNamespace(outputs=[types.SimpleNamespace(token_ids=[0] * params.max_tokens)])
            for _ in prompts
        ]

    def shutdown(self):
        self.args["shut"] = True


@pytest.fixture
def fake_trtllm(monkeypatch):
    FakeLLM.made = []
    root = types.ModuleType("tensorrt_llm")
    engine = types.ModuleType("tensorrt_llm._tensorrt_engine")
    llmapi = types.ModuleType("tensorrt_llm.llmapi")
    engine.LLM = FakeLLM
    root.SamplingParams = lambda max_tokens, ignore_eos: types.SimpleNamespace(
        max_tokens=max_tokens, ignore_eos=ignore_eos
    )
    llmapi.BuildConfig = lambda **kw: dict(kw)
    llmapi.QuantAlgo = types.SimpleNamespace(FP8="FP8")
    llmapi.QuantConfig = lambda quant_algo, kv_cache_quant_algo: {
        "quant_algo": quant_algo,
        "kv": kv_cache_quant_algo,
    }
    for name, module in (
        ("tensorrt_llm", root),
        ("tensorrt_llm._tensorrt_engine", engine),
        ("tensorrt_llm.llmapi", llmapi),
    ):
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(trtllm, "available", lambda: True)
    return FakeLLM


def test_engines_through_the_llm_api(fake_trtllm, tmp_path):
    model = tmp_path / "hf"
    AutoConfig.for_model("mistral", vocab_size=300).save_pretrained(model)
    table = trtllm.run_engines(
        {"student": str(model)}, tmp_path / "trt", batch_sizes=(1, 4), lengths=((16, 8),)
    )
    assert [m["quant_config"] for m in fake_trtllm.made] == [None, {"quant_algo": "FP8", "kv": "FP8"}]
    assert all(m["dtype"] == "bfloat16" and m.get("shut") for m in fake_trtllm.made)
    assert fake_trtllm.made[0]["build_config"] == {
        "max_batch_size": 4,
        "max_input_len": 16,
        "max_seq_len": 24,
    }
    assert (tmp_path / "trt" / "engines" / "student-fp8" / "rank0.engine").is_file()
    assert {(r.precision, r.batch_size) for r in table.rows} == {
        ("bf16", 1),
        ("bf16", 4),
        ("fp8", 1),
        ("fp8", 4),
    }
    assert all(r.backend == "trtllm" and r.tokens_per_s > 0 for r in table.rows)
    saved = json.loads((tmp_path / "trt" / "throughput-trtllm.json").read_text())
    assert saved["backend"] == "trtllm" and len(saved["rows"]) == 4


def test_build_runs_engines_when_tensorrt_llm_is_there(fake_trtllm, tiny, tmp_path):
    result = pipeline.build(
        open_source(str(tiny.spec_path)), out=tmp_path / "b", tokens="2k", formats=["hf", "trtllm-fp8"],
        batch_sizes=(1,), lengths=((8, 4),), reports_dir=tmp_path / "reports", throughput=True,
    )  # fmt: skip
    assert [m["quant_config"] is not None for m in fake_trtllm.made] == [True, True]  # student, teacher
    assert fake_trtllm.made[1]["model"].endswith("trtllm/teacher-hf")  # the built-in teacher, materialised
    assert AutoConfig.from_pretrained(fake_trtllm.made[1]["model"]).hidden_size == 64
    assert {t["backend"] for t in result.throughput} == {"torch", "trtllm"}
    assert result.trtllm["available"] is True
    report = Path(result.report).read_text()
    assert "Backend: trtllm" in report and "| student | fp8 | 1 | 8 | 4 |" in report
