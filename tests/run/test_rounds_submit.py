"""Rounds and chains run on real Ray (tests/run/specs/rounds.yaml): every link an ordinary stage, run
once; the second round prunes the first round's distilled student; a re-submit runs nothing; and the
build of a chained trial runs its whole lineage."""

from __future__ import annotations

from contextlib import chdir

import pytest
import torch

from tests.run.conftest import make_workspace, records_of, submit_here

pytestmark = pytest.mark.slow

PLANNED = {"tokenize": 1, "teacher": 1, "importance": 2, "prune": 3, "distill": 4, "eval": 8}


def test_rounds_and_chains_run_each_link_once_from_the_right_model(ray_local, tmp_path):
    from ablate.build.recipe import open_source, resolve
    from ablate.models.registry import load_model
    from ablate.run.artifacts import ArtifactStore

    workspace = make_workspace(tmp_path / "ws")
    first = submit_here(workspace, "rounds.yaml")
    assert first.ok and first.stages_run == PLANNED and not first.stages_reused, first.to_dict()
    with records_of(workspace) as records:
        trials = {t.overrides["target"]: t for t in records.trials("rounds")}
        stages = {name: {s.kind: s for s in records.trial_stages(t.id)} for name, t in trials.items()}
    assert {t.status for t in trials.values()} == {"completed"}
    # the second round's prune is a slice of mid's distilled student, not of the teacher: every kept
    # embedding column is one of the distilled mid's columns
    store = ArtifactStore(str(workspace / ".ablate" / "artifacts"))
    mid_student, _ = load_model(str(store.local_path(stages["mid"]["distill"].hash) / "model"))
    pruned, _ = load_model(str(store.local_path(stages["small-rounds"]["prune"].hash) / "model"))
    direct, _ = load_model(str(store.local_path(stages["small"]["prune"].hash) / "model"))
    mid_columns = mid_student.get_input_embeddings().weight.detach().T
    for column in pruned.get_input_embeddings().weight.detach().T:
        assert torch.isclose(mid_columns, column).all(dim=1).any()
    assert not torch.equal(pruned.get_input_embeddings().weight, direct.get_input_embeddings().weight)

    again = submit_here(workspace, "rounds.yaml")
    assert again.ok and not again.stages_run and again.stages_reused == PLANNED

    with chdir(workspace):
        recipe = resolve(open_source("rounds.yaml"), trial=trials["small-chain"].key, dry_run=True)
    kinds = [s.kind for s in recipe.chain]
    assert kinds[kinds.index("teacher") :] == [
        "teacher", "importance", "prune", "distill", "importance", "prune", "distill", "eval",
    ]  # fmt: skip
    first_link = recipe.chain[kinds.index("teacher") + 3]
    assert first_link.hash == stages["mid"]["distill"].hash  # the chain's first link is mid's trial
