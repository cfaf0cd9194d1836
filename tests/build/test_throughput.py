"""The torch throughput backend: the measured table (TTFT, TPOT, roofline), speedups, and the bench scripts."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM

from ablate.build import throughput as tp
from ablate.models.registry import tiny_mistral_config

ROOT = Path(__file__).parents[2]


def test_cpu_measures_float32_only_with_a_note():
    assert tp.default_precisions("cpu") == ["fp32"] and tp.default_mode("cpu") == "eager"

    def tiny():
        return AutoModelForCausalLM.from_config(tiny_mistral_config())

    seen = []
    table = tp.measure({"student": tiny, "teacher": tiny}, "cpu", (1, 2), ((8, 4),), on_row=seen.append)
    measured = [r for r in table.rows if not r.skipped]
    assert {(r.model, r.precision, r.batch_size) for r in measured} == {
        (m, "fp32", b) for m in ("student", "teacher") for b in (1, 2)
    }
    assert all(r.tokens_per_s > 0 and r.params > 0 for r in measured) and len(seen) == 4
    assert all(r.ttft_s > 0 and r.tpot_s > 0 and r.mode == "eager" for r in measured)
    assert all(r.roofline_tpot_s == 0 and r.roofline_ratio == 0 for r in measured)  # no bandwidth for a CPU
    assert any("not a serving measurement" in n for n in table.notes)
    lines = "\n".join(tp.format_table(table))
    assert (
        "| student | fp32 | 2 | 8 | 4 |" in lines
        and "student/teacher" in lines
        and "TPOT / roofline" in lines
    )
    # asking for bf16/fp8 on a CPU gives rows that say why they were not measured
    asked = tp.measure({"student": tiny}, "cpu", (1,), ((8, 4),), precisions=["fp32", "fp8"])
    assert [r.skipped for r in asked.rows if r.precision == "fp8"] == [
        "fp8 is not measured on cpu (float32 only)"
    ]


def test_speedups_pair_fp8_with_bf16_and_student_with_teacher():
    rows = [
        tp.ThroughputRow("student", "torch", "bf16", 8, 128, 128, tokens_per_s=100.0, tpot_s=0.02),
        tp.ThroughputRow("student", "torch", "fp8", 8, 128, 128, tokens_per_s=140.0),
        tp.ThroughputRow("student", "torch", "fp8-wo", 8, 128, 128, tokens_per_s=120.0),
        tp.ThroughputRow("teacher", "torch", "bf16", 8, 128, 128, tokens_per_s=50.0),
        tp.ThroughputRow("teacher", "torch", "fp8", 8, 128, 128, skipped="out of GPU memory"),
    ]
    ups = {(s["kind"], s.get("model") or s.get("precision")): s["speedup"] for s in tp.speedups(rows)}
    assert ups == {
        ("fp8/bf16", "student"): pytest.approx(1.4),
        ("fp8-wo/bf16", "student"): pytest.approx(1.2),
        ("student/teacher", "bf16"): pytest.approx(2.0),
    }
    table = tp.ThroughputTable("H100", "torch", rows)
    assert tp.ThroughputTable.from_dict(table.to_dict()).rows == rows
    # a table saved before TTFT/TPOT existed still loads
    old = {
        "device": "H100",
        "backend": "torch",
        "notes": [],
        "rows": [
            {
                k: v
                for k, v in rows[0].to_dict().items()
                if k not in ("ttft_s", "tpot_s", "roofline_tpot_s", "mode")
            }
        ],
    }
    assert tp.ThroughputTable.from_dict(old).rows[0].tokens_per_s == 100.0


def test_format_table_shows_the_roofline_beside_the_measurement():
    row = tp.ThroughputRow("student", "torch", "bf16", 1, 512, 128, seconds=1.0, tokens_per_s=128.0,
                           ttft_s=0.05, tpot_s=0.0066, roofline_tpot_s=0.0033, device="NVIDIA H200")  # fmt: skip
    assert row.roofline_ratio == pytest.approx(2.0)
    lines = tp.format_table(tp.ThroughputTable("NVIDIA H200", "torch", [row]))
    assert "| student | bf16 | 1 | 512 | 128 | 128.0 | 50.00 | 6.60 | 3.30 | 2.00 |" in lines


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


def test_serve_fp8_bench_tiny_on_cpu(tmp_path, capsys):
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import serve_fp8
    finally:
        sys.path.remove(str(ROOT / "bench"))
    out = tmp_path / "serve.json"
    report = serve_fp8.main(["--config", "tiny", "--device", "cpu", "--out", str(out), "--repeats", "1"])
    by = {(r["precision"], r["batch_size"]): r for r in report["rows"]}
    assert by[("fp32", 1)]["tpot_s"] > 0 and by[("fp32", 2)]["ttft_s"] > 0
    assert all("CUDA" in by[(p, b)]["skipped"] for p in ("fp8", "fp8-wo") for b in (1, 2))
    assert out.is_file() and capsys.readouterr().out.startswith('{"row": ')
    # the GPU grid: both models' shapes, FP8 W8A8 and BF16 at batch 1 first
    assert serve_fp8.plan(serve_fp8.CONFIGS["gpu"])[:4] == [
        ("mn-minitron-8b", "bf16", 1), ("mn-minitron-8b", "bf16", 32),
        ("mn-minitron-8b", "fp8", 1), ("mn-minitron-8b", "fp8", 32),
    ]  # fmt: skip
    # a spent budget skips the rest, said so
    spent = serve_fp8.main(["--config", "tiny", "--device", "cpu", "--budget-s", "0"])
    assert all(r["skipped"] for r in spent["rows"]) and "budget" in spent["rows"][0]["skipped"]


def test_generate_fallback_reports_ttft_and_tpot():
    model = AutoModelForCausalLM.from_config(tiny_mistral_config()).eval()
    (row,) = tp.measure_model(model, "student", "fp32", (2,), ((8, 4),), mode="generate")
    assert row.mode == "generate" and row.ttft_s > 0 and row.tokens_per_s > 0 and not row.skipped


def test_card_throughput_section_is_replaced_on_rebuild():
    from ablate.build.summary import card_with_throughput

    table = tp.ThroughputTable(
        "cpu", "torch", [tp.ThroughputRow("student", "torch", "fp32", 1, 8, 4)]
    ).to_dict()
    once = card_with_throughput("# card\n\ntext\n", [table])
    assert card_with_throughput(once, [table]) == once and once.startswith("# card\n\ntext\n\n## Generation")
