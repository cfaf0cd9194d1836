"""Specs the executor cannot run are refused with the numbers, before any stage starts."""

import threading
from pathlib import Path

import pytest

from ablate.errors import RunError
from ablate.run.executor import submit
from ablate.spec.validate import load_spec

SPECS = Path(__file__).parents[2] / "specs"


def tiny_with(tmp_path: Path, old: str, new: str) -> Path:
    """specs/tiny.yaml with one edit, written to `tmp_path`."""
    text = (SPECS / "tiny.yaml").read_text()
    assert old in text
    spec = tmp_path / "tiny-edited.yaml"
    spec.write_text(text.replace(old, new))
    return spec


def assert_refused(spec: Path, match: str) -> None:
    """Submitting `spec` raises RunError matching `match` and leaves no thread of its own behind (its
    MLflow opener once outlived it and ran MLflow's migrations while the next submission ran ours:
    'database is locked')."""
    with pytest.raises(RunError, match=match):
        submit(load_spec(spec))
    assert not [t.name for t in threading.enumerate() if t.name == "ablate-mlflow-runs" and t.is_alive()]


def test_a_trial_larger_than_the_local_ray_is_refused_not_left_waiting(tmp_path, monkeypatch, ray_local):
    spec = tiny_with(
        tmp_path, "trial: {cpu: 1, gpu: 0}", "trial: {cpu: 2, gpu: 2, workers: 2, strategy: ddp}"
    )
    monkeypatch.chdir(tmp_path)
    assert_refused(spec, r"resources.trial.gpu: a trial asks for 2 GPUs \(2 worker\(s\)\) but")
    artifacts = tmp_path / ".ablate" / "artifacts"
    assert not artifacts.exists() or not [p for p in artifacts.iterdir() if not p.name.startswith(".")]


def test_shared_stages_asking_for_gpus_this_machine_lacks_are_refused(tmp_path, monkeypatch, ray_local):
    spec = tiny_with(tmp_path, "max_concurrent: 2", "max_concurrent: 2\n  shared: {gpu: 4}")
    assert load_spec(spec).spec.resources.shared.gpu == 4
    monkeypatch.chdir(tmp_path)
    assert_refused(spec, r"resources.shared.gpu: a shared stage asks for 4 GPUs but")
