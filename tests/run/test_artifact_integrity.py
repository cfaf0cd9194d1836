"""A published artifact whose bytes changed is never reused by `ablate submit`: the submission stops with
exit 2 naming the artifact and the `--recompute` command, which then runs it (and what was made from it)
again. Real Ray, MLflow and SQLite, on a one-trial tiny spec."""

from __future__ import annotations

import shutil
from contextlib import chdir
from pathlib import Path

import pytest
from click.testing import CliRunner

from ablate.cli import main
from ablate.errors import RunError
from ablate.plan.graph import build_graph
from ablate.plan.stages import is_reference_eval
from ablate.run import recompute
from ablate.run.artifacts import ArtifactStore
from ablate.spec.validate import load_spec
from tests.damage import nan_into_tensor
from tests.run.conftest import make_workspace, records_of, submit_here

pytestmark = pytest.mark.slow

ONE = """extends: tiny.yaml
name: tiny-one
sweep:
  grid:
    target: [width]
    distill.loss: [kld]
"""


def _cli(workspace: Path, *args: str):
    with chdir(workspace):
        return CliRunner().invoke(main, ["submit", "one.yaml", *args])


def _damage(model: Path, how: str) -> str:
    """Change the published student the way a disk, a script or a person might; what the error must say."""
    if how == "nan":
        nan_into_tensor(model / "model.safetensors")
        return "model/model.safetensors: content changed"
    if how == "truncate":
        with open(model / "model.safetensors", "r+b") as f:
            f.truncate(4096)
        return "model/model.safetensors: 4096 bytes, the manifest says"
    if how == "delete":
        (model / "tokenizer.json").unlink()
        return "model/tokenizer.json: missing"
    (model / "notes.txt").write_text("added later")
    return "model/notes.txt: not in the manifest"


def test_a_damaged_artifact_is_refused_until_recomputed(tiny_run, tmp_path):
    workspace = make_workspace(tmp_path / "ws", artifacts_from=tiny_run.workspace)  # shared stages made
    (workspace / "one.yaml").write_text(ONE)
    first = submit_here(workspace, "one.yaml")
    assert first.ok and first.stages_run == {"distill": 1, "eval": 1}
    (key,) = [t["key"] for t in first.trials]
    graph = build_graph(load_spec(workspace / "one.yaml").trials)
    h = graph.trial_stages[key]["distill"]
    store = ArtifactStore(workspace / ".ablate" / "artifacts")
    published = Path(store.path_for(h))
    intact = tmp_path / "intact"
    shutil.copytree(published, intact)

    for how in ("truncate", "delete", "add", "nan"):
        says = _damage(published / "model", how)
        refused = _cli(workspace)
        assert refused.exit_code == 2, (how, refused.output)
        message = " ".join(refused.output.split())
        assert f"artifact {h} (distill stage)" in message and says in message, message
        assert f"`ablate submit one.yaml --recompute {h}`" in message, message
        as_json = _cli(workspace, "--json")
        assert as_json.exit_code == 2 and f"--recompute {h}" in as_json.output
        if how != "nan":  # put it back for the next kind of damage (a copy: new inodes, hashed again)
            shutil.rmtree(published)
            shutil.copytree(intact, published)
            assert _cli(workspace, "--json").exit_code == 0

    again = _cli(workspace, "--recompute", h)
    assert again.exit_code == 0, again.output
    assert "stages run 2 (distill 1, eval 1)" in " ".join(again.stdout.split())  # eval was made from it
    store.verify(h)
    import torch
    from safetensors.torch import load_file

    assert all(torch.isfinite(t).all() for t in load_file(published / "model" / "model.safetensors").values())
    with records_of(workspace) as records:
        (trial,) = records.trials("tiny-one")
        assert trial.status == "completed" and records.final_metrics(trial.id)
        assert records.stage_status(h) == "completed"
    assert _cli(workspace, "--json").exit_code == 0  # and it is reused again


def test_recompute_names_kinds_hashes_and_prefixes_and_takes_what_was_made_from_them():
    graph = build_graph(load_spec(Path(__file__).parents[2] / "specs" / "tiny.yaml").trials)
    kinds = {h: s.kind for h, s in graph.stages.items()}
    # a trial's eval is made from its distill; the reference evals (pruned student, teacher) are not
    distills = {
        h
        for h, s in graph.stages.items()
        if s.kind == "distill" or (s.kind == "eval" and not is_reference_eval(s))
    }
    assert recompute.select(graph, ["distill"]) == distills
    one = next(h for h, k in kinds.items() if k == "distill")
    evals = {h for h, s in graph.stages.items() if one in s.parents}
    assert recompute.select(graph, [one]) == {one} | evals
    assert recompute.select(graph, [one[: len("distill-") + 8]]) == {one} | evals
    assert recompute.select(graph, [one.split("-", 1)[1][:10]]) == {one} | evals
    prune = next(h for h, k in kinds.items() if k == "prune")
    below = recompute.select(graph, [prune])
    assert prune in below and {kinds[h] for h in below} == {"prune", "distill", "eval"}
    tokenize = {h for h, k in kinds.items() if k == "tokenize"}
    assert len(tokenize) == 1
    assert recompute.select(graph, ["teacher"]) == set(graph.stages) - tokenize  # not made from the teacher
    assert recompute.select(graph, ["tokenize"]) == set(graph.stages)  # every stage reads the data
    assert recompute.select(graph, []) == set()
    with pytest.raises(RunError, match="not a stage of this spec; give a stage kind"):
        recompute.select(graph, ["distilled"])
    with pytest.raises(RunError, match="matches 4 stages"):
        recompute.select(graph, ["distill-"])


def test_an_unknown_recompute_name_is_refused_before_anything_runs(tmp_path):
    workspace = make_workspace(tmp_path / "ws")
    (workspace / "one.yaml").write_text(ONE)
    refused = _cli(workspace, "--recompute", "nothing-like-this")
    assert (
        refused.exit_code == 2
        and "--recompute 'nothing-like-this': not a stage of this spec" in refused.output
    )
    assert not (workspace / ".ablate" / "artifacts").exists() or not any(
        p for p in (workspace / ".ablate" / "artifacts").iterdir() if not p.name.startswith(".")
    )
