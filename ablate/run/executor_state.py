"""What the executor's two mixins (:mod:`ablate.run.shared_stages`, :mod:`ablate.run.trial_outcomes`)
both read of it, declared once: the submission's name, records, store, graph, ids and statuses, and the
few executor methods they call. :class:`ablate.run.executor.Executor` defines all of it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ablate.plan.graph import StageGraph
    from ablate.run.artifacts import ArtifactStore
    from ablate.track.db import Records
    from ablate.track.mlflow import MlflowMirror


class ExecutorState:
    """The state shared stages and trial events work on (set by the executor's ``__init__``)."""

    name: str
    graph: StageGraph
    store: ArtifactStore
    records: Records
    stage_status: dict[str, str]  # stage hash -> status as this submission knows it
    trial_ids: dict[str, int]  # trial key -> its row in the records
    shared_hashes: set[str]  # the hashes of the shared stages (counted by the shared phase)
    mirror: MlflowMirror
    result: Any  # the SubmitResult this submission returns

    if TYPE_CHECKING:  # provided by the executor

        def _done(self, h: str) -> bool: ...
        def _count(self, bucket: dict[str, int], kind: str) -> None: ...
        def progress(self, event: str, data: dict[str, Any]) -> None: ...
