"""Stage kinds and their content hashes.

A stage's identity is a hash of its kind, its own resolved config and its parents' hashes, so two
trials that need the same teacher, importance pass or pruned model share one stage, in this
submission and in every later one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ablate.spec.sweep import Trial, stable_hash

STAGE_KINDS = ("teacher", "importance", "prune", "distill", "eval")


@dataclass(frozen=True)
class Stage:
    kind: str
    config: dict[str, Any]
    parents: tuple[str, ...] = ()
    hash: str = field(init=False)

    def __post_init__(self) -> None:
        if self.kind not in STAGE_KINDS:
            raise ValueError(f"unknown stage kind {self.kind!r}")
        object.__setattr__(
            self, "hash", f"{self.kind}-{stable_hash([self.kind, self.config, list(self.parents)], 16)}"
        )


def trial_stages(trial: Trial) -> dict[str, Stage]:
    """The five stages one trial needs, keyed by kind, each hashed over exactly what it depends on."""
    spec = trial.spec
    resolved = trial.resolved()
    teacher = Stage(
        "teacher",
        {
            "model": resolved["teacher"]["model"],
            "correction": resolved["teacher"]["correction"],
            # Correction trains on the corpus, so the corpus is part of a corrected teacher's identity.
            "data": resolved["data"] if spec.teacher.correction else None,
        },
    )
    importance = Stage(
        "importance",
        {
            "importance": resolved["importance"],
            "calibration": resolved["calibration"],
            "corpus": spec.data.corpus,
            "seq_len": spec.data.seq_len,
        },
        (teacher.hash,),
    )
    prune = Stage("prune", {"target": resolved["target"]}, (importance.hash,))
    distill = Stage(
        "distill",
        {
            "distill": resolved["distill"],
            "seed": trial.seed,
            "corpus": spec.data.corpus,
            "seq_len": spec.data.seq_len,
        },
        (prune.hash, teacher.hash),
    )
    evaluate = Stage(
        "eval",
        {"corpus": spec.data.corpus, "seq_len": spec.data.seq_len, "eval_tokens": spec.data.eval_tokens},
        (distill.hash, teacher.hash),
    )
    return {s.kind: s for s in (teacher, importance, prune, distill, evaluate)}
