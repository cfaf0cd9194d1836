"""Per-step reports in batches (ablate.run.step_reports): every step reaches the driver once and in order,
a batch spans about `every_s` of training, the first and the last step end a batch, and a one-process
trial (every_s 0) still reports every step alone."""

from __future__ import annotations

from ablate.distill.parallel import Parallel
from ablate.run.step_reports import EVERY_S, MAX_STEPS, StepBatches, unbatch


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def run(steps: int, step_s: float, every_s: float) -> list[dict]:
    sent: list[dict] = []
    clock = Clock()
    batches = StepBatches(sent.append, Parallel(), every_s=every_s, clock=clock)
    for step in range(1, steps + 1):
        clock.now += step_s
        batches.add({"step": step, "steps": steps, "loss": 1.0 / step, "m": {"loss": 1.0 / step}})
    return sent


def test_batches_span_about_every_s_and_carry_every_step_once_in_order():
    sent = run(steps=40, step_s=0.5, every_s=3.0)
    assert [len(r["batch"]) for r in sent] == [1, 6, 6, 6, 6, 6, 6, 3]  # the first alone, the last ends one
    items = [item for r in sent for item in unbatch(r)]
    assert [i["step"] for i in items] == list(range(1, 41))
    for r in sent:  # the newest step at the top: what Tune's schedulers read
        assert r["step"] == r["batch"][-1]["step"] and r["loss"] == r["batch"][-1]["loss"]


def test_a_one_process_trial_reports_every_step_alone():
    sent = run(steps=5, step_s=0.0, every_s=0.0)  # even at no measurable step time
    assert [len(r["batch"]) for r in sent] == [1] * 5
    assert StepBatches(print, Parallel()).every_s == 0.0  # the default in one process
    assert StepBatches(print, Parallel("ddp", 0, 2)).every_s == EVERY_S  # on several workers


def test_steps_slower_than_every_s_go_out_alone_and_instant_ones_are_bounded():
    assert [len(r["batch"]) for r in run(steps=4, step_s=10.0, every_s=3.0)] == [1, 1, 1, 1]
    sizes = [len(r["batch"]) for r in run(steps=2 * MAX_STEPS + 1, step_s=0.0, every_s=3.0)]
    assert max(sizes) == MAX_STEPS and sum(sizes) == 2 * MAX_STEPS + 1


def test_flush_sends_what_is_held_and_nothing_twice():
    sent: list[dict] = []
    batches = StepBatches(sent.append, Parallel(), every_s=3.0, clock=Clock())
    batches.flush()
    assert sent == []  # nothing held: nothing sent
    batches.size = 10
    for step in (1, 2, 3):  # a run that stops (diverges) before its batch is full
        batches.add({"step": step, "steps": 100})
    assert sent == []
    batches.flush()
    batches.flush()
    assert [[i["step"] for i in unbatch(r)] for r in sent] == [[1, 2, 3]]


def test_a_result_without_a_batch_is_one_step():
    assert unbatch({"step": 3, "steps": 9, "loss": 0.5}) == [{"step": 3, "steps": 9, "loss": 0.5}]
