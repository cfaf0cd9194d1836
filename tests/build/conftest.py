"""A finished tiny experiment (specs/tiny.yaml on builtin:tiny-mistral), run in-process in seconds.

The stages run through the same runners the executor's Ray tasks call, and the records are written with
the same Records calls, so `ablate build` sees exactly what a real `ablate submit` leaves behind.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from ablate.plan.graph import build_graph
from ablate.run.artifacts import ArtifactStore
from ablate.run.stage_runners import StageContext, run_stage
from ablate.spec.validate import LoadedSpec, load_spec
from ablate.track.db import Records, connect

SPECS = Path(__file__).parents[2] / "specs"
TRIAL_KINDS = ("tokenize:0", "teacher", "importance", "prune", "distill", "eval")


@dataclass
class Experiment:
    spec_path: Path
    loaded: LoadedSpec
    db: str
    artifacts: Path
    records: Records
    store: ArtifactStore
    root: Path


def write_spec(folder: Path, name: str = "tiny", build: str | None = None) -> Path:
    """specs/tiny.yaml with its tracking paths (and name) moved into `folder`."""
    text = (SPECS / "tiny.yaml").read_text()
    text = text.replace("name: tiny", f"name: {name}")
    text = text.replace("sqlite:///.ablate/ablate.db", f"sqlite:///{folder}/ablate.db")
    text = text.replace("sqlite:///.ablate/mlflow.db", f"sqlite:///{folder}/mlflow.db")
    text = text.replace("artifacts: .ablate/artifacts", f"artifacts: {folder}/artifacts")
    if build is not None:
        text = text.replace("build: {trial: best, tokens: 4k, formats: [hf]}", build)
    path = folder / f"{name}.yaml"
    path.write_text(text)
    return path


def submit_in_process(spec_path: Path, run: set[str] | None = None) -> Experiment:
    """Register the spec's experiment and trials; run (all, or the trial keys in `run`) to completion."""
    loaded = load_spec(spec_path)
    spec = loaded.spec
    records = connect(spec.tracking.db)
    store = ArtifactStore(spec.tracking.artifacts)
    text = spec_path.read_text()
    records.upsert_experiment(spec.name, text, hashlib.sha256(text.encode()).hexdigest()[:16])
    graph = build_graph(loaded.trials)
    for stage in graph.stages.values():
        records.upsert_stage(stage.hash, stage.kind, stage.config, stage.parents)
    base_dir = str(spec_path.parent)
    for trial in loaded.trials:
        hashes = graph.trial_stages[trial.key]
        info = records.upsert_trial(
            spec.name, trial.key, trial.overrides, config=trial.resolved(), stages=list(hashes.values())
        )
        if run is not None and trial.key not in run:
            continue
        records.set_trial_status(info.id, "running")
        for kind in TRIAL_KINDS:
            stage = graph.stages[hashes[kind]]
            parents = {graph.stages[p].kind: graph.stages[p] for p in stage.parents}
            run_stage(stage, StageContext(store, parents, base_dir))
            records.mark_stage_completed(stage.hash, store.path_for(stage.hash))
        metrics = json.loads((store.local_path(hashes["eval"]) / "metrics.json").read_text())
        records.log_final_metrics(info.id, metrics)
        records.set_trial_status(info.id, "completed")
    return Experiment(
        spec_path, loaded, spec.tracking.db, Path(spec.tracking.artifacts), records, store, spec_path.parent
    )


@pytest.fixture(scope="package")
def tiny(tmp_path_factory) -> Experiment:
    """specs/tiny.yaml, every trial finished (4 trials, 2k tokens each)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return submit_in_process(write_spec(tmp_path_factory.mktemp("tiny")))
    finally:
        torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _one_thread():
    """Two cores are shared with other test runs: one thread each, restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
