"""Stages run one after another in this process (`ablate build`), claimed and recorded as the executor's
Ray tasks are (ablate.run.shared_stages): the stage's row, a lease while it runs (ablate.track.leases: a
stage another live submission or build runs is waited for, never run twice), then completed or failed
with the same calls. A complete artifact is reused once its checksums verify. Without a results
database the stages simply run."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ablate.errors import RunError
from ablate.plan.stages import Stage
from ablate.run.artifacts import ArtifactCorrupt, ArtifactStore
from ablate.run.ray_workers import error_line
from ablate.run.stage_runners import StageContext, StepCallback, run_stage

if TYPE_CHECKING:
    from ablate.track.db import Records
    from ablate.track.leases import Leases

log = logging.getLogger(__name__)
WAIT_POLL_S = 1.0  # how often a stage another submission holds is looked at again


def record_failure(records: Records, stage: Stage, message: str, experiment: str | None) -> None:
    """A stage failed: its row says why and the experiment's event log tells it (as `ablate status`)."""
    records.mark_stage_failed(stage.hash, message)
    records.log_event(
        f"{stage.kind} stage {stage.hash} failed: {message}",
        level="error",
        experiment=experiment,
        stage_hash=stage.hash,
    )


def run_in_process(
    stages: Sequence[Stage],
    parents_of: Callable[[Stage], dict[str, Stage]],
    store: ArtifactStore,
    records: Records | None,
    *,
    base_dir: str | None = None,
    experiment: str | None = None,
    spec_word: str = "SPEC",
    say: Callable[[str], None] = log.info,
    on_step: StepCallback | None = None,
) -> list[dict[str, Any]]:
    """Every stage of `stages` (parents first), each reused or run: a list of {kind, hash, action} with
    action "reused" or "run". `spec_word` names the spec in the advice of a damaged artifact's error."""
    from ablate.track.leases import Leases

    leases = Leases(records) if records is not None else None
    if leases is not None:
        leases.start_heartbeat()
    done = []
    models: dict[str, Any] = {}  # loaded once: the final eval's student and teacher serve the benchmarks
    try:
        for stage in stages:
            ctx = StageContext(store, parents_of(stage), base_dir, _tagged(on_step, stage), models=models)
            action = _reuse_or_run(stage, ctx, records, leases, experiment, spec_word, say)
            done.append({"kind": stage.kind, "hash": stage.hash, "action": action})
    finally:
        if leases is not None:
            leases.release_all()  # a stage left running (interrupted) goes back to pending
    return done


def _tagged(on_step: StepCallback | None, stage: Stage) -> StepCallback | None:
    """`on_step` with the stage's kind in its metrics (`stage`): the caller's progress names it."""
    if on_step is None:
        return None
    return lambda metrics: on_step({**metrics, "stage": stage.kind})


def _run(stage: Stage, ctx: StageContext, say: Callable[[str], None]) -> None:
    say(f"running {stage.kind} stage {stage.hash}")
    started = time.monotonic()
    run_stage(stage, ctx)
    say(f"{stage.kind} stage {stage.hash} done in {time.monotonic() - started:.1f}s")


def _present(store: ArtifactStore, stage: Stage, spec_word: str) -> bool:
    """Whether the stage's artifact is complete and verifies (a damaged one stops the run)."""
    if not store.exists(stage.hash):
        return False
    try:
        store.verify(stage.hash)
    except ArtifactCorrupt as exc:
        raise exc.for_spec(spec_word) from None
    return True


def _reuse_or_run(
    stage: Stage,
    ctx: StageContext,
    records: Records | None,
    leases: Leases | None,
    experiment: str | None,
    spec_word: str,
    say: Callable[[str], None],
) -> str:
    store = ctx.store
    if records is not None:
        records.upsert_stage(stage.hash, stage.kind, stage.config, stage.parents)
    if _present(store, stage, spec_word):
        if records is not None and records.stage_status(stage.hash) != "completed":
            records.mark_stage_completed(stage.hash, store.path_for(stage.hash))
        return "reused"
    if records is None or leases is None:
        _run(stage, ctx, say)
        return "run"
    if _claim(stage, store, records, leases, spec_word, say) == "reused":
        return "reused"
    try:
        _run(stage, ctx, say)
    except Exception as exc:
        record_failure(records, stage, error_line(exc), experiment)
        raise
    records.mark_stage_completed(stage.hash, store.path_for(stage.hash))
    return "run"


def _claim(
    stage: Stage,
    store: ArtifactStore,
    records: Records,
    leases: Leases,
    spec_word: str,
    say: Callable[[str], None],
) -> str:
    """Take the stage to run it ("claimed"), or "reused" once another submission completed it while this
    one waited; one that failed there stops this run."""
    waited = False
    while True:
        if records.stage_status(stage.hash) == "completed" and not store.exists(stage.hash):
            records.reset_stage(stage.hash)  # recorded as done but its artifact vanished: run it again
        claim = leases.claim_stage(stage.hash, take_failed=not waited)
        if claim.state == "claimed":
            return "claimed"
        if claim.state == "completed" and _present(store, stage, spec_word):
            return "reused"
        if claim.state == "failed":
            raise RunError(f"{stage.kind} stage {stage.hash} failed in another submission: {claim.error}")
        if claim.state == "held" and not waited:
            say(
                f"{stage.kind} stage {stage.hash} is being run by another submission ({claim.owner}): waiting"
            )
        waited = True
        time.sleep(WAIT_POLL_S)


__all__ = ["WAIT_POLL_S", "record_failure", "run_in_process"]
