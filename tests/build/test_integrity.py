"""`ablate build` exports only what verifies: an artifact whose bytes changed after publishing is refused
(checksums), and so is a model with a non-finite weight even when its checksums match."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from ablate.build import pipeline
from ablate.build.recipe import BuildError, open_source
from ablate.cli import main
from ablate.run.artifacts import ArtifactCorrupt
from tests.damage import nan_into_tensor

from .conftest import Experiment, submit_in_process, write_spec


@pytest.fixture
def one(tmp_path) -> tuple[Experiment, str]:
    """A finished one-trial tiny experiment of its own (the shared `tiny` stays intact); its trial key."""
    spec = write_spec(tmp_path, name="tiny-one")
    text = spec.read_text()
    spec.write_text(text.replace("target: [width, depth]", "target: [width]").replace("[kld, ce]", "[kld]"))
    exp = submit_in_process(spec)
    (key,) = [t.key for t in exp.loaded.trials]
    return exp, key


def _build(exp: Experiment, tmp_path: Path, **kwargs):
    return pipeline.build(
        open_source(str(exp.spec_path)),
        tokens="2k",  # the trial's own budget: every stage is reused, none runs
        throughput=False,
        out=tmp_path / "out",
        reports_dir=tmp_path / "reports",
        **kwargs,
    )


def _distill(exp: Experiment, key: str) -> str:
    return pipeline.resolve(open_source(str(exp.spec_path)), key, "2k").final_distill.hash


def test_a_model_whose_bytes_changed_after_publishing_is_not_built(one, tmp_path):
    exp, key = one
    h = _distill(exp, key)
    weights = exp.artifacts / h / "model" / "model.safetensors"
    tensor = nan_into_tensor(weights)
    assert "embed_tokens" in tensor
    with pytest.raises(ArtifactCorrupt) as caught:
        _build(exp, tmp_path)
    message = str(caught.value)
    assert (
        f"artifact {h} (distill stage)" in message and "model/model.safetensors: content changed" in message
    )
    assert f"ablate submit {exp.spec_path} --recompute {h}" in message
    assert not (tmp_path / "out").exists()

    result = CliRunner().invoke(
        main,
        [
            "build",
            str(exp.spec_path),
            "--tokens",
            "2k",
            "--out",
            str(tmp_path / "cli"),
            "--no-throughput",
            "--reports",
            str(tmp_path / "reports"),
        ],
    )
    assert result.exit_code == 2, result.output
    assert f"--recompute {h}" in result.output and not (tmp_path / "cli").exists()


@pytest.mark.parametrize("how", ["truncate", "delete", "add"])
def test_a_truncated_missing_or_added_file_is_not_built(one, tmp_path, how):
    exp, key = one
    model = exp.artifacts / _distill(exp, key) / "model"
    if how == "truncate":
        with open(model / "model.safetensors", "r+b") as f:
            f.truncate(1000)
        says = "model/model.safetensors: 1000 bytes"
    elif how == "delete":
        (model / "config.json").unlink()
        says = "model/config.json: missing"
    else:
        shutil.copy(model / "config.json", model / "extra.json")
        says = "model/extra.json: not in the manifest"
    with pytest.raises(ArtifactCorrupt, match=says):
        _build(exp, tmp_path)
    assert not (tmp_path / "out").exists()


def test_a_model_with_a_nan_weight_is_not_built_even_when_its_checksums_match(one, tmp_path):
    exp, key = one
    h = _distill(exp, key)
    published = exp.artifacts / h
    poisoned = tmp_path / "poisoned"
    shutil.copytree(published, poisoned)
    tensor = nan_into_tensor(poisoned / "model" / "model.safetensors")
    with exp.store.write(h, overwrite=True) as out:  # published that way: a real publish, real checksums
        for p in poisoned.rglob("*"):
            if p.is_file() and p.name != "_ABLATE_COMPLETE":
                (out / p.relative_to(poisoned)).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(p, out / p.relative_to(poisoned))
    exp.store.verify(h)  # its checksums match
    with pytest.raises(BuildError) as caught:
        _build(exp, tmp_path)
    message = str(caught.value)
    assert f"tensor {tensor} " in message and "non-finite" in message and "nothing was exported" in message
    assert f"--recompute {h}" in message
    assert not (tmp_path / "out").exists()


def test_weights_that_overflow_the_export_dtype_are_not_built(one, tmp_path):
    exp, key = one
    h = _distill(exp, key)
    model_dir = exp.artifacts / h / "model"
    from safetensors.torch import load_file, save_file

    state = load_file(model_dir / "model.safetensors")
    name = next(k for k in state if "embed_tokens" in k)
    state[name][0, 0] = 1e30  # finite in float32, inf in float16
    staged = tmp_path / "staged"
    shutil.copytree(exp.artifacts / h, staged)
    save_file(state, staged / "model" / "model.safetensors", metadata={"format": "pt"})
    with exp.store.write(h, overwrite=True) as out:
        shutil.copytree(staged / "model", out / "model")
        shutil.copy(staged / "result.json", out / "result.json")
    with pytest.raises(BuildError, match=rf"tensor {name} .* overflow --dtype float16"):
        _build(exp, tmp_path, dtype="float16")
    assert torch.isfinite(load_file(exp.artifacts / h / "model" / "model.safetensors")[name]).all()
