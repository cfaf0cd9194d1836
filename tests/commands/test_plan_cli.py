from pathlib import Path

from click.testing import CliRunner

from ablate.cli import main

SPECS = Path(__file__).parents[2] / "specs"


def test_validate_ok_prints_one_line():
    result = CliRunner().invoke(main, ["validate", str(SPECS / "tiny.yaml")])
    assert result.exit_code == 0
    assert result.output.count("\n") == 1 and "valid: experiment 'tiny', 4 trials" in result.output


def test_validate_bad_exits_2_with_every_problem(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        (SPECS / "tiny.yaml")
        .read_text()
        .replace("seq_len: 64", "seq_len: -1")
        .replace("lr: 1e-3", "lr: fast")
    )
    result = CliRunner().invoke(main, ["validate", str(bad)])
    assert result.exit_code == 2
    assert "data.seq_len" in result.output and "distill.lr" in result.output
    assert "2 problem(s)" in result.output


def test_plan_human_output_names_stages():
    result = CliRunner().invoke(main, ["plan", str(SPECS / "tiny.yaml")])
    assert result.exit_code == 0, result.output
    assert "stages after de-duplication" in result.output and "GPU-hours" in result.output
