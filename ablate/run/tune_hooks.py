"""Ray Tune's side of a submission: a callback that hands each trial's reports to the executor's
:class:`~ablate.run.trial_outcomes.TrialOutcomes`, and a stopper that ends every trial on `ablate cancel`.

Imported only when trials run (Ray Tune costs about a second to import). Both objects live in the
driver; Tune pickles its callbacks and stoppers with its experiment state (written to disk, never read
back: ablate removes Tune's experiment folder after the fit), so pickling keeps none of their handles.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

from ray.tune import Callback, Stopper

from ablate.run import ray_workers
from ablate.run.step_reports import unbatch


class TrialSink(Protocol):
    """What the callback may tell the executor: the narrow interface between the two."""

    def trial_started(self, key: str) -> None: ...
    def trial_began_work(self, key: str, result: dict[str, Any]) -> None: ...
    def trial_work_ended(self, key: str, result: dict[str, Any]) -> None: ...
    def record_steps(self, key: str, rows: list[tuple[str, int, float]]) -> None: ...
    def trial_finished(self, key: str, outcome: dict[str, Any], last_step: int | None) -> None: ...
    def trial_crashed(self, key: str, error: str) -> None: ...
    def trial_retried(self, key: str, error: str) -> None: ...
    def progress(self, event: str, data: dict[str, Any]) -> None: ...


class _DriverOnly:
    """Pickled empty: the handles stay in the driver (see the module docstring)."""

    def __getstate__(self) -> dict[str, Any]:
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)


class RecordingCallback(_DriverOnly, Callback):
    """Runs in the driver: buffers each trial's per-step values and hands them on every FLUSH_S seconds
    (one multi-row SQL insert and one MLflow log_batch per flush) and once more when the trial ends."""

    FLUSH_S = 2.0

    def __init__(self, sink: TrialSink):
        self.sink = sink
        self.buffer: dict[str, list[tuple[str, int, float]]] = {}
        self.outcome: dict[str, dict[str, Any]] = {}
        self.last_step: dict[str, int] = {}
        self.last_flush = time.monotonic()

    @staticmethod
    def _key(trial: Any) -> str:
        return trial.config["key"]

    def on_trial_start(self, iteration, trials, trial, **info):
        self.sink.trial_started(self._key(trial))

    def on_trial_result(self, iteration, trials, trial, result, **info):
        key = self._key(trial)
        phase = result.get("phase")
        if phase == ray_workers.PHASE_STEP:
            for item in unbatch(result):  # Ray Train workers send several steps in one result
                step = self.last_step[key] = int(item["step"])
                m = item.get("m") or {}
                self.buffer.setdefault(key, []).extend((name, step, value) for name, value in m.items())
                self.sink.progress(
                    "trial_step",
                    {"key": key, "step": step, "steps": item.get("steps"), "loss": item.get("loss"),
                     "tokens": m.get("tokens"), "tokens_per_s": m.get("tokens_per_s")},
                )  # fmt: skip
        elif phase == ray_workers.PHASE_STAGE:
            self.sink.progress("trial_stage", {"key": key, "stage": result.get("stage")})
        elif phase == ray_workers.PHASE_START:
            self.sink.trial_began_work(key, result)
        elif phase in (ray_workers.PHASE_DONE, ray_workers.PHASE_FAILED):
            self.outcome[key] = dict(result)
            self.sink.trial_work_ended(key, result)
        if time.monotonic() - self.last_flush > self.FLUSH_S:
            self.flush_all()

    def flush(self, key: str) -> None:
        rows = self.buffer.pop(key, [])
        if rows:
            self.sink.record_steps(key, rows)

    def flush_all(self) -> None:
        for key in list(self.buffer):
            self.flush(key)
        self.last_flush = time.monotonic()

    def on_trial_complete(self, iteration, trials, trial, **info):
        key = self._key(trial)
        self.flush(key)
        self.sink.trial_finished(key, self.outcome.pop(key, None) or {}, self.last_step.get(key))

    def on_trial_recover(self, iteration, trials, trial, **info):
        key = self._key(trial)
        self.flush(key)
        self.sink.trial_retried(key, trial_error(trial))

    def on_trial_error(self, iteration, trials, trial, **info):
        key = self._key(trial)
        self.flush(key)
        self.outcome.pop(key, None)
        self.sink.trial_crashed(key, trial_error(trial))


class CancelStopper(_DriverOnly, Stopper):
    """Stops every trial once `ablate cancel NAME` has asked for it (polled every few seconds)."""

    POLL_S = 2.0

    def __init__(self, cancel_requested: Any):
        self.cancel_requested = cancel_requested
        self.last, self.cancelled = 0.0, False

    def __call__(self, trial_id, result) -> bool:
        return self.stop_all()

    def stop_all(self) -> bool:
        now = time.monotonic()
        if not self.cancelled and now - self.last > self.POLL_S:
            self.last = now
            self.cancelled = bool(self.cancel_requested())
        return self.cancelled


def trial_error(trial: Any) -> str:
    """The trial's exception as one readable line (Tune keeps the full traceback in error_file)."""
    from pathlib import Path

    try:
        exc = trial.get_error()
    except Exception:  # noqa: BLE001
        exc = None
    if exc is not None:
        return ray_workers.error_line(exc)
    path = getattr(trial, "error_file", None)
    if path and Path(path).exists():
        lines = [line for line in Path(path).read_text().strip().splitlines() if line.strip()]
        return lines[-1] if lines else "failed"
    return "failed (no error recorded by Ray Tune)"


__all__ = ["CancelStopper", "RecordingCallback", "TrialSink", "trial_error"]
