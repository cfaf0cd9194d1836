"""`ablate submit --recompute STAGE`: which stages of a spec to run again instead of reusing their artifact.

A name is a stage kind (every stage of that kind in the spec: `distill` re-runs every trial's
distillation) or a stage hash as printed in messages and `ablate plan` (a unique prefix is enough).
The stages made from a recomputed one are recomputed too: a distillation trained on the old bytes of a
pruned student, or an eval of an old student, would otherwise be paired with the new parent. A
recomputed `tokenize` stage re-tokenizes its source (its shards are deleted from the cache) and takes
every stage that reads that data with it.
"""

from __future__ import annotations

from collections.abc import Iterable

from ablate.errors import RunError
from ablate.plan.graph import StageGraph
from ablate.plan.stages import STAGE_KINDS

__all__ = ["select"]


def _match(graph: StageGraph, name: str) -> list[str]:
    if name in STAGE_KINDS:
        return [h for h, s in graph.stages.items() if s.kind == name]
    if name in graph.stages:
        return [name]
    found = [h for h in graph.stages if h.startswith(name) or h.split("-", 1)[-1].startswith(name)]
    if len(found) > 1:
        raise RunError(
            f"--recompute {name}: the prefix matches {len(found)} stages of this spec "
            f"({', '.join(found[:4])}{', ...' if len(found) > 4 else ''}); give more of the hash"
        )
    return found


def select(graph: StageGraph, names: Iterable[str]) -> set[str]:
    """The hashes of the stages named by `names` and of every stage made from them."""
    chosen: set[str] = set()
    for name in names:
        name = name.strip()
        found = _match(graph, name) if name else []
        if not found:
            raise RunError(
                f"--recompute {name!r}: not a stage of this spec; give a stage kind "
                f"({', '.join(STAGE_KINDS)}) or a stage hash (see `ablate plan SPEC`)"
            )
        chosen.update(found)
    for h, stage in graph.stages.items():  # dependency order: parents are settled before children
        if any(p in chosen for p in stage.parents) or (stage.kind != "tokenize" and graph.data_of(h) & chosen):
            chosen.add(h)
    return chosen
