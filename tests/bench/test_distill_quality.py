"""bench/distill_quality.py on its smallest setting."""

from tests.bench.conftest import load


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
