"""Progress without a terminal (CI logs, pipes): a line per running trial or stage at most every LINE_S
seconds and at its last step, each with step of steps, loss, tokens/s and ETA; --quiet prints none."""

from __future__ import annotations

import io

from rich.console import Console

from ablate.commands.progress import StepProgress, Throttle, eta_s, step_text
from ablate.commands.submit import LiveProgress
from ablate.spec.units import format_duration


def _console() -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, width=160, force_terminal=False), buf


def _step(step: int, **more) -> dict:
    return {
        "step": step,
        "steps": 10,
        "loss": 3.0 / step,
        "tokens": 512.0 * step,
        "tokens_per_s": 256.0,
        **more,
    }


def test_eta_is_the_remaining_tokens_at_the_measured_rate():
    assert eta_s(_step(4)) == 6 * 512 / 256
    assert eta_s({"step": 0, "steps": 10}) is None and eta_s({"step": 3}) is None
    assert step_text(_step(4)) == "step 4/10, loss 0.75, 256 tok/s, ETA 12s"
    assert [format_duration(s) for s in (5, 125, 7500)] == ["5s", "2m05s", "2h05m"]


def test_throttle_lets_the_first_the_last_and_one_per_period_through():
    now = [0.0]
    throttle = Throttle(10.0, clock=lambda: now[0])
    passed = []
    for t in range(0, 30):
        now[0] = float(t)
        passed.append(throttle("k", last=t == 29))
    assert [t for t, ok in enumerate(passed) if ok] == [0, 10, 20, 29]


def test_trials_get_throttled_step_lines_and_their_eval_stage_without_a_terminal():
    console, buf = _console()
    with LiveProgress(console, trials=1, every=3600.0) as progress:
        progress("trial_start", {"key": "k1"})
        for step in range(1, 11):
            progress("trial_step", {"key": "k1", **_step(step)})
        progress("trial_stage", {"key": "k1", "stage": "evaluating and 1 benchmark(s)"})
        progress("trial_done", {"key": "k1", "metrics": {"perplexity": 9.5}})
    lines = [line for line in buf.getvalue().splitlines() if "k1" in line]
    assert "k1 distill step 1/10, loss 3, 256 tok/s, ETA 18s" in lines[0]
    assert "k1 distill step 10/10, loss 0.3, 256 tok/s, ETA 0s" in lines[1]  # the last step always
    assert "k1 evaluating and 1 benchmark(s)" in lines[2] and "k1 done" in lines[3]
    assert len(lines) == 4


def test_build_stages_are_named_in_their_lines_and_disabled_prints_nothing():
    console, buf = _console()
    with StepProgress(console, every=3600.0) as progress:
        for step in (1, 2, 10):
            progress({**_step(step), "stage": "teacher"})
        progress({**_step(1), "stage": "distill"})
    lines = buf.getvalue().splitlines()
    assert [line.split()[0] for line in lines] == ["teacher", "teacher", "distill"]
    assert lines[1].endswith("step 10/10, loss 0.3, 256 tok/s, ETA 0s")
    quiet_console, quiet_buf = _console()
    with StepProgress(quiet_console, enabled=False) as progress:
        progress(_step(1))
    assert quiet_buf.getvalue() == ""


def test_on_a_terminal_a_stage_bar_ends_with_its_summary_line():
    buf = io.StringIO()
    console = Console(file=buf, width=160, force_terminal=True, color_system=None)
    with StepProgress(console) as progress:
        for step in range(1, 11):
            progress({**_step(step), "stage": "distill"})
        progress({**_step(1), "stage": "teacher"})  # a second run gets its own bar
    assert "distill    step 10/10, loss 0.3, 256 tok/s, ETA 0s" in buf.getvalue()
