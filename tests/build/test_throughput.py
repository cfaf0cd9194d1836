"""The torch throughput backend: FP8 linears, the measured table, speedups, and the bench script."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM

from ablate.build import throughput as tp
from ablate.models.registry import tiny_mistral_config

ROOT = Path(__file__).parents[2]


def test_fp8_linear_matches_the_bf16_product_within_fp8_rounding():
    torch.manual_seed(0)
    linear = nn.Linear(64, 32, bias=True).to(torch.bfloat16)
    x = torch.randn(2, 5, 64, dtype=torch.bfloat16)
    ref = linear(x).float()
    emulated = tp.FP8Linear(linear, emulate=True)
    assert emulated.weight_fp8.dtype == torch.float8_e4m3fn and emulated.weight_scale.shape == (1, 32)
    out = emulated(x)
    assert out.shape == ref.shape and out.dtype == torch.bfloat16
    assert ((out.float() - ref).norm() / ref.norm()) < 0.06
    if hasattr(torch, "_scaled_mm"):
        try:
            scaled = tp.FP8Linear(linear, emulate=False)(x).float()
        except RuntimeError:
            pytest.skip("this torch has no FP8 product on CPU")
        assert torch.allclose(scaled, out.float(), atol=0.05, rtol=0.05)


def test_quantize_fp8_keeps_lm_head_and_generation_works():
    model = AutoModelForCausalLM.from_config(tiny_mistral_config()).to(torch.bfloat16).eval()
    replaced = tp.quantize_fp8(model, emulate=True)
    assert replaced == 4 * 7  # q k v o gate up down per layer
    assert isinstance(model.lm_head, nn.Linear) and not isinstance(model.lm_head, tp.FP8Linear)
    assert tp.time_generate(model, 2, 8, 4) > 0


def test_cpu_measures_float32_only_with_a_note():
    assert tp.precisions_for("cpu") == ["fp32"] and not tp.fp8_supported("cpu")

    def tiny():
        return AutoModelForCausalLM.from_config(tiny_mistral_config())

    seen = []
    table = tp.measure({"student": tiny, "teacher": tiny}, "cpu", (1, 2), ((8, 4),), on_row=seen.append)
    measured = [r for r in table.rows if not r.skipped]
    assert {(r.model, r.precision, r.batch_size) for r in measured} == {
        (m, "fp32", b) for m in ("student", "teacher") for b in (1, 2)
    }
    assert all(r.tokens_per_s > 0 and r.params > 0 for r in measured) and len(seen) == 4
    assert any("float32 only" in n for n in table.notes)
    lines = "\n".join(tp.format_table(table))
    assert "| student | fp32 | 2 | 8 | 4 |" in lines and "student/teacher" in lines
    # asking for bf16/fp8 on a CPU gives rows that say why they were not measured
    asked = tp.measure({"student": tiny}, "cpu", (1,), ((8, 4),), precisions=["fp32", "fp8"])
    assert [r.skipped for r in asked.rows if r.precision == "fp8"] == ["fp8 is not measured on cpu"]


def test_speedups_pair_fp8_with_bf16_and_student_with_teacher():
    rows = [
        tp.ThroughputRow("student", "torch", "bf16", 8, 128, 128, tokens_per_s=100.0),
        tp.ThroughputRow("student", "torch", "fp8", 8, 128, 128, tokens_per_s=140.0),
        tp.ThroughputRow("teacher", "torch", "bf16", 8, 128, 128, tokens_per_s=50.0),
        tp.ThroughputRow("teacher", "torch", "fp8", 8, 128, 128, skipped="out of GPU memory"),
    ]
    ups = {(s["kind"], s.get("model") or s.get("precision")): s["speedup"] for s in tp.speedups(rows)}
    assert ups == {
        ("fp8/bf16", "student"): pytest.approx(1.4),
        ("student/teacher", "bf16"): pytest.approx(2.0),
    }
    table = tp.ThroughputTable("H100", "torch", rows)
    assert tp.ThroughputTable.from_dict(table.to_dict()).rows == rows


def test_failing_precision_keeps_the_other_rows():
    def broken():
        raise RuntimeError("no kernel\nmore detail")

    def tiny():
        return AutoModelForCausalLM.from_config(tiny_mistral_config())

    table = tp.measure({"student": tiny, "teacher": broken}, "cpu", (1,), ((8, 2),))
    assert [r.skipped for r in table.rows if r.model == "student"] == [""]
    assert [r.skipped for r in table.rows if r.model == "teacher"] == ["failed: RuntimeError: no kernel"]


def test_bench_script_prints_json_on_cpu(tmp_path, monkeypatch, capsys):
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import build_throughput
    finally:
        sys.path.remove(str(ROOT / "bench"))
    out = tmp_path / "bench.json"
    report = build_throughput.main(
        ["--device", "cpu", "--preset", "tiny", "--batch-sizes", "1", "--lengths", "8:4", "--out", str(out),
         "--repeats", "1", "--models", "teacher,student"]
    )  # fmt: skip
    assert report["models"]["student"]["params"] < report["models"]["teacher"]["params"]
    assert [r["model"] for r in report["rows"]] == ["teacher", "student"]
    assert out.is_file() and '"bench": "build_throughput"' in capsys.readouterr().out
    _, student = build_throughput.preset("mn-minitron-8b")
    assert (student.hidden_size, student.intermediate_size) == (4096, 11520)
