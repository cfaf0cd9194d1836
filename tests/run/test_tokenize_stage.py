"""The `tokenize` stage: one per data source, a root of the graph that runs before what reads the data,
recorded like any stage; a source that cannot be read fails it and, with a clear error, what reads it."""

from __future__ import annotations

import json

import pytest

from ablate.data.shards import read_index
from ablate.plan.graph import build_graph
from ablate.plan.stages import TOKENIZE, trial_stages
from ablate.run.artifacts import ArtifactStore
from ablate.run.stage_runners import StageContext, forget_shards, run_stage
from ablate.spec.validate import load_spec
from tests.run.conftest import SPECS, make_workspace, records_of, submit_here


def _two_source_spec(folder, first: str) -> str:
    (folder / "notes").mkdir(exist_ok=True)
    (folder / "notes" / "a.jsonl").write_text(
        "".join(json.dumps({"body": f"note {i}: " + "pruning keeps the useful channels. " * 8}) + "\n"
                for i in range(40))
    )  # fmt: skip
    spec = (SPECS / "tiny.yaml").read_text().replace(
        "  corpus: builtin:pydoc\n",
        f"  sources:\n    - {{path: {first}, weight: 3}}\n    - {{path: notes, weight: 1, text_field: body}}\n",
    )
    (folder / "two.yaml").write_text(spec.replace("name: tiny", "name: two"))
    return "two.yaml"


def test_one_tokenize_stage_per_source_keyed_by_what_it_reads(tmp_path):
    name = _two_source_spec(tmp_path, "builtin:pydoc")
    loaded = load_spec(tmp_path / name)
    graph = build_graph(loaded.trials, str(tmp_path))
    stages = trial_stages(loaded.trials[0], str(tmp_path))
    tokenize = [stages[f"{TOKENIZE}{k}"] for k in range(2)]
    assert [s.config["source"] for s in tokenize] == ["builtin:pydoc", "notes"]
    assert tokenize[1].config["text_field"] == "body" and tokenize[1].config["tokenizer"] == "builtin:tiny-mistral"
    assert all(not s.parents for s in tokenize)  # roots: no existing stage hash moved
    assert graph.counts()["tokenize"] == 2  # shared by all 4 trials
    importance = stages["importance"].hash
    assert graph.data_of(importance) == {s.hash for s in tokenize}
    # the stamp follows the files: touching the data gives a new tokenize stage, nothing else moves
    (tmp_path / "notes" / "b.jsonl").write_text(json.dumps({"body": "one more note"}) + "\n")
    again = trial_stages(loaded.trials[0], str(tmp_path))
    assert again[f"{TOKENIZE}1"].hash != tokenize[1].hash
    assert {k: s.hash for k, s in again.items() if not k.startswith(TOKENIZE)} == {
        k: s.hash for k, s in stages.items() if not k.startswith(TOKENIZE)
    }


def test_the_runner_writes_shards_records_them_and_forgets_them_on_recompute(tmp_path, monkeypatch):
    monkeypatch.setenv("ABLATE_CACHE", str(tmp_path / "cache"))
    name = _two_source_spec(tmp_path, "builtin:pydoc")
    stage = trial_stages(load_spec(tmp_path / name).trials[0], str(tmp_path))[f"{TOKENIZE}1"]
    store = ArtifactStore(str(tmp_path / "artifacts"))
    facts = run_stage(stage, StageContext(store, {}, str(tmp_path)))
    folder = tmp_path / "cache" / "tokens" / "shards"
    (shards,) = folder.iterdir()
    index = read_index(shards)
    assert facts["tokens"] == index["total_tokens"] > 0 and facts["documents"] == 40 == index["documents"]
    assert json.loads((store.local_path(stage.hash) / "tokenize.json").read_text())["shards_folder"] == str(shards)
    assert run_stage(stage, StageContext(store, {}, str(tmp_path))) == {"reused": True}
    forget_shards(store, stage.hash)
    assert not shards.exists()


@pytest.mark.slow
def test_an_unreadable_source_fails_its_tokenize_stage_and_what_reads_it(tmp_path, ray_local):
    workspace = make_workspace(tmp_path / "ws")
    name = _two_source_spec(workspace, "missing/*.jsonl")
    result = submit_here(workspace, name)
    assert not result.ok
    assert result.stages_failed.get("tokenize") == 1 and result.stages_run.get("tokenize") == 1
    assert "importance" not in result.stages_run and not result.stages_run.get("distill")
    with records_of(workspace) as records:
        stages = {s.kind + ":" + s.status: s for s in records.stages("two")}
        failed = stages["tokenize:failed"]
        assert "missing/*.jsonl" in failed.error and "glob matches no" in failed.error
        assert stages["tokenize:completed"].kind == "tokenize"  # the readable source is tokenized
        assert f"the tokenize stage of its data {failed.hash} failed" in stages["importance:failed"].error
        assert {t.status for t in records.trials("two")} == {"failed"}
