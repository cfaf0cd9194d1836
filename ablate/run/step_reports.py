"""A trial's per-step reports from Ray Train workers, sent in batches.

Why: `ray.train.report` puts a result on a queue of one, which the Ray Train controller drains when it
polls its workers (every 2 s by default), and every rank must call it (it is a barrier). A report per
optimizer step therefore caps a distributed trial at one step per poll: a 135M student that steps in
0.1 s on two GPUs would train 20x slower than it can. So the workers gather steps and report them
together about every `EVERY_S` seconds, and the driver records each step as before (the batch is
unpacked by :class:`ablate.run.tune_hooks.RecordingCallback`).

Every rank must report at the same steps: rank 0 chooses how many steps the next batch holds from its
own step time and broadcasts that number at each report (one small collective per report, none per
step). The first step goes out alone, so progress shows as soon as training starts; the last step
always ends a batch.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

from ablate.distill.parallel import Parallel

EVERY_S = 3.0  # above the controller's 2 s poll, so a report rarely waits for the one before it
MAX_STEPS = 1000  # a batch never holds more (bounds one report's size)


class StepBatches:
    """`add(item)` for each step's report (a dict with `step` and `steps`); `flush()` sends what is held.
    `every_s` defaults to EVERY_S on several workers and to 0 (every step alone) in one process, whose
    `tune.report` does not wait for a poll."""

    def __init__(
        self,
        report: Callable[[dict[str, Any]], None],
        parallel: Parallel,
        every_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        if every_s is None:
            every_s = EVERY_S if parallel.distributed else 0.0
        self.report, self.parallel, self.every_s, self.clock = report, parallel, every_s, clock
        self.held: list[dict[str, Any]] = []
        self.size = 1  # steps in the current batch: the first step goes out alone
        self.since = clock()

    def add(self, item: dict[str, Any]) -> None:
        self.held.append(item)
        if len(self.held) >= self.size or item["step"] >= item["steps"]:
            self.flush()

    def flush(self) -> None:
        """Report the held steps as one result (the last step's values at the top, for Tune's schedulers,
        every step under `batch`), then agree on the next batch's size."""
        if not self.held:
            return
        step_s = (self.clock() - self.since) / len(self.held)
        self.report({**self.held[-1], "batch": self.held})
        self.held = []
        self.size = int(self.parallel.broadcast_object(self._next_size(step_s)))
        self.since = self.clock()

    def _next_size(self, step_s: float) -> int:
        """Steps that take about `every_s` at this step time (rank 0's; 1 when every step goes out)."""
        if self.every_s <= 0:
            return 1
        if step_s <= 0:
            return MAX_STEPS
        return min(MAX_STEPS, max(1, math.floor(self.every_s / step_s)))


def unbatch(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The steps one per-step result carries: its `batch`, or the result itself (one step)."""
    return list(result.get("batch") or [result])
