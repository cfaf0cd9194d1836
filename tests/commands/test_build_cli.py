"""`ablate build` on the command line: JSON output, human output, exit codes and messages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from ablate.cli import main
from tests.build.conftest import submit_in_process, write_spec

SPECS = Path(__file__).parents[2] / "specs"


@pytest.fixture(autouse=True)
def _one_thread():
    """Two cores are shared with other test runs: one thread each, restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_build_json_then_again_reuses(tmp_path):
    spec = write_spec(tmp_path, name="cli")
    submit_in_process(spec)
    args = ["build", str(spec), "--out", str(tmp_path / "out"), "--reports", str(tmp_path / "r"), "--json",
            "--batch-sizes", "1", "--lengths", "8:2"]  # fmt: skip
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output
    data = json.loads(first.stdout)
    assert data["experiment"] == "cli" and data["stages_run"] == 2 and data["stages_reused"] == 4
    assert Path(data["model_dir"], "model.safetensors").is_file()
    assert data["params"]["student"] == data["params"]["planned"]
    assert data["report"].endswith("r/cli/build.md")
    assert data["throughput"] == []  # not on a CPU unless asked (--throughput)
    again = json.loads(CliRunner().invoke(main, args).stdout)
    assert again["stages_run"] == 0 and again["export_reused"] is True
    # by name, in human form
    human = CliRunner().invoke(
        main, ["build", "cli", "--db", f"sqlite:///{tmp_path}/ablate.db", "--artifacts", str(tmp_path / "artifacts"),
               "--out", str(tmp_path / "out"), "--reports", str(tmp_path / "r")],
    )  # fmt: skip
    assert human.exit_code == 0, human.output
    assert "built cli trial" in human.output and "stages: 0 run, 6 reused, export reused" in human.output
    assert "generation throughput not measured on the CPU" in human.stderr


def test_build_progress_names_each_stage_with_its_steps_and_quiet_hides_it(tmp_path):
    spec = write_spec(tmp_path, name="prog")
    submit_in_process(spec)
    args = ["build", str(spec), "--tokens", "3k", "--reports", str(tmp_path / "r"), "--out"]
    loud = CliRunner().invoke(main, [*args, str(tmp_path / "a")])
    assert loud.exit_code == 0, loud.output
    lines = loud.stderr.splitlines()
    steps = [line for line in lines if line.startswith("distill    step")]
    assert steps and "step 6/6" in steps[-1] and "tok/s" in steps[-1] and "ETA 0s" in steps[-1]  # 3k / 512
    assert any(line.startswith("eval stage eval-") and " done in " in line for line in lines)
    quiet = CliRunner().invoke(main, [*args, str(tmp_path / "b"), "--quiet"])
    assert quiet.exit_code == 0 and quiet.stderr == "" and "built prog trial" in quiet.stdout


def test_bad_input_exits_2_with_a_message(tmp_path):
    spec = write_spec(tmp_path, name="bad")
    submit_in_process(spec, run=set())
    out = tmp_path / "out"
    nothing = CliRunner().invoke(main, ["build", str(spec), "--out", str(out)])
    assert nothing.exit_code == 2 and "no finished trial" in nothing.output and not out.exists()
    unknown = CliRunner().invoke(main, ["build", str(spec), "--trial", "abc", "--out", str(out)])
    assert unknown.exit_code == 2 and "unknown trial 'abc'" in unknown.output
    missing = CliRunner().invoke(main, ["build", str(tmp_path / "nope.yaml")])
    assert missing.exit_code == 2 and "does not exist" in missing.output
    formats = CliRunner().invoke(main, ["build", str(spec), "--formats", "onnx"])
    assert formats.exit_code == 2 and "--formats" in formats.output


def test_dry_run_of_the_8b_recipe_on_the_command_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(
        main, ["build", str(SPECS / "mistral-nemo-minitron-8b.yaml"), "--dry-run", "--out", "mn8b", "--json"]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["dry_run"] is True and data["params"]["student"] == 8_414_105_600
    assert [s["action"] for s in data["stages"]] == ["would run"] * 6  # tokenize, teacher .. eval
    assert (tmp_path / "mn8b" / "model" / "config.json").is_file()
    assert (tmp_path / "mn8b" / "trtllm" / "commands.sh").is_file()
