"""Specs the executor cannot run are refused before anything starts or is recorded."""

from pathlib import Path

import pytest

from ablate.errors import RunError
from ablate.run.executor import submit
from ablate.spec.validate import load_spec

SPECS = Path(__file__).parents[2] / "specs"


def test_multi_worker_trials_are_refused_not_run_as_one_process(tmp_path, monkeypatch):
    text = (
        (SPECS / "tiny.yaml")
        .read_text()
        .replace("trial: {cpu: 1, gpu: 0}", "trial: {cpu: 2, gpu: 0, workers: 2, strategy: ddp}")
    )
    spec = tmp_path / "tiny-ddp.yaml"
    spec.write_text(text)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RunError, match="several workers"):
        submit(load_spec(spec))
    assert not (tmp_path / ".ablate").exists()
