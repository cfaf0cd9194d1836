"""bench/distill_throughput.py on its smallest setting."""

from tests.bench.conftest import load


def test_throughput_bench_reports_parts_and_overhead(capsys):
    report = load("distill_throughput").main(
        ["--config", "tiny", "--steps", "2", "--warmup", "1", "--threads", "1"]
    )
    assert report["timed_steps"] == 2 and report["train_tokens_per_s"] > 0
    parts = report["parts"]
    assert parts["step_sum_s"] > parts["student_forward_backward_s"] > 0 and parts["teacher_forward_s"] > 0
    assert report["mfu"] is None  # no GPU peak on CPU
    assert '"loop_overhead"' in capsys.readouterr().out
