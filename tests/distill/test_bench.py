"""The benchmark scripts stay runnable: each on its smallest setting."""

import importlib.util
from pathlib import Path

BENCH = Path(__file__).parents[2] / "bench"


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_throughput_bench_reports_parts_and_overhead(capsys):
    report = load("distill_throughput").main(
        ["--config", "tiny", "--steps", "2", "--warmup", "1", "--threads", "1"]
    )
    assert report["timed_steps"] == 2 and report["train_tokens_per_s"] > 0
    parts = report["parts"]
    assert parts["step_sum_s"] > parts["student_forward_backward_s"] > 0 and parts["teacher_forward_s"] > 0
    assert report["mfu"] is None  # no GPU peak on CPU
    assert '"loop_overhead"' in capsys.readouterr().out


def test_quality_bench_runs_every_loss_and_resumes(tmp_path, capsys):
    args = ["--model", "builtin:tiny-mistral", "--target", "hidden_size=48,intermediate_size=64", "--tokens",
            "512", "--seq-len", "32", "--eval-tokens", "256", "--calibration-samples", "4", "--global-batch", "4",
            "--micro-batch", "4", "--threads", "1", "--work", str(tmp_path)]  # fmt: skip
    bench = load("distill_quality")
    report = bench.main(args)
    assert set(report["perplexity_after"]) == {"kld", "ce", "scratch"}
    assert all(r["steps"] == 4 and r["tokens"] == 512 for r in report["runs"].values())
    assert report["runs"]["scratch"]["before"]["perplexity"] != report["pruned_before"]["perplexity"]
    again = bench.main(args)  # every loss cached
    assert again["perplexity_after"] == report["perplexity_after"]
