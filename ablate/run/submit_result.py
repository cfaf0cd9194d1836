"""What one `ablate submit` did: stages run, reused and failed by kind, its trials, and the time; the
progress callback's type. Shared by the executor and the search's phases (ablate.run.search), whose
results add up to one."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ablate.plan.graph import StageGraph

Progress = Callable[[str, dict[str, Any]], None]


@dataclass
class SubmitResult:
    experiment: str
    stages_run: dict[str, int] = field(default_factory=dict)
    stages_reused: dict[str, int] = field(default_factory=dict)
    stages_failed: dict[str, int] = field(default_factory=dict)
    trials: list[dict[str, Any]] = field(default_factory=list)
    early_stopped: list[str] = field(default_factory=list)  # trial keys ASHA stopped
    wall_s: float = 0.0
    search: dict[str, Any] | None = None  # a search's outcome (ablate.run.search)

    @property
    def ok(self) -> bool:
        """Nothing failed and every trial completed (or was stopped early by ASHA, which is its job)."""
        return not sum(self.stages_failed.values()) and all(
            t["status"] == "completed" or t["key"] in self.early_stopped for t in self.trials
        )

    def uncount(self, graph: StageGraph, earlier: set[str]) -> None:
        """A later phase of one submission (a search's) finds the stages an earlier phase ran or reused
        already done: they are counted once, by that phase, not again as reused."""
        for h, stage in graph.stages.items():
            if h in earlier and self.stages_reused.get(stage.kind):
                self.stages_reused[stage.kind] -= 1
        self.stages_reused = {k: n for k, n in self.stages_reused.items() if n}

    def merge(self, other: SubmitResult) -> None:
        """Add an earlier phase's counts and time to this result."""
        for mine, theirs in (
            (self.stages_run, other.stages_run),
            (self.stages_reused, other.stages_reused),
            (self.stages_failed, other.stages_failed),
        ):
            for kind, n in theirs.items():
                mine[kind] = mine.get(kind, 0) + n
        self.wall_s += other.wall_s

    def to_dict(self) -> dict[str, Any]:
        return {
            "experiment": self.experiment,
            "ok": self.ok,
            "stages": {"run": self.stages_run, "reused": self.stages_reused, "failed": self.stages_failed},
            "trials": self.trials,
            "early_stopped": self.early_stopped,
            **({"search": self.search} if self.search is not None else {}),
            "wall_s": round(self.wall_s, 3),
        }
