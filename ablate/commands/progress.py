"""Progress of long work for humans on stderr: stage, step of steps, loss, tokens/s and ETA.

On a terminal it is a live rich bar; elsewhere (CI logs, pipes, `nohup`) rich draws no bars, so one plain
line is printed at most every LINE_S seconds per bar (and at its last step), and a log never goes silent
for minutes. `--quiet` (or --json) turns it all off. The trainer's `on_step` metrics carry step, steps,
loss, tokens and tokens_per_s (ablate.distill.train); `stage` names the stage when several run in turn
(ablate.run.in_process adds it).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ablate.secrets import redact_text
from ablate.spec.units import format_duration

LINE_S = 10.0
"""Seconds between two plain progress lines of one bar (when stderr is not a terminal)."""

T = TypeVar("T")


def quiet_option(f):
    """`--quiet`: no progress on stderr (the result on stdout and errors stay), for scripts."""
    return click.option(
        "--quiet", "-q", is_flag=True, help="No progress on stderr (result and errors only)."
    )(f)


def live(console: Console) -> bool:
    """Whether rich draws live bars on this console (a real terminal)."""
    return console.is_terminal and not console.is_dumb_terminal


def _si(x: float) -> str:
    return f"{x / 1e6:.2f}M" if x >= 1e6 else f"{x / 1e3:.1f}k" if x >= 1e3 else f"{x:.0f}"


def eta_s(metrics: Mapping[str, Any]) -> float | None:
    """Seconds left of a training run, from its own throughput: remaining steps x tokens per step /
    tokens per second (None until the trainer has said enough)."""
    step, steps, tokens, tps = (metrics.get(k) for k in ("step", "steps", "tokens", "tokens_per_s"))
    if not all(isinstance(v, (int, float)) for v in (step, steps, tokens, tps)) or step <= 0 or tps <= 0:
        return None
    return max(0.0, (steps - step) * (tokens / step) / tps)


def step_text(metrics: Mapping[str, Any], *, with_step: bool = True) -> str:
    """`step 12/40, loss 3.214, 1.2k tok/s, ETA 2m10s` from the trainer's metrics (what is known)."""
    parts = []
    step, steps = metrics.get("step"), metrics.get("steps")
    if with_step and step is not None:
        parts.append(f"step {step}/{steps}" if steps else f"step {step}")
    loss = metrics.get("loss")
    if isinstance(loss, (int, float)):
        parts.append(f"loss {loss:.4g}")
    tps = metrics.get("tokens_per_s")
    if isinstance(tps, (int, float)) and tps > 0:
        parts.append(f"{_si(tps)} tok/s")
    eta = eta_s(metrics)
    if eta is not None:
        parts.append(f"ETA {format_duration(eta)}")
    return ", ".join(parts)


class Throttle:
    """At most one line per key every `every` seconds; a key's first and last call always pass."""

    def __init__(self, every: float = LINE_S, clock: Callable[[], float] = time.monotonic):
        self.every, self.clock = every, clock
        self.last: dict[str, float] = {}

    def __call__(self, key: str, last: bool = False) -> bool:
        now = self.clock()
        if last or key not in self.last or now - self.last[key] >= self.every:
            self.last[key] = now
            return True
        return False

    def forget(self, key: str) -> None:
        self.last.pop(key, None)


def bars(console: Console) -> Progress:
    """The bar layout every command shares: what, bar, n/N, loss / tok/s / ETA, elapsed."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(bar_width=30),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        refresh_per_second=4,
    )


class StepProgress:
    """`on_step` of one or several training runs in this process (build's stages, distill, correct): a bar
    per stage on a terminal, else a line every LINE_S seconds. Disabled, it does nothing."""

    def __init__(self, console: Console, label: str = "distill", enabled: bool = True, every: float = LINE_S):
        self.console, self.label, self.enabled = console, label, enabled
        self.live = enabled and live(console)
        self.throttle = Throttle(every)
        self.bars: Progress | None = None  # one live bar per run, gone when it reaches its last step
        self.task: Any = None
        self.stage: str | None = None

    def __enter__(self) -> StepProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __call__(self, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        stage = str(metrics.get("stage") or self.label)
        step, steps = int(metrics.get("step") or 0), metrics.get("steps")
        last = bool(steps) and step >= int(steps)
        if self.live:
            if self.bars is None or stage != self.stage:
                self.close()
                self.bars = bars(self.console)
                self.bars.start()
                self.task = self.bars.add_task(stage, total=steps, info="")
            self.bars.update(self.task, completed=step, total=steps, info=step_text(metrics, with_step=False))
            if last:
                self.close()
                self.console.print(f"{stage:<10} {step_text(metrics)}", highlight=False, markup=False)
        elif self.throttle(stage, last=last):
            self.console.print(
                redact_text(f"{stage:<10} {step_text(metrics)}"), highlight=False, markup=False
            )
        self.stage = stage

    def close(self) -> None:
        if self.bars is not None:
            self.bars.stop()
            self.bars = None


def each(
    items: Iterable[T], description: str, console: Console, enabled: bool = True, every: float = LINE_S
) -> Iterator[T]:
    """Iterate `items` (a list's worth of batches) showing `description n/N, ETA` on a terminal bar or
    as a line every `every` seconds."""
    items = list(items)
    if not enabled:
        yield from items
        return
    total, started = len(items), time.monotonic()
    if live(console):
        with bars(console) as progress:
            task = progress.add_task(description, total=total, info="")
            for i, item in enumerate(items):
                yield item
                left = (time.monotonic() - started) / (i + 1) * (total - i - 1)
                progress.update(task, completed=i + 1, info=f"ETA {format_duration(left)}")
        return
    throttle = Throttle(every)
    for i, item in enumerate(items):
        yield item
        if throttle(description, last=i + 1 == total):
            left = (time.monotonic() - started) / (i + 1) * (total - i - 1)
            console.print(
                f"{description} {i + 1}/{total}, ETA {format_duration(left)}", highlight=False, markup=False
            )


__all__ = ["LINE_S", "StepProgress", "Throttle", "each", "eta_s", "quiet_option", "step_text"]
