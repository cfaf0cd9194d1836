"""The report's benchmark table reads the distilled student's and the teacher's results from the records;
a trial's other benchmarked models (its aligned model, shown in the Alignment section; a search
candidate's pruned model) must not replace the student's (a real study showed the aligned values under
the "distilled student" heading when they were recorded after it)."""

from __future__ import annotations

from ablate.report.benchmarks import benchmarks_of


def _benchmark(records, h: str, role: str, acc: float) -> str:
    records.upsert_stage(h, "benchmark", {"model": role, "task": "pydoc_cloze"})
    records.mark_stage_completed(h)
    records.record_benchmarks(h, {"pydoc_cloze": {"acc": acc, "acc_stderr": 0.04}})
    return h


def test_the_table_shows_the_distilled_student_not_its_aligned_model(tmp_path):
    from ablate.track.db import connect

    records = connect(f"sqlite:///{tmp_path}/ablate.db")
    try:
        records.upsert_experiment("bench", "name: bench\n", "0" * 16)
        # in the order a trial runs them: the student's benchmark, the teacher's, then the aligned model's
        stages = [
            _benchmark(records, "benchmark-pruned", "pruned", 0.40),  # a search candidate's, one-shot
            _benchmark(records, "benchmark-student", "student", 0.50),
            _benchmark(records, "benchmark-teacher", "teacher", 0.75),
            _benchmark(records, "benchmark-aligned", "aligned", 0.60),
        ]
        info = records.upsert_trial("bench", "k0", {"target": "width"}, stages=stages)
        got = benchmarks_of(records, {"k0": info.id})
    finally:
        records.close()
    assert got["teacher"]["pydoc_cloze"]["acc"] == 0.75
    assert got["trials"]["k0"]["pydoc_cloze"] == {"acc": 0.50, "acc_stderr": 0.04}
