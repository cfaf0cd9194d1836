"""The report's figures at 50 trials (the known experiment: 52 trials, 17 configurations, 12 findings):
every text element inside the figure, legends outside the axes, the teacher and the pruned students as
points, one training-objective panel per loss kind, held-out curves; and the report's reference rows."""

from __future__ import annotations

import dataclasses
import math

import pytest

from ablate.report.labels import Labels, short_axis_names
from ablate.report.markdown import render_markdown
from ablate.report.plot_loss import loss_figure
from ablate.report.plot_quality import quality_figure
from ablate.report.plotkit import rc, robust_range
from ablate.report.plots import finding_figure
from ablate.report.records import build_report
from tests.report.known import PRUNED_LOSS, TEACHER_LOSS

CORRECTION = {"global_batch": None, "lr": 0.0001, "micro_batch": None, "min_lr": 1e-05, "tokens": 16000}


@pytest.fixture(scope="module")
def report(known_sqlite):
    _, records, _ = known_sqlite
    return build_report(records, "known")


@pytest.fixture(scope="module")
def corrected(report):
    """The same report with a long-valued axis (a teacher.correction block on every other trial)."""
    trials = [
        dataclasses.replace(t, overrides={**t.overrides, "teacher.correction": CORRECTION if i % 2 else None})
        for i, t in enumerate(report.trials)
    ]
    return dataclasses.replace(report, trials=trials)


def _inside(ext, box) -> bool:
    return ext.x0 >= box.x0 - 1 and ext.y0 >= box.y0 - 1 and ext.x1 <= box.x1 + 1 and ext.y1 <= box.y1 + 1


def _check_layout(fig) -> None:
    """Every text element inside the canvas (tick labels through each axes' tight box, which holds the
    ticks matplotlib draws; every other text one by one); no legend over an axes' data area."""
    from matplotlib.text import Text

    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    box = fig.bbox
    ticks = {id(t) for ax in fig.axes for a in (ax.xaxis, ax.yaxis) for t in a.get_ticklabels(which="both")}
    texts = [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip() and id(t) not in ticks]
    assert texts
    for t in texts:
        ext = t.get_window_extent(renderer)
        assert _inside(ext, box), f"text {t.get_text()!r} at {ext} is outside the figure {box}"
    for ax in fig.axes:
        ext = ax.get_tightbbox(renderer)
        assert _inside(ext, box), f"axes {ax.get_title()!r} with its tick labels {ext} is outside {box}"
    legends = [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend())]
    for legend in legends:
        lb = legend.get_window_extent(renderer)
        for ax in fig.axes:
            assert not lb.overlaps(ax.get_window_extent(renderer)), "a legend covers an axes' data area"


def _check_no_text_overlaps(fig) -> None:
    """No two text elements (the title, axes titles and labels, legend title and entries, values written
    at the axis edge) cover each other; tick labels are matplotlib's to place."""
    from matplotlib.text import Text

    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    ticks = {id(t) for ax in fig.axes for a in (ax.xaxis, ax.yaxis) for t in a.get_ticklabels(which="both")}
    texts = [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip() and id(t) not in ticks]
    boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in texts]
    for i, (a, box_a) in enumerate(boxes):
        for b, box_b in boxes[i + 1 :]:
            assert not box_a.overlaps(box_b), f"text {a!r} at {box_a} overlaps {b!r} at {box_b}"
    for legend in fig.legends:  # and no other text runs into a legend's box (its title and entries)
        own = {id(t) for t in legend.findobj(Text)}
        box = legend.get_window_extent(renderer)
        for t in texts:
            ext = t.get_window_extent(renderer)
            assert id(t) in own or not ext.overlaps(box), (
                f"text {t.get_text()!r} at {ext} runs into the legend {box}"
            )


def _legend_texts(fig) -> list[str]:
    return [t.get_text() for legend in fig.legends for t in legend.get_texts()]


@pytest.mark.parametrize("which", ["report", "corrected"])
def test_every_figure_fits_at_50_trials(request, which):
    r = request.getfixturevalue(which)
    assert len(r.trials) >= 50
    labels = Labels(r.trials)
    with rc():
        figures = [loss_figure(r), quality_figure(r), *(finding_figure(f, labels) for f in r.findings)]
        for fig in figures:
            _check_layout(fig)
    texts = " ".join(t.get_text() for fig in figures for t in fig.findobj(lambda a: hasattr(a, "get_text")))
    assert '"lr"' not in texts and "global_batch" not in texts  # long values appear by their code only
    if which == "corrected":
        assert any("correction#1" in s for s in _legend_texts(figures[0]))


@pytest.mark.parametrize("which", ["report", "corrected"])
def test_the_quality_figure_title_clears_the_legend(request, which):
    """Constrained layout puts the legend at the top right, level with the title: the title must fit
    left of it (it ran under the legend's title before)."""
    r = request.getfixturevalue(which)
    with rc():
        fig = quality_figure(r)
        _check_no_text_overlaps(fig)
        _check_layout(fig)


def test_quality_figure_shows_the_teacher_and_the_pruned_students_as_points(report):
    with rc():
        fig = quality_figure(report)
    names = _legend_texts(fig)
    assert "teacher" in names and "pruned, before retraining" in names
    n_configs = len({Labels(report.trials).config(t) for t in report.finished})
    assert len(names) == n_configs + 2
    teacher_axes = fig.axes[-1]  # the broken size axis gives the teacher its own panel
    offsets = [c.get_offsets() for c in teacher_axes.collections if len(c.get_offsets())]
    assert any(math.isclose(float(o[0][1]), TEACHER_LOSS) for o in offsets)


def test_loss_figure_has_a_panel_per_objective_and_held_out_curves(report):
    with rc():
        fig = loss_figure(report)
    titles = [ax.get_title() for ax in fig.axes]
    for kind in ("kld:", "kld+intermediate:", "ce:", "scratch:"):
        assert sum(t.startswith(kind) for t in titles) == 1, titles
    (held,) = [ax for ax in fig.axes if ax.get_title().startswith("held-out")]
    assert "curves: evaluations during distillation" in held.get_title()
    assert len([line for line in held.lines if len(line.get_xdata()) > 2]) >= 40  # one curve per trial
    low, high = held.get_ylim()
    assert high < 6.5  # the far-off pruned depth student (6.5) sits on the edge, not stretching the axis


def test_robust_range_keeps_the_bulk_readable():
    lo, hi = robust_range([3.5, 3.6, 3.7, 3.8, 3.9, 9.3])
    assert 3.4 < lo < 3.5 and 3.9 < hi < 4.2
    assert robust_range([1.0, 2.0]) == pytest.approx((0.92, 2.08))


def test_short_names_and_the_key(corrected):
    assert short_axis_names(["distill.loss", "importance.width.batch_agg", "importance.depth.method"]) == {
        "distill.loss": "loss",
        "importance.width.batch_agg": "batch_agg",
        "importance.depth.method": "method",
    }
    assert short_axis_names(["a.loss", "b.loss"]) == {"a.loss": "a.loss", "b.loss": "b.loss"}
    labels = Labels(corrected.trials)
    assert labels.value("teacher.correction", CORRECTION) == "correction#1"
    assert labels.value("teacher.correction", None) == "none"
    assert (
        "correction#1",
        'teacher.correction = {"global_batch":null,"lr":0.0001,"micro_batch":null,'
        '"min_lr":1e-05,"tokens":16000}',
    ) in labels.key_rows()
    md = render_markdown(corrected)
    assert "Short names in the table and the figures:" in md and "| `correction#1` |" in md


def test_reference_rows_and_the_share_recovered(report):
    teacher = [r for r in report.references if r.kind == "teacher"]
    pruned = [r for r in report.references if r.kind == "pruned"]
    assert len(teacher) == 1 and teacher[0].metrics["lm_loss"] == pytest.approx(TEACHER_LOSS)
    assert teacher[0].metrics["kl_to_teacher"] == 0 and not teacher[0].missing
    assert sorted(r.metrics["lm_loss"] for r in pruned) == sorted([*PRUNED_LOSS.values()] * 2)  # x batch_agg
    t = next(t for t in report.finished if t.overrides["target"] == "width")
    share = (PRUNED_LOSS["width"] - t.metrics["lm_loss"]) / (PRUNED_LOSS["width"] - TEACHER_LOSS)
    assert report.recovered[t.key] == pytest.approx(share)
    md = render_markdown(report)
    assert "| *teacher* |" in md and "| *width, pruned, before retraining (batch_agg=l2)* |" in md
    assert f"| {share:.0%} | completed |" in md


def test_reference_rows_say_what_the_records_lack(report):
    bare = {
        t.key: {k: v for k, v in s.items() if not k.startswith("eval_")}
        for t in report.trials
        if (s := report.series.get(t.key))
    }
    from ablate.report.references import references_for

    trials = [
        dataclasses.replace(t, metrics={k: v for k, v in t.metrics.items() if k != "teacher_lm_loss"})
        for t in report.trials
    ]
    refs, recovered = references_for(trials, bare, report.teacher["params"], "lm_loss")
    assert not recovered
    assert all(r.missing for r in refs)
    assert "teacher_lm_loss" in refs[0].missing and "eval_every" in refs[-1].missing


def test_the_benchmark_table_names_trials_by_their_short_labels(corrected):
    """Rows as in the trial table: short axis names, a long value by its key-table code, never its JSON."""
    results = {"pydoc_cloze": {"acc": 0.5, "acc_stderr": 0.01}}
    trials = {t.key: results for t in corrected.trials[:4]}
    r = dataclasses.replace(corrected, benchmarks={"teacher": results, "trials": trials})
    md = render_markdown(r)
    table = md.split("## Benchmarks", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    assert len(rows) == 4
    labels = Labels(r.trials)
    for t, row in zip(r.trials[:4], rows, strict=True):
        assert row.startswith(f"| `{t.key}` ({labels.overrides(t)}) |"), row
    assert any("correction=correction#1" in row for row in rows)
    assert "global_batch" not in table and "distill.loss" not in table and "loss=" in table
