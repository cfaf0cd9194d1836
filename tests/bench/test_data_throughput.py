"""bench/data_throughput.py on its smallest setting."""

import pytest

from tests.bench.conftest import load


@pytest.mark.slow  # two fresh subprocesses for the memory figures
def test_data_bench_reports_every_figure(tmp_path, monkeypatch):
    monkeypatch.setenv("ABLATE_CACHE", str(tmp_path / "cache"))
    report = load("data_throughput").main(
        ["--tokenizer", "builtin:tiny-mistral", "--small", "2e4", "--large", "1e5", "--seq-len", "64",
         "--global-batch", "4", "--steps", "3", "--repeats", "1", "--work", str(tmp_path)]
    )  # fmt: skip
    tokenize, load_, memory = report["tokenize"], report["load"], report["prepare_memory"]
    assert (
        tokenize["tokens"] > 2e4
        and tokenize["ratio_1proc_vs_direct"] > 0
        and tokenize["ratio_2proc_vs_direct"] > 0
    )
    assert load_["tokens_per_s"] > 0 and load_["blend"] == [0.75, 0.25]
    assert memory["large"]["tokens"] > 2.5 * memory["small"]["tokens"] and memory["peak_rss_ratio"] > 0
