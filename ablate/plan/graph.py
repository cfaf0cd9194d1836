"""Trials -> a de-duplicated stage DAG (what will actually run, against the naive count)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from ablate.plan.stages import STAGE_KINDS, Stage, trial_stages
from ablate.spec.sweep import Trial


@dataclass
class StageGraph:
    stages: dict[str, Stage] = field(default_factory=dict)  # hash -> stage, in dependency order
    trial_stages: dict[str, dict[str, str]] = field(default_factory=dict)  # trial key -> kind -> hash
    naive: Counter = field(default_factory=Counter)  # stages if every trial ran its own

    def _kinds(self) -> list[str]:
        """Every stage kind, benchmark and align only where the spec has them (eval.tasks, align)."""
        return [k for k in STAGE_KINDS if k not in ("benchmark", "align") or self.naive.get(k)]

    def counts(self) -> dict[str, int]:
        found = Counter(s.kind for s in self.stages.values())
        return {kind: found.get(kind, 0) for kind in self._kinds()}

    def naive_counts(self) -> dict[str, int]:
        return {kind: self.naive.get(kind, 0) for kind in self._kinds()}

    def children(self, stage_hash: str) -> list[Stage]:
        return [s for s in self.stages.values() if stage_hash in s.parents]

    def data_of(self, stage_hash: str) -> set[str]:
        """The tokenize stages of the data a stage's trials read: run before it, although they are not its
        parents (plan.stages.tokenize_stages says why)."""
        return {
            h
            for stages in self.trial_stages.values()
            if stage_hash in stages.values()
            for h in stages.values()
            if h != stage_hash and self.stages[h].kind == "tokenize"
        }


def build_graph(trials: list[Trial], base_dir: str | None = None) -> StageGraph:
    """`base_dir`: the spec's folder, where relative paths in it (local benchmark tasks) are found."""
    graph = StageGraph()
    for trial in trials:
        stages = trial_stages(trial, base_dir)
        graph.trial_stages[trial.key] = {kind: s.hash for kind, s in stages.items()}
        for stage in stages.values():
            graph.naive[stage.kind] += 1
            graph.stages.setdefault(stage.hash, stage)
    return graph
