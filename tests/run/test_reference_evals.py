"""The reference evals (pruned-eval, teacher-eval: shared stages) in a submission: each trial's records get
its pruned student's held-out metrics at step 0 (not for `scratch`, which re-initialises it) and its
teacher's LM loss, equal to an independent evaluation; trials that finished before the stages existed get
them from a re-submission that runs only those stages; the report then shows its reference rows."""

from __future__ import annotations

import shutil
import sqlite3

import pytest

from ablate.plan.graph import build_graph
from ablate.plan.stages import PRUNED_EVAL, TEACHER_EVAL
from ablate.spec.validate import load_spec
from tests.run.conftest import mlflow_client, records_of, reference_evals, submit_here

pytestmark = pytest.mark.slow

CORE = {"eval_lm_loss", "eval_perplexity", "eval_kl_to_teacher", "eval_top1_agreement"}


def _step0(records, trial_id: int) -> dict[str, float]:
    return {r.name: r.value for r in records.trial_metrics(trial_id, final=False) if r.step == 0}


def _all_metrics(records) -> dict[tuple[str, str, int | None], float]:
    return {
        (t.key, r.name, r.step): r.value for t in records.trials("tiny") for r in records.trial_metrics(t.id)
    }


def _check_records(workspace) -> dict[str, dict[str, float]]:
    """Every completed trial of tiny.yaml's experiment has the reference metrics its stages measured
    (scratch trials, which more_losses.yaml may have added, no step 0); returns trial key -> step 0 values."""
    graph = build_graph(load_spec(workspace / "tiny.yaml").trials)
    out = {}
    with records_of(workspace) as records:
        for t in records.trials("tiny"):
            final, step0 = records.final_metrics(t.id), _step0(records, t.id)
            assert final["teacher_lm_loss"] > 0, t.key
            if t.overrides.get("distill.loss") == "scratch":
                assert not step0, (t.key, step0)  # its step 0 is a re-initialised model, not the pruned one
                continue
            assert CORE <= set(step0), (t.key, step0)
            assert 0 <= step0["eval_top1_agreement"] <= 1 and step0["eval_kl_to_teacher"] > 0
            out[t.key] = step0
    by_prune: dict[str, list[dict[str, float]]] = {}
    for key, step0 in out.items():
        by_prune.setdefault(graph.trial_stages[key][PRUNED_EVAL], []).append(step0)
    assert len(by_prune) == 2 and all(len(v) >= 2 and v[0] == v[1] for v in by_prune.values())
    return out


def test_first_submission_records_each_trials_references(tiny_run):
    """tiny.yaml's first submission (the session's): step 0 of each trial is its pruned model's held-out
    metrics, equal to ablate.evaluate on the prune artifact's model (the teacher's LM loss likewise)."""
    from ablate.data.prepare import prepare_splits
    from ablate.evaluate import evaluate
    from ablate.models.registry import load_model
    from ablate.run.artifacts import ArtifactStore

    workspace = tiny_run.workspace
    step0 = _check_records(workspace)
    loaded = load_spec(workspace / "tiny.yaml")
    graph = build_graph(loaded.trials)
    store = ArtifactStore(workspace / ".ablate" / "artifacts")
    teacher, tokenizer = load_model("builtin:tiny-mistral")
    config = graph.stages[graph.trial_stages[loaded.trials[0].key][TEACHER_EVAL]].config
    splits = prepare_splits(tokenizer, config["data"], str(workspace), config["calibration"]["samples"])
    batch = config["calibration"]["batch_size"]
    teacher_loss = evaluate(teacher, splits.eval, batch_size=batch)["lm_loss"]
    with records_of(workspace) as records:
        for t in records.trials("tiny"):
            assert records.final_metrics(t.id)["teacher_lm_loss"] == pytest.approx(teacher_loss, abs=1e-6)
    for prune in {graph.trial_stages[key]["prune"] for key in step0}:
        model, _ = load_model(str(store.local_path(prune) / "model"))
        measured = evaluate(model, splits.eval, teacher=teacher, batch_size=batch)
        for key, values in step0.items():
            if graph.trial_stages[key]["prune"] == prune:
                assert values["eval_lm_loss"] == pytest.approx(measured["lm_loss"], abs=1e-6)
                assert values["eval_kl_to_teacher"] == pytest.approx(measured["kl_to_teacher"], abs=1e-6)
    client = mlflow_client(workspace)
    with records_of(workspace) as records:
        key = next(iter(step0))
        run_id = records.get_trial("tiny", key).mlflow_run_id
    (pruned_point,) = client.get_metric_history(run_id, "pruned/lm_loss")  # mirrored to MLflow, once
    assert pruned_point.step == 0 and pruned_point.value == pytest.approx(step0[key]["eval_lm_loss"])
    (teacher_point,) = client.get_metric_history(run_id, "teacher/lm_loss")
    assert teacher_point.value == pytest.approx(teacher_loss, abs=1e-6)


def test_trials_finished_before_the_stages_existed_get_them_from_a_resubmission(tiny_run, tmp_path):
    """A copy of the session's workspace as an ablate without the reference evals left it (their stages,
    links, artifacts and metrics gone), and with one trial's eval gone too: re-submitting runs those three
    stages and that eval, writes the rows, and the report shows the teacher and pruned rows with numbers;
    one more submission runs and writes nothing.

    The reference evals run beside the trials, not before them: with the teacher-eval held by another
    live submission, the trial runs and ends first; the teacher-eval runs once the other lets it go."""
    import threading

    from ablate.report import build_report
    from ablate.report.markdown import render_markdown
    from ablate.track.leases import Leases

    workspace = tmp_path / "ws"
    shutil.copytree(tiny_run.workspace, workspace, ignore=shutil.ignore_patterns(".tune", ".work"))
    graph = build_graph(load_spec(workspace / "tiny.yaml").trials)
    rerun = sorted(graph.trial_stages)[0]
    hashes = sorted(reference_evals(workspace / "tiny.yaml")) + [graph.trial_stages[rerun]["eval"]]
    for h in hashes:
        shutil.rmtree(workspace / ".ablate" / "artifacts" / h)
    db = sqlite3.connect(workspace / ".ablate" / "ablate.db")
    with db:
        marks = ",".join("?" * len(hashes))
        ids = [i for (i,) in db.execute(f"SELECT id FROM stages WHERE hash IN ({marks})", hashes)]
        assert len(ids) == 4
        db.execute(f"DELETE FROM trial_stages WHERE stage_id IN ({','.join('?' * len(ids))})", ids)
        db.execute(f"DELETE FROM stages WHERE id IN ({','.join('?' * len(ids))})", ids)
        db.execute("DELETE FROM metrics WHERE (step = 0 AND name LIKE 'eval_%') OR name = 'teacher_lm_loss'")
    db.close()
    with records_of(workspace) as records:
        assert all("teacher_lm_loss" not in records.final_metrics(t.id) for t in records.trials("tiny"))

    teacher_eval = graph.stages[graph.trial_stages[rerun][TEACHER_EVAL]]
    events: list[tuple[str, str]] = []
    with records_of(workspace) as records:
        records.upsert_stage(teacher_eval.hash, teacher_eval.kind, teacher_eval.config, teacher_eval.parents)
        other = Leases(records)
        assert other.claim_stage(teacher_eval.hash).state == "claimed"
        other.start_heartbeat()

        def progress(event: str, data: dict) -> None:
            events.append((event, data.get("hash") or data.get("key")))
            if event == "trial_done":  # the other submission lets the teacher-eval go
                other.unclaim_stage(teacher_eval.hash)

        # If the trial waited for the teacher-eval it would never end first: let go after 60 s regardless.
        fallback = threading.Timer(60, other.unclaim_stage, args=(teacher_eval.hash,))
        fallback.start()
        try:
            result = submit_here(workspace, "tiny.yaml", progress)
        finally:
            fallback.cancel()
            other.release_all()
    assert result.ok, result.to_dict()
    # the two pruned students', the teacher's and the trial's own evals; only that trial ran
    assert result.stages_run == {"eval": 4}
    assert result.stages_reused["distill"] == 4
    assert ("stage_wait", teacher_eval.hash) in events
    assert events.index(("trial_done", rerun)) < events.index(("stage_done", teacher_eval.hash)), events
    step0 = _check_records(workspace)

    with records_of(workspace) as records:
        rows = _all_metrics(records)
        report = build_report(records, "tiny", metric="lm_loss")
    teacher = [r for r in report.references if r.kind == "teacher"]
    pruned = [r for r in report.references if r.kind == "pruned"]
    assert len(teacher) == 1 and len(pruned) == 2
    assert all(not r.missing and r.metrics["lm_loss"] > 0 for r in teacher + pruned)
    # (a random tiny-mistral: the pruned student need not be worse than its teacher)
    assert sorted(r.metrics["lm_loss"] for r in pruned) == pytest.approx(
        sorted({v["eval_lm_loss"] for v in step0.values()})
    )
    assert report.recovered  # the share of the gap each trial closed needs both rows
    # each trial links 8 stages (tokenize .. eval, and the two reference evals); they share most of them
    c = report.compute
    assert c["naive_stages"] == 8 * len(report.trials) and c["stages_total"] < c["naive_stages"]
    text = render_markdown(report)
    teacher_line = next(line for line in text.splitlines() if line.startswith("| *teacher"))
    assert f"| {teacher[0].metrics['lm_loss']:.4g} |" in teacher_line
    lines = [
        line for line in text.splitlines() if ", pruned, before retraining" in line and line.startswith("| *")
    ]
    assert len(lines) == 2
    for row in pruned:
        assert any(f"| {row.metrics['lm_loss']:.4g} |" in line for line in lines), (row, lines)
    assert "Not in the records" not in text

    again = submit_here(workspace, "tiny.yaml")
    assert again.ok and again.stages_run == {} and again.stages_reused["eval"] == 7
    with records_of(workspace) as records:
        assert _all_metrics(records) == rows  # nothing written again
