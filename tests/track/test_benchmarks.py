"""Benchmark results in the records: written per stage with their standard errors, replaced on rewrite."""

import math


def test_results_round_trip_per_stage_and_replace(records):
    results = {
        "pydoc_cloze": {"acc": 0.5, "acc_stderr": 0.05, "acc_norm": float("nan")},
        "arc_easy": {"acc": 0.25},
    }
    assert records.record_benchmarks("benchmark-aaa", results, samples={"pydoc_cloze": 122}) == 3
    records.record_benchmarks("benchmark-bbb", {"pydoc_cloze": {"acc": 0.75, "acc_stderr": 0.04}})
    got = records.benchmark_results(["benchmark-aaa", "benchmark-bbb", "benchmark-none"])
    assert set(got) == {"benchmark-aaa", "benchmark-bbb"}
    assert got["benchmark-aaa"]["pydoc_cloze"]["acc"] == 0.5
    assert got["benchmark-aaa"]["pydoc_cloze"]["acc_stderr"] == 0.05
    assert math.isnan(got["benchmark-aaa"]["pydoc_cloze"]["acc_norm"])
    assert got["benchmark-aaa"]["arc_easy"] == {"acc": 0.25}
    records.record_benchmarks("benchmark-bbb", {"pydoc_cloze": {"acc": 0.8, "acc_stderr": 0.03}})
    assert records.benchmark_results(["benchmark-bbb"])["benchmark-bbb"]["pydoc_cloze"] == {
        "acc": 0.8,
        "acc_stderr": 0.03,
    }
    assert records.benchmark_results([]) == {}
